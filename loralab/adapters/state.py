"""Model-level adapter bookkeeping: which adapters exist, which one is active, what trains.

Adapters are found by type (LoraLayer, TrainableCopy), never by matching "lora" in parameter names:
`base_modules(model)` is the one walk that tells the model's own modules from loralab's wrappers.
"""
from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from loralab.core.lora import LoraLayer
from loralab.errors import LoraLabError

STATE_ATTR = "loralab_state"


@dataclass
class AdapterState:
    """Kept on the model as `model.loralab_state`: every adapter's config and the active adapter."""
    configs: dict = field(default_factory=dict)       # name -> LoraConfig
    active: str | None = None
    bound_methods: list[str] = field(default_factory=list)
    """Methods loralab bound on the model instance (save_pretrained); merge_and_unload removes them."""


def adapter_state(model: nn.Module, create: bool = False) -> AdapterState:
    state = getattr(model, STATE_ATTR, None)
    if state is None:
        if not create:
            raise LoraLabError("this model has no LoRA adapters; call loralab.inject(model, config) first")
        state = AdapterState()
        # object.__setattr__: a plain attribute, not registered as a submodule or buffer.
        object.__setattr__(model, STATE_ATTR, state)
    return state


def model_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """model.named_modules() (same names, order, each module once) without what sits in a LoraLayer's
    `lora_adapters`: every adapter adds two modules per layer (its factors and their dropout), so a walk into
    them would cost more with every adapter a server holds. No LoraLayer or TrainableCopy sits in there.
    Walked with a stack, not nested generators (this runs between two decoding steps of a server)."""
    seen: set[int] = set()
    stack: list[tuple[str, nn.Module]] = [("", model)]
    while stack:
        prefix, module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        yield prefix, module
        if module._modules:
            skip = module.lora_adapters if isinstance(module, LoraLayer) else None
            dot = prefix + "." if prefix else ""
            stack.extend([(dot + name, child) for name, child in reversed(module._modules.items())
                          if child is not None and child is not skip])


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoraLayer]]:
    """(name, layer) for every LoRA-wrapped layer, named as the original layer was."""
    for name, module in model_modules(model):
        if isinstance(module, LoraLayer):
            yield name, module


def trainable_copies(model: nn.Module) -> Iterator[tuple[str, "TrainableCopy"]]:
    for name, module in model_modules(model):
        if isinstance(module, TrainableCopy):
            yield name, module


def adapted_modules(model: nn.Module) -> tuple[list[LoraLayer], list["TrainableCopy"]]:
    """The model's LoraLayers and TrainableCopies in walk order, found in one walk (`lora_layers` and
    `trainable_copies` walk once each)."""
    modules = [m for _, m in model_modules(model)]
    return ([m for m in modules if isinstance(m, LoraLayer)], [m for m in modules if isinstance(m, TrainableCopy)])


