"""Adapter files in PEFT's layout, so PEFT loads ours and we load PEFT's.

A folder holds two files:
  adapter_config.json         PEFT's LoraConfig fields (peft_type "LORA", r, lora_alpha, target_modules, ...)
  adapter_model.safetensors   tensors keyed by module path, adapter name removed:
      base_model.model.<path>.lora_A.weight          (r, k)  linear; (r, in, *kernel) conv
      base_model.model.<path>.lora_B.weight          (d, r)  linear; (out, r, 1, ...) conv
      base_model.model.<path>.lora_embedding_A       (r, num_embeddings)
      base_model.model.<path>.lora_embedding_B       (dim, r)
      base_model.model.<path>.lora_magnitude_vector  (d,)    DoRA
      base_model.model.<path>.base_layer.bias        bias of an adapted layer (bias="lora_only"/"all")
      base_model.model.<path>.bias                   other biases (bias="all")
      base_model.model.<path>.<param>                modules_to_save (the adapter's own copy)
The names and layouts of A and B come from the layer's kind (`LayerKind.peft_names/to_peft/from_peft`),
a variant's extra tensors from the variant (`Variant.peft_keys`, `peft_flag` for the config flag such as
use_dora): this module names no kind or variant itself.

Two loralab adapters have no direct PEFT equivalent and are written as the exact same ΔW in PEFT terms:
a fused-slice adapter (GPT-2 q,v of c_attn) as a rank n·r adapter on the whole projection whose B is
zero on frozen slices, and a PiSSA adapter as the rank-2r difference to the original W0
(A' = [A; A0], B' = [B, -B0]), like PEFT's own PiSSA conversion. Alphas are rescaled so the scale
stays exact; loralab's own description is kept in the safetensors metadata to restore fused slices.

Loading never unpickles: JSON and safetensors only. Bad input (wrong types in the config, corrupt metadata,
NaN/Inf tensors, a file for another model) is one LoraLabError line; unknown config keys are a warning.
Files are written through `loralab.files` (each file atomically; the weights before the config).
"""
from __future__ import annotations

import json
import math
import os
import stat
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from loralab.adapters.state import adapter_state, base_modules, lora_layers, model_modules, trainable_copies
from loralab.core.kinds import KINDS, LayerKind, kind_of
from loralab.core.lora import LoraFactors, lora_scale
from loralab.core.targeting import first_match, matches
from loralab.core.variants import VARIANTS
from loralab.errors import LoraLabError
from loralab.files import write_safetensors, write_text
from loralab.formats.adapter_config import (base_storage, file_metadata, fused_slices_value, peft_config, read_metadata,
                                            read_peft_config, sliced_metadata, task_type_of, variant_of)
from loralab.formats.model_card import CardFacts, card_text, write_card
from loralab.formats.trainer_checkpoint import is_trainer_checkpoint, write_trainable_state
from loralab.models import source_of_loaded
from loralab.surgery.config import LoraConfig
from loralab.surgery.inject import INJECT_HOOKS, inject, task_heads

if TYPE_CHECKING:
    from loralab.models import ModelSource

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."

# ------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------
@dataclass
class AdapterFile:
    """An adapter folder read into memory, in the matrix view.

    factors:      {module path: (A (r, k), B (d, r), scale)}, ΔW = scale·B·A (d, k)
    extras:       {module path: {PEFT key: tensor}} a variant's extra tensors (DoRA: lora_magnitude_vector (d,))
    biases:       {parameter path: tensor} biases saved with the adapter
    saved_modules:{module path: {param name: tensor}} modules_to_save copies
    loralab_meta: loralab's own description from the safetensors header ({"config": ..., "sliced": ...})
    """
    path: Path
    config: dict
    factors: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = field(default_factory=dict)
    extras: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    biases: dict[str, torch.Tensor] = field(default_factory=dict)
    saved_modules: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    loralab_meta: dict = field(default_factory=dict)


def read_adapter(path: str | os.PathLike) -> AdapterFile:
    """Read an adapter folder (ours or PEFT's). Clear errors for missing, truncated or foreign files."""
    folder = check_adapter_folder(path)
    weights_path = folder.path / WEIGHTS_NAME
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise LoraLabError(f"{weights_path} is truncated or corrupted ({exc}); re-save or re-download it") from None
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise LoraLabError(f"{weights_path}: tensor {key!r} holds NaN/Inf values (a diverged run?); "
                               f"not loading it — use an earlier checkpoint")
    out = AdapterFile(folder.path, folder.config, loralab_meta=folder.loralab_meta)
    lora_a, lora_b = _sort_tensors(tensors, out, weights_path)
    out.factors = _factors(lora_a, lora_b, folder.config, weights_path)
    return out


