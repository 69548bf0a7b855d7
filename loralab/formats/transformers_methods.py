"""transformers' adapter methods on a model loralab adapted.

transformers' models carry PEFT's adapter methods (`PeftAdapterMixin`: `set_adapter`, `load_adapter`,
`add_adapter`, ...); on a model loralab adapted they would reach for PEFT's own layers and fail with
"The version of PEFT you are using is not compatible". `inject` binds loralab's versions on the adapted
instance instead (the class and other instances untouched; `merge_and_unload` removes them with
`AdapterState.bound_methods`): each does the loralab thing, or raises one line naming loralab's function.
"""
from __future__ import annotations

import os
import types

from torch import nn

from loralab.adapters.operations import delete_adapter, is_merged, set_adapter
from loralab.adapters.state import adapter_state, lora_layers, trainable_copies
from loralab.errors import LoraLabError
from loralab.formats.peft import PREFIX, _adapter_tensors, load_adapter
from loralab.surgery.config import LoraConfig
from loralab.surgery.inject import INJECT_HOOKS, inject

ONE_ADAPTER = ("loralab runs one adapter at a time; for their weighted sum use loralab.combine_adapters(model, "
               "{name: weight, ...}, 'new'), for a different adapter per row loralab.per_row_adapters(model, names)")


def _names(adapter_names: str | list[str]) -> list[str]:
    return [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)


def hf_set_adapter(model: nn.Module, adapter_name: str | list[str]) -> None:
    """`model.set_adapter(name)`: loralab.set_adapter (the adapter active and trainable; a merged model switches)."""
    names = _names(adapter_name)
    if len(names) != 1:
        raise LoraLabError(f"set_adapter({names!r}): {ONE_ADAPTER}")
    set_adapter(model, names[0])


def hf_load_adapter(model: nn.Module, peft_model_id: str | os.PathLike | None = None, adapter_name: str | None = None,
                    peft_config: dict | None = None, adapter_state_dict: dict | None = None,
                    is_trainable: bool = False, **kwargs) -> None:
    """`model.load_adapter(folder, adapter_name=..., is_trainable=...)`: loralab.load_adapter (an adapter folder,
    loralab's or PEFT's, as adapter `adapter_name`, default "default", made active); `is_trainable=False` (as in
    transformers) leaves every parameter frozen, True makes the loaded adapter train."""
    if peft_config is not None or adapter_state_dict is not None:
        raise LoraLabError("load_adapter on a loralab model reads an adapter folder only (no peft_config or "
                           "adapter_state_dict); save one with loralab.save_adapter and pass its path")
    given = sorted(k for k, v in kwargs.items() if v not in (None, False, "auto", {}))
    if given:
        raise LoraLabError(f"load_adapter on a loralab model takes no {', '.join(given)}; use "
                           f"loralab.load_adapter(model, folder, adapter='name')")
    if peft_model_id is None:
        raise LoraLabError("load_adapter needs the adapter folder: model.load_adapter(folder, adapter_name='name')")
    load_adapter(model, peft_model_id, adapter_name or "default")
    if not is_trainable:
        for p in model.parameters():
            p.requires_grad_(False)


def hf_add_adapter(model: nn.Module, adapter_config: LoraConfig, adapter_name: str | None = None) -> None:
    """`model.add_adapter(config, adapter_name=...)`: loralab.inject (a new adapter, active and trainable)."""
    if not isinstance(adapter_config, LoraConfig):
        raise LoraLabError(f"add_adapter on a loralab model takes a loralab.LoraConfig, not "
                           f"{type(adapter_config).__name__}; convert a PEFT config with loralab.LoraConfig.from_peft")
    inject(model, adapter_config, adapter_name or "default")


def hf_disable_adapters(model: nn.Module) -> None:
    """`model.disable_adapters()`: the base model runs until enable_adapters (loralab.disabled(model) is the
    block form). Refused while an adapter is merged into the weights."""
    adapter_state(model)
    if is_merged(model):
        raise LoraLabError("an adapter is merged into the base weights; call loralab.unmerge(model) before "
                           "disable_adapters (or run the base inside `with loralab.disabled(model):`)")
    for _, layer in lora_layers(model):
        layer.set_active([])
    for _, wrapper in trainable_copies(model):
        wrapper.active = None


def hf_enable_adapters(model: nn.Module) -> None:
    """`model.enable_adapters()`: the active adapter runs again (after disable_adapters)."""
    active = adapter_state(model).active
    for _, layer in lora_layers(model):
        layer.set_active([active] if active else [])
    for _, wrapper in trainable_copies(model):
        wrapper.active = active


def hf_active_adapters(model: nn.Module) -> list[str]:
    """`model.active_adapters()`: [the active adapter's name] (loralab.active_adapter(model)), [] if none."""
    active = adapter_state(model).active
    return [active] if active else []


def hf_delete_adapter(model: nn.Module, adapter_names: str | list[str]) -> None:
    """`model.delete_adapter(name or names)`: loralab.delete_adapter for each."""
    for name in _names(adapter_names):
        delete_adapter(model, name)


def hf_get_adapter_state_dict(model: nn.Module, adapter_name: str | None = None, state_dict: dict | None = None) -> dict:
    """`model.get_adapter_state_dict(name)`: the adapter's tensors as PEFT names them inside the model
    (adapter_model.safetensors' keys without "base_model.model.")."""
    state = adapter_state(model)
    name = adapter_name or state.active
    if name not in state.configs:
        raise LoraLabError(f"no adapter named {name!r}; this model has {sorted(state.configs) or 'none'}")
    tensors, _ = _adapter_tensors(model, name, state.configs[name])
    return {key.removeprefix(PREFIX): t for key, t in tensors.items()}


METHODS = {"set_adapter": hf_set_adapter, "load_adapter": hf_load_adapter, "add_adapter": hf_add_adapter,
           "disable_adapters": hf_disable_adapters, "enable_adapters": hf_enable_adapters,
           "active_adapters": hf_active_adapters, "delete_adapter": hf_delete_adapter,
           "get_adapter_state_dict": hf_get_adapter_state_dict}


def give_adapter_methods(model: nn.Module) -> None:
    """Bind METHODS on this model instance (once); merge_and_unload removes them."""
    state = adapter_state(model)
    for name, function in METHODS.items():
        if name not in state.bound_methods:
            object.__setattr__(model, name, types.MethodType(function, model))
            state.bound_methods.append(name)


INJECT_HOOKS.append(give_adapter_methods)