def all_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter of the model, each module visited once (a parameter two modules share comes twice):
    model.parameters() without the names, the generators and the duplicate checks, for walks that only set
    flags (a server's model holds tens of thousands: every adapter adds its factors to every adapted layer).
    The model's own modules come from `model_modules`; each adapter's factors are read from the LoraLayer
    that holds them, without a module walk into them (their dropout holds no parameters)."""
    found: list[nn.Parameter | None] = []
    for _, module in model_modules(model):
        found.extend(module._parameters.values())
        if isinstance(module, LoraLayer):
            for factors in module.lora_adapters.values():
                found.extend(factors._parameters.values())
                for child in factors._modules.values():
                    if child is not None and (child._parameters or child._modules):
                        found.extend(child.parameters())
    return [p for p in found if p is not None]


def base_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(name, module) for the model's own modules below the root, as if no adapter were injected, found
    by type: a LoraLayer is its base layer (under the wrapper's name), a TrainableCopy is listed as itself
    with nothing below it (its original and copies are loralab's), and no adapter factor appears."""
    seen: set[int] = set()
    stack = [("", iter(model._modules.items()))]           # (name prefix, children not yet visited), depth first
    while stack:
        prefix, children = stack[-1]
        item = next(children, None)
        if item is None:
            stack.pop()
            continue
        name, child = item
        if child is None or id(child) in seen:
            continue
        seen.add(id(child))
        if isinstance(child, LoraLayer):
            yield prefix + name, child.base_layer
            continue
        yield prefix + name, child
        if not isinstance(child, TrainableCopy):
            stack.append((f"{prefix}{name}.", iter(child._modules.items())))


def check_nothing_else_merged(model: nn.Module, adapter: str, layers: list[LoraLayer] | None = None) -> None:
    """Raise unless every adapter merged into the weights is `adapter` itself: another adapter cannot
    become active or trainable while a different one sits inside W0. `layers`: the model's LoraLayers, when
    the caller has walked the model already."""
    layers = [layer for _, layer in lora_layers(model)] if layers is None else layers
    merged = sorted({n for layer in layers for n in layer.merged if n != adapter})
    if merged:
        raise LoraLabError(f"adapter(s) {', '.join(map(repr, merged))} are merged into the base weights; call "
                           f"loralab.unmerge(model) first (loralab.set_adapter switches a merged model itself)")


class TrainableCopy(nn.Module):
    """A module trained in full for some adapters (`modules_to_save`, e.g. a fresh classifier head).

    The original stays frozen; each adapter gets its own deep copy, used while that adapter is active
    (or, while `row_plan` is set by `loralab.per_row_adapters`, by the rows that use that adapter).
    """
    row_plan = None

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
        if self.row_plan is not None:
            return self.row_plan.run_modules(self.trainable_copies, self.original_module, run_in_own_dtype,
                                             *args, **kwargs)
        return run_in_own_dtype(self.current(), args, kwargs)

    def __getattr__(self, name: str):
        # Model code reads attributes of the wrapped module (e.g. `self.classifier.out_features`).
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.current(), name)


def run_in_own_dtype(module: nn.Module, args: tuple, kwargs: dict):
    """module(*args, **kwargs), where a copy trained in fp32 on a 16-bit model (loralab.precision keeps
    trained heads fp32) gets its floating inputs in its own dtype and returns its floating outputs in the
    inputs' dtype. Nothing is cast when the dtypes agree or autocast is on (it picks the products' dtype)."""
    param = next(module.parameters(), None)
    first = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor) and a.is_floating_point()),
                 None)
    if param is None or first is None or first.dtype == param.dtype or torch.is_autocast_enabled(first.device.type):
        return module(*args, **kwargs)

    def cast(value, dtype):
        return value.to(dtype) if isinstance(value, torch.Tensor) and value.is_floating_point() else value

    out = module(*(cast(a, param.dtype) for a in args), **{k: cast(v, param.dtype) for k, v in kwargs.items()})
    return tuple(cast(o, first.dtype) for o in out) if isinstance(out, tuple) else cast(out, first.dtype)


def set_trainable(model: nn.Module, adapter: str) -> None:
    """Make `adapter` the active adapter everywhere and the only thing that requires grad
    (with the biases its config's bias mode names, and its copies of modules_to_save).
    Refuses (LoraLabError) while another adapter is merged into the weights; nothing is unmerged silently."""
    state = adapter_state(model)
    config = state.configs[adapter]
    layers, copies = adapted_modules(model)
    check_nothing_else_merged(model, adapter, layers)
    for p in all_parameters(model):
        if p.requires_grad:
            p.requires_grad_(False)
    state.active = adapter
    for layer in layers:
        layer.set_active([adapter])
        if adapter in layer.lora_adapters:
            for p in layer.lora_adapters[adapter].parameters():
                p.requires_grad_(True)
            bias = getattr(layer.base_layer, "bias", None)
            if config.bias == "lora_only" and isinstance(bias, nn.Parameter):
                bias.requires_grad_(True)
    if config.bias == "all":
        for _, module in base_modules(model):
            for name, p in module.named_parameters(recurse=False):
                if name.endswith("bias"):
                    p.requires_grad_(True)
    for wrapper in copies:
        wrapper.active = adapter
        if adapter in wrapper.trainable_copies:
            for p in wrapper.trainable_copies[adapter].parameters():
                p.requires_grad_(True)