@dataclass(frozen=True)
class AdapterFolder:
    """An adapter folder whose files passed `check_adapter_folder`: its adapter_config.json (checked) and
    loralab's metadata from the weights' header ({} for a file PEFT wrote); no tensor is loaded."""
    path: Path
    config: dict
    loralab_meta: dict

    @property
    def format(self) -> str:
        """"loralab" when the weights carry loralab's metadata (slices, widths, the base's record), else "peft"."""
        return "loralab" if self.loralab_meta else "peft"


def check_adapter_folder(path: str | os.PathLike) -> AdapterFolder:
    """The one check every reader of an adapter folder runs first (read_adapter, from_pretrained, eval,
    predict, merge, analyze, serve): the folder exists and is a folder; adapter_config.json is a regular
    file holding a JSON object that loralab can load; adapter_model.safetensors is a regular file in the
    safetensors format (a .bin or any other pickle is refused, never unpickled). One LoraLabError line names
    the first problem. Reads the config and the weights' header only."""
    folder = Path(path)
    if not folder.is_dir():
        what = "does not exist" if not os.path.lexists(folder) else f"is not a folder but {_file_kind(folder)}"
        raise LoraLabError(f"adapter folder {folder} {what}; give the folder holding adapter_config.json and "
                           f"adapter_model.safetensors (e.g. runs/<run>/adapter)")
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not os.path.lexists(config_path):
        inside = " (a training run: its adapter is in the adapter/ folder)" \
            if (folder / "adapter" / CONFIG_NAME).is_file() else ""
        raise LoraLabError(f"{folder} is not an adapter folder: it has no {CONFIG_NAME}{inside}; give the folder "
                           f"holding adapter_config.json and adapter_model.safetensors (e.g. runs/<run>/adapter)")
    if not os.path.lexists(weights_path):
        hint = " (.bin adapters are pickles and are never loaded; re-save it with safetensors)" \
            if os.path.lexists(folder / "adapter_model.bin") else ""
        raise LoraLabError(f"adapter folder {folder} has no {WEIGHTS_NAME}{hint}")
    _check_regular_file(config_path)
    _check_regular_file(weights_path)
    return AdapterFolder(folder, read_peft_config(config_path), _header_metadata(weights_path))


# How a pickle starts (protocol 2+), and torch.save's zip archive; only asked when safetensors cannot read a file
# (a safetensors file starts with its header's length, whose first byte may be anything).
_PICKLE_STARTS = (b"\x80", b"PK\x03\x04")


def _header_metadata(weights_path: Path) -> dict:
    """loralab's metadata from a safetensors header, checked; a pickle is named as one and never unpickled."""
    try:
        with safe_open(str(weights_path), framework="pt") as fh:
            metadata = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        with open(weights_path, "rb") as fh:
            start = fh.read(4)
        if start.startswith(_PICKLE_STARTS):
            raise LoraLabError(f"{weights_path} is a pickle (torch.save), not safetensors; loralab never unpickles "
                               f"adapters: re-save it with safetensors") from None
        raise LoraLabError(f"{weights_path} is truncated or corrupted ({exc}); re-save or re-download it") from None
    return read_metadata(metadata, weights_path)


def _check_regular_file(path: Path) -> None:
    """Refuse, without opening it, a file of an adapter folder that is not a regular file (a device, a FIFO,
    a folder; also through a symlink): reading /dev/zero or a FIFO would never end."""
    if not path.is_file():
        link = f" (a symlink to {os.readlink(path)})" if path.is_symlink() else ""
        raise LoraLabError(f"{path} is {_file_kind(path)}{link}, not a regular file; refusing to read it — "
                           f"re-save or re-download the adapter")


