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

Two loralab adapters have no direct PEFT equivalent and are written as the exact same ΔW in PEFT terms:
a fused-slice adapter (GPT-2 q,v of c_attn) as a rank n·r adapter on the whole projection whose B is
zero on frozen slices, and a PiSSA adapter as the rank-2r difference to the original W0
(A' = [A; A0], B' = [B, -B0]), like PEFT's own PiSSA conversion. Alphas are rescaled so the scale
stays exact; loralab's own description is kept in the safetensors metadata to restore fused slices.

Loading never unpickles: JSON and safetensors only.
"""
from __future__ import annotations

import json
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from loralab.adapters.state import adapter_state, lora_layers, trainable_copies
from loralab.core.kinds import kind_of
from loralab.core.lora import LoraFactors, SlicedLoraFactors, lora_scale
from loralab.errors import LoraLabError
from loralab.surgery.config import LoraConfig

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."
_METADATA_KEY = "loralab"


# ------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------
@dataclass
class AdapterFile:
    """An adapter folder read into memory, in the matrix view.

    factors:      {module path: (A (r, k), B (d, r), scale)}, ΔW = scale·B·A (d, k)
    magnitudes:   {module path: m (d,)} for DoRA
    biases:       {parameter path: tensor} biases saved with the adapter
    saved_modules:{module path: {param name: tensor}} modules_to_save copies
    """
    path: Path
    config: dict
    factors: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = field(default_factory=dict)
    magnitudes: dict[str, torch.Tensor] = field(default_factory=dict)
    biases: dict[str, torch.Tensor] = field(default_factory=dict)
    saved_modules: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    loralab_meta: dict = field(default_factory=dict)
    embedding_modules: set[str] = field(default_factory=set)


def _peft_pattern_key(patterns: dict, name: str):
    """PEFT's rule for rank_pattern/alpha_pattern keys: exact name, or a regex matching a dotted suffix."""
    for key in patterns:
        if key == name or re.match(rf"(.*\.)?({key})$", name):
            return key
    return None


