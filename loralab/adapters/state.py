"""Model-level adapter bookkeeping: which adapters exist, which one is active, what trains.

Adapters are found by type (LoraLayer, TrainableCopy), never by matching "lora" in parameter names.
"""
from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field

from torch import nn

from loralab.core.lora import LoraLayer
from loralab.errors import LoraLabError

STATE_ATTR = "loralab_state"


@dataclass
class AdapterState:
    """Kept on the model as `model.loralab_state`: every adapter's config and the active adapter."""
    configs: dict = field(default_factory=dict)       # name -> LoraConfig
    active: str | None = None


def adapter_state(model: nn.Module, create: bool = False) -> AdapterState:
    state = getattr(model, STATE_ATTR, None)
    if state is None:
        if not create:
            raise LoraLabError("this model has no LoRA adapters; call loralab.inject(model, config) first")
        state = AdapterState()
        # object.__setattr__: a plain attribute, not registered as a submodule or buffer.
        object.__setattr__(model, STATE_ATTR, state)
    return state


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoraLayer]]:
    """(name, layer) for every LoRA-wrapped layer, named as the original layer was."""
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            yield name, module


def trainable_copies(model: nn.Module) -> Iterator[tuple[str, "TrainableCopy"]]:
    for name, module in model.named_modules():
        if isinstance(module, TrainableCopy):
            yield name, module


class TrainableCopy(nn.Module):
    """A module trained in full for some adapters (`modules_to_save`, e.g. a fresh classifier head).

    The original stays frozen; each adapter gets its own deep copy, used while that adapter is active.
    """

    def __init__(self, original: nn.Module):
        super().__init__()
        self.original_module = original
        self.trainable_copies = nn.ModuleDict()
        self.active: str | None = None

    def add_copy(self, name: str) -> None:
        self.trainable_copies[name] = copy.deepcopy(self.original_module)

    def current(self) -> nn.Module:
        return self.trainable_copies[self.active] if self.active in self.trainable_copies else self.original_module

    def forward(self, *args, **kwargs):
        return self.current()(*args, **kwargs)

    def __getattr__(self, name: str):
        # Model code reads attributes of the wrapped module (e.g. `self.classifier.out_features`).
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.current(), name)


def set_trainable(model: nn.Module, adapter: str) -> None:
    """Make `adapter` the active adapter everywhere and the only thing that requires grad
    (with the biases its config's bias mode names, and its copies of modules_to_save)."""
    state = adapter_state(model)
    config = state.configs[adapter]
    for p in model.parameters():
        p.requires_grad_(False)
    state.active = adapter
    for _, layer in lora_layers(model):
        if layer.merged and adapter not in layer.merged:
            layer.unmerge()        # an adapter cannot train while another one sits merged in W0
        layer.set_active([adapter])
        if adapter in layer.lora_adapters:
            for p in layer.lora_adapters[adapter].parameters():
                p.requires_grad_(True)
            bias = getattr(layer.base_layer, "bias", None)
            if config.bias == "lora_only" and isinstance(bias, nn.Parameter):
                bias.requires_grad_(True)
    if config.bias == "all":
        for name, p in model.named_parameters():
            if name.endswith("bias") and not _is_adapter_param(name):
                p.requires_grad_(True)
    for _, wrapper in trainable_copies(model):
        wrapper.active = adapter
        if adapter in wrapper.trainable_copies:
            for p in wrapper.trainable_copies[adapter].parameters():
                p.requires_grad_(True)


def _is_adapter_param(name: str) -> bool:
    parts = name.split(".")
    return "lora_adapters" in parts or "original_module" in parts or "trainable_copies" in parts