def _file_kind(path: Path) -> str:
    """What a path is, for messages: "a character device", "a FIFO", ... (following symlinks)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return "a broken symlink"
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISREG, "a regular file"))
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def read_loralab_metadata(path: str | os.PathLike) -> dict:
    """loralab's own description in an adapter folder's weights header ({"config", "sliced", "base",
    "trained_on"}; {} for a file PEFT wrote), read without loading the tensors (the folder checked first)."""
    return check_adapter_folder(path).loralab_meta


def _sort_tensors(tensors: dict[str, torch.Tensor], out: AdapterFile, weights_path: Path):
    """File tensors into A and B factors (by the PEFT names of the registered kinds), variants' extra
    tensors, biases and modules_to_save copies. Returns ({module: (kind, A)}, {module: (kind, B)})."""
    factor_names, extra_names = _registered_names()
    longest_first = sorted(factor_names, key=len, reverse=True)
    factors: tuple[dict, dict] = ({}, {})
    for key, tensor in tensors.items():
        if not key.startswith(PREFIX):
            raise LoraLabError(f"{weights_path}: unexpected tensor key {key!r} (keys start with {PREFIX!r})")
        path_key = key[len(PREFIX):]
        leaf = next((n for n in longest_first if path_key.endswith("." + n)), None)
        module, _, last = path_key.rpartition(".")
        if leaf is not None:
            kind, which = factor_names[leaf]
            factors[which][path_key[: -len(leaf) - 1]] = (kind, tensor)
        elif last in extra_names:
            out.extras.setdefault(module, {})[last] = tensor
        elif path_key.endswith(".base_layer.bias") or (last == "bias" and _saved_module_of(path_key, out.config) is None):
            out.biases[path_key.replace(".base_layer.bias", ".bias")] = tensor
        else:
            owner = _saved_module_of(path_key, out.config)
            if owner is None:
                raise LoraLabError(f"{weights_path}: tensor {key!r} is neither a LoRA factor, a bias nor part of "
                                   f"modules_to_save {out.config.get('modules_to_save')}")
            out.saved_modules.setdefault(owner, {})[path_key[len(owner) + 1:]] = tensor
    return factors


def _registered_names() -> tuple[dict[str, tuple[LayerKind, int]], set[str]]:
    """({key leaf of A or B: (a kind that writes it, 0 for A / 1 for B)}, {key leaves of variants' extra
    tensors}) over every registered kind and variant."""
    factor_names = {}
    for kind in KINDS.values():
        factor_names.setdefault(kind.peft_names[0], (kind, 0))
        factor_names.setdefault(kind.peft_names[1], (kind, 1))
    return factor_names, {leaf for v in VARIANTS.values() for leaf in v.peft_keys.values()}


def is_adapter_tensor(key: str) -> bool:
    """True for a file key holding a LoRA factor or a variant's extra tensor (not a bias or a saved module)."""
    factor_names, extra_names = _registered_names()
    return any(key.endswith("." + n) for n in factor_names) or key.rpartition(".")[2] in extra_names


def _factors(lora_a: dict, lora_b: dict, config: dict, weights_path: Path) -> dict:
    """{module: (A (r, k), B (d, r), scale)} in the matrix view, ranks checked against the config."""
    if set(lora_a) != set(lora_b):
        missing = sorted(set(lora_a) ^ set(lora_b))[0]
        raise LoraLabError(f"{weights_path}: module {missing} has only one of A / B; the file is incomplete")
    r_default, alpha_default = config.get("r", 8), config.get("lora_alpha", 8)
    rank_pattern, alpha_pattern = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    rslora = bool(config.get("use_rslora", False))
    factors = {}
    for module in sorted(lora_a):
        (kind, A), (kind_b, B) = lora_a[module], lora_b[module]
        if type(kind_b).from_peft is not type(kind).from_peft:
            raise LoraLabError(f"{weights_path}: {module} stores A and B under the names of different layer kinds")
        A2, B2 = kind.from_peft(A, B)
        if A2.shape[0] != B2.shape[1]:
            raise LoraLabError(f"{weights_path}: {module} has lora_A rank {A2.shape[0]} but lora_B rank {B2.shape[1]}")
        r = A2.shape[0]
        key = first_match(module, rank_pattern)
        r_config = int(rank_pattern[key]) if key is not None else r_default
        if r_config != r:
            raise LoraLabError(f"{weights_path}: {module} has rank {r} but the config says {r_config}")
        key = first_match(module, alpha_pattern)
        alpha = float(alpha_pattern[key]) if key is not None else float(alpha_default)
        factors[module] = (A2, B2, lora_scale(r, alpha, rslora))
    return factors