def read_adapter(path: str | os.PathLike) -> AdapterFile:
    """Read an adapter folder (ours or PEFT's). Clear errors for missing, truncated or foreign files."""
    folder = Path(path)
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not folder.is_dir():
        raise LoraLabError(f"adapter folder {folder} does not exist")
    for p in (config_path, weights_path):
        if not p.is_file():
            hint = " (.bin adapters are pickles and are never loaded; re-save it with safetensors)" \
                if p == weights_path and (folder / "adapter_model.bin").exists() else ""
            raise LoraLabError(f"adapter folder {folder} has no {p.name}{hint}")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LoraLabError(f"{config_path} is not valid JSON ({exc}); the file is corrupted") from None
    if not isinstance(config, dict):
        raise LoraLabError(f"{config_path} must hold a JSON object")
    peft_type = config.get("peft_type", "LORA")
    if peft_type != "LORA":
        raise LoraLabError(f"{config_path} describes a {peft_type} adapter; only LORA adapters can be loaded")
    try:
        tensors = load_file(str(weights_path))
        from safetensors import safe_open
        with safe_open(str(weights_path), framework="pt") as fh:
            metadata = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise LoraLabError(f"{weights_path} is truncated or corrupted ({exc}); re-save or re-download it") from None

    out = AdapterFile(folder, config)
    if _METADATA_KEY in metadata:
        out.loralab_meta = json.loads(metadata[_METADATA_KEY])
    lora_a, lora_b = {}, {}
    for key, tensor in tensors.items():
        if not key.startswith(PREFIX):
            raise LoraLabError(f"{weights_path}: unexpected tensor key {key!r} (keys start with {PREFIX!r})")
        path_key = key[len(PREFIX):]
        module, _, leaf = path_key.rpartition(".")
        if path_key.endswith(".lora_A.weight"):
            lora_a[path_key[: -len(".lora_A.weight")]] = tensor
        elif path_key.endswith(".lora_B.weight"):
            lora_b[path_key[: -len(".lora_B.weight")]] = tensor
        elif leaf == "lora_embedding_A":
            lora_a[module] = tensor
            out.embedding_modules.add(module)
        elif leaf == "lora_embedding_B":
            lora_b[module] = tensor
        elif leaf == "lora_magnitude_vector":
            out.magnitudes[module] = tensor
        elif path_key.endswith(".base_layer.bias") or (leaf == "bias" and not _is_saved_module(path_key, config)):
            out.biases[path_key.replace(".base_layer.bias", ".bias")] = tensor
        else:
            owner = _saved_module_of(path_key, config)
            if owner is None:
                raise LoraLabError(f"{weights_path}: tensor {key!r} is neither a LoRA factor, a bias nor part of "
                                   f"modules_to_save {config.get('modules_to_save')}")
            out.saved_modules.setdefault(owner, {})[path_key[len(owner) + 1:]] = tensor
    if set(lora_a) != set(lora_b):
        missing = sorted(set(lora_a) ^ set(lora_b))[0]
        raise LoraLabError(f"{weights_path}: module {missing} has only one of lora_A / lora_B; the file is incomplete")

    r_default, alpha_default = int(config.get("r", 8)), float(config.get("lora_alpha", 8))
    rank_pattern, alpha_pattern = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    rslora = bool(config.get("use_rslora", False))
    for module in sorted(lora_a):
        A, B = lora_a[module], lora_b[module]
        A2, B2 = A.reshape(A.shape[0], -1), B.reshape(B.shape[0], -1)
        if A2.shape[0] != B2.shape[1]:
            raise LoraLabError(f"{weights_path}: {module} has lora_A rank {A2.shape[0]} but lora_B rank {B2.shape[1]}")
        r = A2.shape[0]
        key = _peft_pattern_key(rank_pattern, module)
        r_config = int(rank_pattern[key]) if key is not None else r_default
        if r_config != r:
            raise LoraLabError(f"{weights_path}: {module} has rank {r} but the config says {r_config}")
        key = _peft_pattern_key(alpha_pattern, module)
        alpha = float(alpha_pattern[key]) if key is not None else alpha_default
        out.factors[module] = (A2, B2, lora_scale(r, alpha, rslora))
    return out


def _saved_module_of(path_key: str, config: dict) -> str | None:
    """The modules_to_save entry a tensor key belongs to (as its module path), or None."""
    parts = path_key.split(".")
    for i in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:i])
        if any(prefix == m or prefix.endswith("." + m) for m in config.get("modules_to_save") or []):
            return prefix
    return None


def _is_saved_module(path_key: str, config: dict) -> bool:
    return _saved_module_of(path_key, config) is not None


