"""Base weights W0 for the ΔW-versus-W analysis, read from a base model (builtin name, folder, .gguf, hub id)."""
from __future__ import annotations

import json
import os

import torch
from torch import nn

from loralab.core.kinds import weight_matrix
from loralab.errors import LoraLabError
from loralab.models.loading import resolve_model_spec


def load_base_model(model_spec: str | os.PathLike) -> nn.Module:
    """Load the base model `model_spec` names (a builtin name, a model folder, a .gguf file or a cached hub id:
    loralab.models.resolve_model_spec) on the CPU in float32, with the class its config.json names (so
    module paths match an adapter trained on that class), falling back to AutoModel."""
    import transformers

    folder = resolve_model_spec(model_spec)      # a plain folder holding config.json, or LoraLabError
    config_path = folder / "config.json"
    try:
        architectures = json.loads(config_path.read_text(encoding="utf-8")).get("architectures") or []
    except json.JSONDecodeError as exc:
        raise LoraLabError(f"{config_path} is not valid JSON ({exc})") from None
    cls = getattr(transformers, architectures[0], None) if architectures else None
    cls = cls or transformers.AutoModel
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()   # "newly initialised head" warnings are noise here
    try:
        model = cls.from_pretrained(str(folder), dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise LoraLabError(f"cannot load the base model from {folder}: {str(exc).splitlines()[0]}") from None
    finally:
        transformers.logging.set_verbosity(verbosity)
    return model.eval()


def resolve_module(model: nn.Module, name: str) -> nn.Module | None:
    """The module an adapter calls `name`, allowing for a task head wrapper on either side
    (adapter "bert.encoder.…" on a BertModel, or adapter "encoder.…" on BertFor…)."""
    modules = dict(model.named_modules())
    if name in modules:
        return modules[name]
    parts = name.split(".")
    for i in range(1, len(parts)):          # adapter trained with a wrapper the base lacks
        if ".".join(parts[i:]) in modules:
            return modules[".".join(parts[i:])]
    prefix = getattr(model, "base_model_prefix", "")
    if prefix and f"{prefix}.{name}" in modules:   # adapter trained on the bare model, base has a head
        return modules[f"{prefix}.{name}"]
    return None


def base_weights(model: nn.Module, module_names: list[str]) -> dict[str, torch.Tensor]:
    """{module path: W0 (d, k)} in the matrix view (`loralab.core.kinds.weight_matrix`), float64 copies."""
    out = {}
    for name in module_names:
        module = resolve_module(model, name)
        if module is None:
            raise LoraLabError(f"the base model has no module {name}; pass the base model the adapter was trained on")
        module = getattr(module, "base_layer", module)   # an adapted model: W0 is the wrapped layer's
        try:
            out[name] = weight_matrix(module).detach().to("cpu", torch.float64).clone()
        except TypeError as exc:
            raise LoraLabError(f"{name} in the base model is a {type(module).__name__}: {exc}") from None
    return out