def _saved_module_of(path_key: str, config: dict) -> str | None:
    """The modules_to_save entry a tensor key belongs to (as its module path), or None."""
    parts = path_key.split(".")
    for i in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:i])
        if any(prefix == m or prefix.endswith("." + m) for m in config.get("modules_to_save") or []):
            return prefix
    return None


# ------------------------------------------------------------------------------------------------
# Saving
# ------------------------------------------------------------------------------------------------
def _peft_factors(f: LoraFactors) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(A, B, alpha) in PEFT terms (matrix view) for one adapter on one layer, giving exactly the same ΔW.
    An init's offset from the original W0 (PiSSA) is included, so the file applies to the original W0."""
    A, B = f.A.detach(), f.B_matrix().detach()
    offset = f.base_offset()
    if offset is not None:
        A0, B0 = offset
        A, B = torch.cat([A, A0]), torch.cat([B, -B0], dim=1)
    n = A.shape[0] / f.r                 # rank multiplier; keep alpha'/r' (or alpha'/sqrt(r')) = the scale
    alpha = f.alpha * (math.sqrt(n) if f.rslora else n)
    return A, B, alpha


def _layer_tensors(name: str, kind: LayerKind, base: nn.Module,
                   f: LoraFactors) -> tuple[dict[str, torch.Tensor], int, float]:
    """One adapted layer's tensors in the file (A and B as its kind names and lays them out, and the
    variant's extra tensors), with the rank and alpha PEFT's config must give them."""
    A, B, alpha = _peft_factors(f)
    rank = A.shape[0]
    A, B = kind.to_peft(base, A, B)
    tensors = {f"{PREFIX}{name}.{kind.peft_names[0]}": A, f"{PREFIX}{name}.{kind.peft_names[1]}": B}
    for attr, leaf in f.variant.peft_keys.items():
        tensors[f"{PREFIX}{name}.{leaf}"] = getattr(f, attr).detach()
    return tensors, rank, alpha


def save_adapter(model: nn.Module, path: str | os.PathLike, adapter: str | None = None,
                 base_model_name_or_path: str | None = None, task_type: str | None = None,
                 source: ModelSource | None = None) -> Path:
    """Write one adapter (default: the active one) as a PEFT-layout folder with a model card (README.md).

    source: how the base model was found (loralab.models.resolve_model_source(spec)); default: worked out
    from the model's `name_or_path` (loralab.models.source_of_loaded). Its portable record goes into loralab's
    metadata, so loralab.from_pretrained finds the exact same weights anywhere, and its
    `base_model_name_or_path` (a hub id, or a folder's absolute path) into adapter_config.json for PEFT.
    base_model_name_or_path / task_type: override what adapter_config.json says (task_type default: the
    config's, else the model class's, e.g. SEQ_CLS for a *ForSequenceClassification model).
    Each file is written atomically, the weights before the config, so a crash never leaves a config
    without its weights."""
    state = adapter_state(model)
    adapter = adapter or state.active
    if adapter not in state.configs:
        raise LoraLabError(f"no adapter named {adapter!r}; this model has {sorted(state.configs) or 'none'}")
    config = state.configs[adapter]
    task_type = task_type or config.task_type or task_type_of(model)
    tensors, layout = _adapter_tensors(model, adapter, config)
    _add_untrained_heads(model, task_type, tensors, layout)
    source = source or source_of_loaded(getattr(model, "name_or_path", None))
    base = base_model_name_or_path or (source.base_model_name_or_path if source else None)
    description = peft_config(config, layout["ranks"], layout["alphas"], layout["saved"], layout["fan_in_fan_out"],
                               base, task_type)
    folder = Path(path)
    metadata = file_metadata(config, layout["sliced"], source.record() if source else None, base_storage(model))
    write_safetensors(folder / WEIGHTS_NAME, tensors, metadata)
    write_text(folder / CONFIG_NAME, json.dumps(description, indent=2, sort_keys=True) + "\n")
    write_card(folder, card_text(_card_facts(description, config, tensors, source), str(folder)))
    return folder