# ------------------------------------------------------------------------------------------------
# Saving
# ------------------------------------------------------------------------------------------------
def _peft_factors(layer, f: LoraFactors) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(A, B, alpha) in PEFT terms for one adapter on one layer, giving exactly the same ΔW."""
    A, B = f.A.detach(), f.B_matrix().detach()
    if hasattr(f, "A0"):                 # PiSSA: save ΔW relative to the original W0
        A, B = torch.cat([A, f.A0]), torch.cat([B, -f.B0], dim=1)
    n = A.shape[0] / f.r                 # rank multiplier; keep alpha'/r' (or alpha'/sqrt(r')) = the scale
    alpha = f.alpha * (math.sqrt(n) if f.rslora else n)
    return A, B, alpha


def _tensor_keys(layer, name: str, A: torch.Tensor, B: torch.Tensor) -> dict[str, torch.Tensor]:
    base = layer.base_layer
    if layer.kind.name == "embedding":
        return {f"{PREFIX}{name}.lora_embedding_A": A, f"{PREFIX}{name}.lora_embedding_B": B}
    if layer.kind.name == "conv":
        spatial = base.weight.dim() - 2
        A = A.reshape(A.shape[0], *base.weight.shape[1:])
        B = B.reshape(*B.shape, *([1] * spatial))
    return {f"{PREFIX}{name}.lora_A.weight": A, f"{PREFIX}{name}.lora_B.weight": B}


def save_adapter(model: nn.Module, path: str | os.PathLike, adapter: str | None = None,
                 base_model_name_or_path: str | None = None, task_type: str | None = None) -> Path:
    """Write one adapter (default: the active one) as a PEFT-layout folder. Atomic: the folder's two
    files are written to temporary names and renamed, so a crash never leaves a half-written adapter."""
    state = adapter_state(model)
    adapter = adapter or state.active
    if adapter not in state.configs:
        raise LoraLabError(f"no adapter named {adapter!r}; this model has {sorted(state.configs) or 'none'}")
    config = state.configs[adapter]
    tensors: dict[str, torch.Tensor] = {}
    targets, rank_pattern, alpha_pattern = [], {}, {}
    sliced, fan_in_fan_out = {}, False
    for name, layer in lora_layers(model):
        if adapter not in layer.lora_adapters:
            continue
        f = layer.lora_adapters[adapter]
        A, B, alpha = _peft_factors(layer, f)
        tensors.update(_tensor_keys(layer, name, A, B))
        if f.variant.name == "dora":
            tensors[f"{PREFIX}{name}.lora_magnitude_vector"] = f.magnitude.detach()
        targets.append(name)
        rank_pattern[name], alpha_pattern[name] = A.shape[0], alpha
        fan_in_fan_out |= layer.kind.name == "conv1d-transposed"
        if isinstance(f, SlicedLoraFactors):
            sliced[name] = {"slices": list(f.slices), "r": f.r, "alpha": f.alpha}
        bias = getattr(layer.base_layer, "bias", None)
        if config.bias != "none" and isinstance(bias, torch.Tensor):
            tensors[f"{PREFIX}{name}.base_layer.bias"] = bias.detach()
    if config.bias == "all":
        for pname, p in model.named_parameters():
            clean = pname.replace(".base_layer.bias", ".bias")
            if clean.endswith("bias") and not _internal_param(pname) and clean[: -len(".bias")] not in targets:
                tensors[f"{PREFIX}{clean}"] = p.detach()
    saved_names = []
    for name, wrapper in trainable_copies(model):
        if adapter in wrapper.trainable_copies:
            saved_names.append(name)
            for pname, p in wrapper.trainable_copies[adapter].state_dict().items():
                tensors[f"{PREFIX}{name}.{pname}"] = p.detach()

    # One rank/alpha for the common case keeps the config readable; patterns only where they differ.
    r0 = max(set(rank_pattern.values()), key=list(rank_pattern.values()).count)
    a0 = max(set(alpha_pattern.values()), key=list(alpha_pattern.values()).count)
    peft_config = {
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": base_model_name_or_path,
        "r": r0,
        "lora_alpha": a0,
        "lora_dropout": config.dropout,
        "target_modules": sorted(targets),
        "exclude_modules": None,
        "rank_pattern": {n: r for n, r in rank_pattern.items() if r != r0},
        "alpha_pattern": {n: a for n, a in alpha_pattern.items() if a != a0},
        "bias": config.bias,
        "modules_to_save": saved_names or None,
        "use_rslora": config.rslora,
        "use_dora": config.dora,
        "init_lora_weights": True,
        "fan_in_fan_out": fan_in_fan_out,
        "inference_mode": True,
    }
    meta = {"format": "pt", _METADATA_KEY: json.dumps({"config": config.to_dict(), "sliced": sliced})}
    contiguous = {k: v.contiguous().cpu() for k, v in tensors.items()}
    return _write_folder(Path(path), peft_config, contiguous, meta)


def _internal_param(name: str) -> bool:
    parts = name.split(".")
    return "lora_adapters" in parts or "trainable_copies" in parts or "original_module" in parts


def _write_folder(folder: Path, config: dict, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tmp_weights = tempfile.NamedTemporaryFile(dir=folder, prefix=".adapter_model.", suffix=".tmp", delete=False)
    tmp_config = tempfile.NamedTemporaryFile(dir=folder, prefix=".adapter_config.", suffix=".tmp", delete=False,
                                             mode="w", encoding="utf-8")
    try:
        tmp_weights.close()
        save_file(tensors, tmp_weights.name, metadata=meta)
        json.dump(config, tmp_config, indent=2, sort_keys=True)
        tmp_config.write("\n")
        tmp_config.close()
        # Weights first: a reader that finds the new config also finds the matching weights.
        os.replace(tmp_weights.name, folder / WEIGHTS_NAME)
        os.replace(tmp_config.name, folder / CONFIG_NAME)
    finally:
        for tmp in (tmp_weights.name, tmp_config.name):
            if os.path.exists(tmp):
                os.unlink(tmp)
    return folder


# ------------------------------------------------------------------------------------------------
# Loading onto a model
# ------------------------------------------------------------------------------------------------
def load_adapter(model: nn.Module, path: str | os.PathLike, adapter: str = "default") -> nn.Module:
    """Load an adapter folder (ours or PEFT's) onto `model` as adapter `adapter` and make it active.

    Everything is checked before the model is touched: a module the model lacks, a layer type that
    cannot take LoRA, or a shape from a different base model is an error naming the first mismatch.
    """
    from loralab.surgery.inject import inject

    file = read_adapter(path)
    modules = dict(model.named_modules())
    sliced = file.loralab_meta.get("sliced", {})
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

    config = _config_from_file(file, sliced)
    inject(model, config, adapter)
    with torch.no_grad():
        for name, layer in lora_layers(model):
            if name not in file.factors or adapter not in layer.lora_adapters:
                continue
            f = layer.lora_adapters[adapter]
            A, B, _ = file.factors[name]
            if isinstance(f, SlicedLoraFactors):
                B = B.index_select(0, f.slice_rows)                          # rows of the adapted slices
                B = torch.cat([blk[:, i * f.r:(i + 1) * f.r] for i, blk in enumerate(B.split(f.slice_size))])
            f.A.copy_(A)
            f.B.copy_(B)
            if name in file.magnitudes:
                f.magnitude.copy_(file.magnitudes[name])
        params = dict(model.named_parameters())
        for pname, t in file.biases.items():
            target = params.get(pname, params.get(pname[: -len(".bias")] + ".base_layer.bias"))
            if target is None:
                raise LoraLabError(f"adapter {file.path} saves bias {pname}, which this model does not have")
            target.copy_(t)
        for name, wrapper in trainable_copies(model):
            if name in file.saved_modules and adapter in wrapper.trainable_copies:
                wrapper.trainable_copies[adapter].load_state_dict(file.saved_modules[name], strict=False)
    return model


def _config_from_file(file: AdapterFile, sliced: dict) -> LoraConfig:
    """A LoraConfig reproducing the file's adapter: exact module names, per-module ranks and alphas."""
    c = file.config
    rank_pattern, alpha_pattern, fused = {}, {}, {}
    for name, (A, _, scale) in file.factors.items():
        if name in sliced:
            rank_pattern[name], alpha_pattern[name] = sliced[name]["r"], sliced[name]["alpha"]
            fused[name] = sliced[name]["slices"]
        else:
            r = A.shape[0]
            rank_pattern[name] = r
            alpha_pattern[name] = scale * (math.sqrt(r) if c.get("use_rslora") else r)
    saved = sorted(file.saved_modules)
    return LoraConfig(
        r=max(rank_pattern.values()), alpha=max(alpha_pattern.values()), dropout=float(c.get("lora_dropout") or 0.0),
        targets=sorted(file.factors), rank_pattern=rank_pattern, alpha_pattern=alpha_pattern,
        rslora=bool(c.get("use_rslora", False)), dora=bool(c.get("use_dora", False)),
        bias=c.get("bias") or "none", modules_to_save=saved, fused_slices=fused)
