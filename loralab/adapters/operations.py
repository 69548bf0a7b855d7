"""Operations on a model's adapters: merge, unmerge, merge_and_unload, set/switch, delete, combine, disable.

All of them act on every LoraLayer of the model; the per-layer math lives in `loralab.core.lora`.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from loralab.adapters.state import adapter_state, lora_layers, set_trainable, trainable_copies
from loralab.core.lora import LoraFactors
from loralab.errors import LoraLabError
from loralab.surgery.config import LoraConfig


def _check_adapter(model: nn.Module, name: str) -> None:
    state = adapter_state(model)
    if name not in state.configs:
        raise LoraLabError(f"no adapter named {name!r}; this model has {sorted(state.configs) or 'none'}")


def merge(model: nn.Module) -> nn.Module:
    """Fold the active adapter into the base weights (W0 += s·B·A) so forward costs what the base costs.
    Idempotent; refuses factors holding NaN/Inf. Returns the model."""
    adapter_state(model)
    for name, layer in lora_layers(model):
        try:
            layer.merge()
        except ValueError as exc:
            raise LoraLabError(f"{name}: {exc}") from None
    return model


def unmerge(model: nn.Module) -> nn.Module:
    """Subtract every merged adapter from the base weights again (W0 -= s·B·A). Returns the model."""
    for _, layer in lora_layers(model):
        layer.unmerge()
    return model


def is_merged(model: nn.Module) -> bool:
    return any(layer.merged for _, layer in lora_layers(model))


def set_adapter(model: nn.Module, name: str) -> nn.Module:
    """Make `name` the active (and trainable) adapter. On a merged model this is the paper's task
    switch W0 + B1·A1 -> W0 + B2·A2: the old adapter is unmerged and the new one merged."""
    _check_adapter(model, name)
    was_merged = is_merged(model)
    unmerge(model)
    set_trainable(model, name)
    if was_merged:
        merge(model)
    return model


def active_adapter(model: nn.Module) -> str | None:
    return adapter_state(model).active


def list_adapters(model: nn.Module) -> list[str]:
    return list(adapter_state(model).configs)


def delete_adapter(model: nn.Module, name: str) -> nn.Module:
    """Remove an adapter's factors and trainable copies. If it was active, another remaining adapter
    becomes active (or none). A PiSSA adapter's principal part is put back into W0 first."""
    _check_adapter(model, name)
    state = adapter_state(model)
    for _, layer in lora_layers(model):
        if name in layer.merged:
            layer.unmerge()
        if name in layer.lora_adapters:
            f = layer.lora_adapters[name]
            if hasattr(f, "A0"):                       # PiSSA: the residual W0 - s·B0·A0 lives in the base
                layer.add_to_weight(f.scale * (f.B0 @ f.A0))
            del layer.lora_adapters[name]
            layer.set_active([a for a in layer.active if a != name])
    for _, wrapper in trainable_copies(model):
        if name in wrapper.trainable_copies:
            del wrapper.trainable_copies[name]
    del state.configs[name]
    if state.active == name:
        state.active = None
        if state.configs:
            set_trainable(model, next(iter(state.configs)))
    return model


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge the active adapter and return a plain model: every LoraLayer replaced by its (merged) base
    layer and every trainable copy by the active adapter's copy. No loralab module or state remains."""
    from loralab.surgery.inject import _set_submodule

    merge(model)
    for name, layer in list(lora_layers(model)):
        _set_submodule(model, name, layer.base_layer)
    for name, wrapper in list(trainable_copies(model)):
        _set_submodule(model, name, wrapper.current())
    if hasattr(model, "loralab_state"):
        object.__delattr__(model, "loralab_state")
    return model


@contextlib.contextmanager
def disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Run the base model: adapters are unmerged and switched off inside the block, restored after."""
    state = adapter_state(model)
    was_merged = is_merged(model)
    unmerge(model)
    layers = list(lora_layers(model))
    saved = [(layer, list(layer.active)) for _, layer in layers]
    copies = [(w, w.active) for _, w in trainable_copies(model)]
    for layer, _ in saved:
        layer.set_active([])
    for w, _ in copies:
        w.active = None
    try:
        yield model
    finally:
        for layer, active in saved:
            layer.set_active(active)
        for w, active in copies:
            w.active = active
        if was_merged and state.active is not None:
            merge(model)


def combine_adapters(model: nn.Module, weights: dict[str, float], new_name: str) -> nn.Module:
    """Add adapter `new_name` with ΔW = Σ w_i·ΔW_i over the given adapters, exactly, for any ranks.

    Per layer the factors are concatenated: A = [A_1; A_2; ...], B = [w_1·s_1·B_1, w_2·s_2·B_2, ...]
    with scale 1 (alpha = rank), so B·A = Σ w_i·s_i·B_i·A_i. The new rank is the sum of the ranks.
    DoRA adapters cannot be combined this way (their ΔW is not additive) and are refused.
    """
    if not weights:
        raise LoraLabError("combine_adapters needs at least one adapter and weight")
    for name in weights:
        _check_adapter(model, name)
    state = adapter_state(model)
    if new_name in state.configs:
        raise LoraLabError(f"adapter {new_name!r} already exists")
    ranks = {}
    for layer_name, layer in lora_layers(model):
        parts = [(layer.lora_adapters[n], w) for n, w in weights.items() if n in layer.lora_adapters]
        if not parts:
            continue
        if any(f.variant.name != "lora" for f, _ in parts):
            raise LoraLabError(f"{layer_name}: only plain LoRA adapters can be combined (found DoRA)")
        with torch.no_grad():
            A = torch.cat([f.A for f, _ in parts])
            B = torch.cat([w * f.scale * f.B_matrix() for f, w in parts], dim=1)
        rank = A.shape[0]
        f0 = parts[0][0]
        combined = LoraFactors(f0.d, f0.k, rank, alpha=float(rank))
        combined.to(device=A.device, dtype=A.dtype)
        with torch.no_grad():
            combined.A.copy_(A)
            combined.B.copy_(B)
        layer.lora_adapters[new_name] = combined
        ranks[layer_name] = rank
    base = state.configs[next(iter(weights))]
    state.configs[new_name] = LoraConfig(
        r=max(ranks.values()), alpha=float(max(ranks.values())), targets=sorted(ranks),
        rank_pattern={n: r for n, r in ranks.items()}, alpha_pattern={n: float(r) for n, r in ranks.items()},
        modules_to_save=[], bias="none", dropout=0.0, init=base.init if base.init != "pissa" else "kaiming")
    return model