def _adapter_tensors(model: nn.Module, adapter: str, config: LoraConfig) -> tuple[dict[str, torch.Tensor], dict]:
    """(the file's tensors, {"ranks"/"alphas": {module: PEFT rank/alpha}, "sliced": {module: fused-slice
    metadata}, "saved": [modules_to_save names], "fan_in_fan_out": bool}) for one adapter."""
    tensors: dict[str, torch.Tensor] = {}
    layout = {"ranks": {}, "alphas": {}, "sliced": {}, "saved": [], "fan_in_fan_out": False}
    for name, layer in lora_layers(model):
        if adapter not in layer.lora_adapters:
            continue
        f = layer.lora_adapters[adapter]
        layer_tensors, layout["ranks"][name], layout["alphas"][name] = _layer_tensors(name, layer.kind,
                                                                                     layer.base_layer, f)
        tensors.update(layer_tensors)
        layout["fan_in_fan_out"] |= layer.kind.fan_in_fan_out
        if f.slices is not None:
            layout["sliced"][name] = sliced_metadata(f.slices, f.widths, f.r, f.alpha)
        bias = getattr(layer.base_layer, "bias", None)
        if config.bias != "none" and isinstance(bias, torch.Tensor):
            tensors[f"{PREFIX}{name}.base_layer.bias"] = bias.detach()
    if config.bias == "all":
        for name, module in base_modules(model):
            for pname, p in module.named_parameters(recurse=False):
                if pname.endswith("bias") and name not in layout["ranks"]:
                    tensors[f"{PREFIX}{name}.{pname}"] = p.detach()
    for name, wrapper in trainable_copies(model):
        if adapter in wrapper.trainable_copies:
            layout["saved"].append(name)
            for pname, p in wrapper.trainable_copies[adapter].state_dict().items():
                tensors[f"{PREFIX}{name}.{pname}"] = p.detach()
    return tensors, layout


def _add_untrained_heads(model: nn.Module, task_type: str | None, tensors: dict[str, torch.Tensor],
                         layout: dict) -> None:
    """Save the task head of a SEQ_CLS/TOKEN_CLS/QUESTION_ANS adapter that did not train it, as PEFT does: PEFT's
    task classes always put the head in modules_to_save, and its loader needs the head's tensors (a base's fresh
    head is random at every load, so without them the adapter is useless). The head's current values are written
    in modules_to_save's layout (`base_model.model.classifier.weight`), and loading restores them as a copy."""
    heads = task_heads(model, task_type)
    wrapped = {name for name, _ in lora_layers(model)}
    for name, module in base_modules(model):
        if (name in layout["saved"] or not any(matches(name, h) for h in heads)
                or any(w == name or w.startswith(name + ".") for w in wrapped)):
            continue
        layout["saved"].append(name)
        for pname, p in getattr(module, "original_module", module).state_dict().items():
            tensors[f"{PREFIX}{name}.{pname}"] = p.detach()


def _card_facts(description: dict, config: LoraConfig, tensors: dict[str, torch.Tensor],
                source: ModelSource | None) -> CardFacts:
    modules = tuple(description["target_modules"])
    heads = [t for k, t in tensors.items() if not is_adapter_tensor(k) and k.endswith(".weight") and t.dim() == 2]
    return CardFacts(description["base_model_name_or_path"], source.record() if source else None, description,
                     config.variant, config.init, modules, sum(t.numel() for t in tensors.values()),
                     min(t.shape[0] for t in heads) if heads else None)


# ------------------------------------------------------------------------------------------------
# PEFT's save_pretrained on an adapted model
# ------------------------------------------------------------------------------------------------
def save_pretrained(model: nn.Module, save_directory: str | os.PathLike, selected_adapters: list[str] | None = None,
                    safe_serialization: bool = True, is_main_process: bool = True, state_dict: dict | None = None,
                    **kwargs) -> None:
    """`model.save_pretrained(dir)` on a model loralab adapted, as `PeftModel.save_pretrained` does: each
    adapter (default: all) in PEFT layout, "default" in `save_directory` itself and any other in
    `save_directory/<name>/`. A model whose adapters were all deleted saves in full (its class's method).
    `state_dict` (passed by transformers' Trainer) is not needed: the adapters are read from the model.
    The merged full model: `loralab.merge_and_unload(model).save_pretrained(dir)`."""
    state = adapter_state(model)
    if not state.configs:
        full_save = getattr(type(model), "save_pretrained", None)
        if full_save is None:
            raise LoraLabError("this model has no adapters left to save (all were deleted)")
        full_save(model, save_directory, safe_serialization=safe_serialization, is_main_process=is_main_process,
                  state_dict=state_dict, **kwargs)
        return
    if kwargs:
        raise LoraLabError(f"save_pretrained of a LoRA model takes no {', '.join(sorted(kwargs))}; it writes the "
                           f"adapters (for the full model: loralab.merge_and_unload(model).save_pretrained(dir))")
    if not safe_serialization:
        raise LoraLabError("loralab writes adapters as safetensors only; drop safe_serialization=False")
    names = list(state.configs) if selected_adapters is None else list(selected_adapters)
    for name in names:
        if name not in state.configs:
            raise LoraLabError(f"no adapter named {name!r}; this model has {sorted(state.configs)}")
    if not is_main_process:
        return
    for name in names:
        save_adapter(model, Path(save_directory) if name == "default" else Path(save_directory) / name, adapter=name)
    if is_trainer_checkpoint(save_directory):        # what Trainer reloads a non-PEFT model's checkpoint from
        write_trainable_state(model, save_directory)


def give_save_pretrained(model: nn.Module) -> None:
    """Bind `save_pretrained` on this model instance (the class and other instances are untouched), so that
    `model.save_pretrained(dir)` writes the adapters like PEFT; merge_and_unload removes it again."""
    state = adapter_state(model)
    if "save_pretrained" not in state.bound_methods:
        object.__setattr__(model, "save_pretrained", types.MethodType(save_pretrained, model))
        state.bound_methods.append("save_pretrained")


INJECT_HOOKS.append(give_save_pretrained)


# ------------------------------------------------------------------------------------------------
# Loading onto a model
# ------------------------------------------------------------------------------------------------
def load_adapter(model: nn.Module, path: str | os.PathLike, adapter: str = "default") -> nn.Module:
    """Load an adapter folder (ours or PEFT's) onto `model` as adapter `adapter` and make it active.

    Everything is checked before the model is touched: a module the model lacks, a layer type that
    cannot take LoRA, or a shape from a different base model is an error naming the first mismatch;
    a problem found while filling in the factors undoes the whole injection.
    """
    return insert_adapter(model, read_adapter(path), adapter)


def insert_adapter(model: nn.Module, file: AdapterFile, adapter: str = "default", trainable: bool = True) -> nn.Module:
    """The model half of `load_adapter`: put an adapter already read with `read_adapter` on `model` as
    `adapter` (a server reads the files on a worker thread and inserts on its model thread, with
    trainable=False: see `inject`)."""
    if not file.factors:
        held = "modules_to_save copies" if file.saved_modules else "biases" if file.biases else "no tensors"
        raise LoraLabError(f"adapter {file.path} holds no LoRA factors (only {held}); there is no LoRA adapter "
                           f"to load from it")
    _check_fits(model, file)
    inject(model, _config_from_file(file), adapter, fill=lambda name, f: _fill_factors(file, name, f),
           trainable=trainable)
    with torch.no_grad():
        params = dict(model.named_parameters()) if file.biases else {}
        for pname, t in file.biases.items():
            params.get(pname, params.get(pname[: -len(".bias")] + ".base_layer.bias")).copy_(t)
        for name, wrapper in trainable_copies(model) if file.saved_modules else ():
            if name in file.saved_modules and adapter in wrapper.trainable_copies:
                wrapper.trainable_copies[adapter].load_state_dict(file.saved_modules[name], strict=False)
    return model


def _check_fits(model: nn.Module, file: AdapterFile) -> None:
    """Raise LoraLabError at the first module, shape, bias or saved module of the file the model lacks."""
    # The walk that skips adapters' factors (its cost does not grow with the adapters loaded); a name only the
    # full walk knows (one inside an adapter's factors) gets the full walk's answer.
    modules = _ModulesByName(model)
    for name, (A, B, _) in file.factors.items():
        module = modules.get(name)
        if module is None:
            raise LoraLabError(f"adapter {file.path} targets {name}, which this model does not have; "
                               f"the adapter was made for a different base model")
        base = getattr(module, "base_layer", module)
        kind = kind_of(base)
        if kind is None:
            raise LoraLabError(f"adapter {file.path} targets {name}, a {type(base).__name__} that LoRA cannot adapt")
        d, k = kind.shape(base)
        if (B.shape[0], A.shape[1]) != (d, k):
            raise LoraLabError(f"adapter {file.path} has ΔW of shape ({B.shape[0]}, {A.shape[1]}) for {name}, "
                               f"but the model's layer is ({d}, {k}); the adapter was made for a different base model")
    for name, params in file.saved_modules.items():
        if name not in modules:
            raise LoraLabError(f"adapter {file.path} saves module {name}, which this model does not have")
        target = modules[name]
        own = dict(getattr(target, "original_module", target).state_dict())
        for pname, t in params.items():
            if pname not in own or own[pname].shape != t.shape:
                got = tuple(own[pname].shape) if pname in own else "missing"
                raise LoraLabError(f"adapter {file.path}: {name}.{pname} has shape {tuple(t.shape)}, model has {got}")
    params = dict(model.named_parameters()) if file.biases else {}
    for pname, t in file.biases.items():
        target = params.get(pname, params.get(pname[: -len(".bias")] + ".base_layer.bias"))
        if target is None or target.shape != t.shape:
            raise LoraLabError(f"adapter {file.path} saves bias {pname} of shape {tuple(t.shape)}, which this model "
                               f"does not have" + (f" (its is {tuple(target.shape)})" if target is not None else ""))


class _ModulesByName:
    """dict(model.named_modules()) for looking names up: `model_modules` first, the full walk only for a name
    that one lacks."""

    def __init__(self, model: nn.Module):
        self.model, self.outside = model, dict(model_modules(model))
        self.full: dict[str, nn.Module] | None = None

    def get(self, name: str) -> nn.Module | None:
        if name in self.outside:
            return self.outside[name]
        if self.full is None:
            self.full = dict(self.model.named_modules())
        return self.full.get(name)

    def __contains__(self, name: str) -> bool:
        return self.get(name) is not None

    def __getitem__(self, name: str) -> nn.Module:
        module = self.get(name)
        if module is None:
            raise KeyError(name)
        return module


@torch.no_grad()
def _fill_factors(file: AdapterFile, name: str, f: LoraFactors) -> None:
    """Copy one layer's A, B (dense, PEFT's form) and the variant's extra tensors from the file into `f`."""
    A, B, _ = file.factors[name]
    if A.shape != f.A.shape or B.shape != (f.d, f.rank_total):
        raise LoraLabError(f"adapter {file.path}: {name} has A {tuple(A.shape)} and B {tuple(B.shape)}, which do not "
                           f"match its description (rank {f.r}, slices {f.slices}); re-save the adapter")
    B = B.to(device=f.B.device, dtype=f.B.dtype)
    f.A.copy_(A)
    f.B.copy_(f.stored_B(B))
    if not torch.equal(f.B_matrix(), B):
        raise LoraLabError(f"adapter {file.path}: {name}'s lora_B is not zero outside the fused slices "
                           f"{list(f.slices)} its metadata names; re-save the adapter")
    extras = file.extras.get(name, {})
    for attr, leaf in f.variant.peft_keys.items():
        param = getattr(f, attr)
        if leaf not in extras or extras[leaf].shape != param.shape:
            raise LoraLabError(f"adapter {file.path}: {name} needs {leaf} of shape {tuple(param.shape)} for the "
                               f"{f.variant.name} variant, the file has "
                               f"{tuple(extras[leaf].shape) if leaf in extras else 'none'}")
        param.copy_(extras[leaf])


def _config_from_file(file: AdapterFile) -> LoraConfig:
    """A LoraConfig reproducing the file's adapter: exact module names, per-module ranks and alphas."""
    c = file.config
    sliced = file.loralab_meta.get("sliced", {})
    rank_pattern, alpha_pattern, fused = {}, {}, {}
    for name, (A, _, scale) in file.factors.items():
        if name in sliced:
            rank_pattern[name], alpha_pattern[name] = sliced[name]["r"], sliced[name]["alpha"]
            fused[name] = fused_slices_value(sliced[name])
        else:
            r = A.shape[0]
            rank_pattern[name] = r
            alpha_pattern[name] = scale * (math.sqrt(r) if c.get("use_rslora") else r)
    return LoraConfig(
        r=max(rank_pattern.values()), alpha=max(alpha_pattern.values()), dropout=float(c.get("lora_dropout") or 0.0),
        targets=sorted(file.factors), rank_pattern=rank_pattern, alpha_pattern=alpha_pattern,
        rslora=bool(c.get("use_rslora", False)), variant=variant_of(file.config, file.loralab_meta),
        bias=c.get("bias") or "none", modules_to_save=sorted(file.saved_modules), fused_slices=fused)
