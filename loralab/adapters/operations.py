"""Operations on a model's adapters: merge, unmerge, merge_and_unload, set/switch, delete, combine, disable.

All of them act on every LoraLayer of the model; the per-layer math lives in `loralab.core.lora`.
"""
from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
from torch import nn

from loralab.adapters.merging import (MERGES_ON, MergeMethod, MergeOptions, Part, checked_method, draw_as_peft_creates,
                                      new_rank, seeded)
from loralab.adapters.state import (STATE_ATTR, adapted_modules, adapter_state, lora_layers, set_trainable,
                                    trainable_copies)
from loralab.core.inits import INITS
from loralab.core.lora import LoraFactors
from loralab.errors import LoraLabError


def _check_adapter(model: nn.Module, name: str) -> None:
    state = adapter_state(model)
    if name not in state.configs:
        raise LoraLabError(f"no adapter named {name!r}; this model has {sorted(state.configs) or 'none'}")


def merge(model: nn.Module) -> nn.Module:
    """Fold the active adapter into the base weights (W0 += s·B·A) so forward costs what the base costs.
    Idempotent. All or nothing: every layer is checked first (factors holding NaN/Inf are refused), and
    an error half-way takes the layers merged so far out again. Returns the model."""
    adapter_state(model)
    layers = list(lora_layers(model))
    for name, layer in layers:
        try:
            layer.check_merge()
        except ValueError as exc:
            raise LoraLabError(f"{name}: {exc}") from None
    done = []
    try:
        for _, layer in layers:
            done.append((layer, len(layer.merged)))
            layer.merge()
    except BaseException:
        for layer, before in reversed(done):
            layer.unmerge(keep=before)
        raise
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
    becomes active (or none). What its init took from W0 (PiSSA's principal part) is put back first."""
    _check_adapter(model, name)
    layers, copies = adapted_modules(model)
    _check_no_rows_use(name, [*layers, *copies])
    state = adapter_state(model)
    for layer in layers:
        if name in layer.lora_adapters:
            layer.remove_adapter(name)
    for wrapper in copies:
        if name in wrapper.trainable_copies:
            del wrapper.trainable_copies[name]
    del state.configs[name]
    if state.active == name:
        state.active = None
        if state.configs:
            set_trainable(model, next(iter(state.configs)))
    return model


def _check_no_rows_use(name: str, modules: list[nn.Module]) -> None:
    """Refuse to delete an adapter that rows of a running per_row_adapters block use (`modules`: the model's
    LoraLayers and TrainableCopies): its layers would silently give those rows the base model's output."""
    plans = {id(m.row_plan): m.row_plan for m in modules if m.row_plan is not None}
    rows = sorted({i for plan in plans.values() for i, row in enumerate(plan.names) if row == name})
    if rows:
        raise LoraLabError(f"cannot delete adapter {name!r}: rows {rows} of the per_row_adapters block running now "
                           f"use it; delete it after the block")


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge the active adapter and return a plain model: every LoraLayer replaced by its (merged) base
    layer and every trainable copy by the active adapter's copy. No loralab module or state remains."""
    merge(model)
    for name, layer in list(lora_layers(model)):
        model.set_submodule(name, layer.base_layer)
    for name, wrapper in list(trainable_copies(model)):
        model.set_submodule(name, wrapper.current())
    state = getattr(model, STATE_ATTR, None)
    if state is not None:
        for name in state.bound_methods:          # the class's own methods again (save_pretrained: a full model)
            model.__dict__.pop(name, None)
        object.__delattr__(model, STATE_ATTR)
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


def combine_adapters(model: nn.Module, weights: dict[str, float], new_name: str, head: str | None = None,
                     method: str = "cat", density: float | None = None, majority_sign_method: str = "total",
                     svd_rank: int | None = None, svd_clamp: float | None = None, seed: int | None = None) -> nn.Module:
    """Add adapter `new_name` merging the given adapters {name: weight} by `method`, one of PEFT's
    `add_weighted_adapter` combination types (loralab.adapters.merging.MERGE_METHODS), with PEFT's results:

      "cat" (default)   ΔW = Σ w_i·ΔW_i exactly, for any ranks: per layer A = [A_1; A_2; ...],
                        B = [w_1·s_1·B_1, w_2·s_2·B_2, ...] with scale 1; the new rank is the sum of the ranks
      "linear", "ties", "dare_linear", "dare_ties", "magnitude_prune"
                        A and B merged separately (approximations; adapters of equal rank; that rank)
      "svd", "ties_svd", "dare_linear_svd", "dare_ties_svd", "magnitude_prune_svd"
                        the ΔW_i merged, then cut to rank `svd_rank` (default: the largest rank) by SVD

    density: the fraction of entries kept, in [0, 1] (ties, dare_*, magnitude_prune*); majority_sign_method:
    "total" or "frequency" (ties, dare_ties*); svd_clamp: a quantile clamping the SVD factors; seed: DARE's masks
    drawn as after torch.manual_seed(seed) (None: from torch's global generator, as PEFT draws them).
    Only variants whose whole effect is ΔW = s·B·A combine (not DoRA); others are refused.

    Modules trained in full (modules_to_save, e.g. a classifier head) have no weighted sum. The combined
    adapter gets the copies of adapter `head`; without `head`, the adapters must use identical modules
    (the same copy values, or all the original), which it then copies, else it is refused.
    """
    if not weights:
        raise LoraLabError("combine_adapters needs at least one adapter and weight")
    for name in [*weights, *([head] if head is not None else [])]:
        _check_adapter(model, name)
    state = adapter_state(model)
    if new_name in state.configs:
        raise LoraLabError(f"adapter {new_name!r} already exists")
    options = MergeOptions(density, majority_sign_method, svd_rank, svd_clamp, seed)
    merge_method = checked_method(method, options, len(weights))
    head = head or _shared_head(model, list(weights))
    base = state.configs[next(iter(weights))]
    init = "kaiming" if INITS[base.init].changes_base_weight else base.init
    parts = {layer_name: _parts(layer_name, layer, weights)
             for layer_name, layer in lora_layers(model) if any(n in layer.lora_adapters for n in weights)}
    layers = dict(lora_layers(model))
    with seeded(seed):
        # As PEFT: the new adapter's factors are created and initialised on every layer first (its init draws
        # from torch's generator), then filled with the merge (DARE's masks draw after them, layer by layer).
        combined = {name: _new_factors(layers[name], new_rank(merge_method, p, options, name), init)
                    for name, p in parts.items()}
        for name, factors in combined.items():
            A, B = _merged(name, layers[name], parts[name], merge_method, options)
            with torch.no_grad():
                factors.A.copy_(A)
                factors.B.copy_(B)
    for layer_name, factors in combined.items():
        layers[layer_name].lora_adapters[new_name] = factors
    saved = []
    for wrapper_name, wrapper in trainable_copies(model):
        if head in wrapper.trainable_copies:
            wrapper.trainable_copies[new_name] = copy.deepcopy(wrapper.trainable_copies[head])
            saved.append(wrapper_name)
    ranks = {n: f.r for n, f in combined.items()}
    state.configs[new_name] = type(base)(      # a LoraConfig, without importing surgery
        r=max(ranks.values()), alpha=float(max(ranks.values())), targets=sorted(ranks),
        rank_pattern=dict(ranks), alpha_pattern={n: float(r) for n, r in ranks.items()}, modules_to_save=saved,
        bias="none", dropout=0.0, init=init)
    return model


def _parts(layer_name: str, layer, weights: dict[str, float]) -> list[Part]:
    """The adapters of `weights` present on this layer, as (A, B, scale, weight); variants whose effect is not
    ΔW = s·B·A are refused."""
    present = [(layer.lora_adapters[n], w) for n, w in weights.items() if n in layer.lora_adapters]
    refused = sorted({f.variant.name for f, _ in present if not f.variant.combinable})
    if refused:
        raise LoraLabError(f"{layer_name}: adapters of variant {', '.join(refused)} cannot be combined "
                           f"(their effect is not ΔW = s·B·A, so a weighted sum is not defined)")
    return [Part(f.A.detach(), f.B_matrix().detach(), f.scale, w) for f, w in present]


def _new_factors(layer, rank: int, init: str) -> LoraFactors:
    """Plain-LoRA factors of `rank` with scale 1 for `layer`, initialised by `init` as a new adapter is."""
    like = next(iter(layer.lora_adapters.values())).A
    d, k = layer.kind.shape(layer.base_layer)
    draw_as_peft_creates(layer.kind, layer.base_layer, rank, d, k)
    factors = LoraFactors(d, k, rank, alpha=float(rank)).to(like.device, like.dtype)
    with torch.no_grad():
        INITS[init].init(layer, factors)
    return factors


def _merged(layer_name: str, layer, parts: list[Part], method: MergeMethod,
            options: MergeOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) of the combined adapter on this layer, for scale 1."""
    with torch.no_grad():
        if method.on == "cat":
            return torch.cat([p.A for p in parts]), torch.cat([p.weight * p.scale * p.B for p in parts], dim=1)
        try:
            return MERGES_ON[method.on](method, parts, options, layer.kind, layer.base_layer)
        except LoraLabError as exc:
            raise LoraLabError(f"{layer_name}: {exc}") from None


def _shared_head(model: nn.Module, names: list[str]) -> str | None:
    """The adapter whose modules_to_save copies all of `names` share (identical values, or none of them
    has a copy); a LoraLabError when they differ, since a weighted sum of trained modules is not defined."""
    for wrapper_name, wrapper in trainable_copies(model):
        used = [wrapper.trainable_copies[n] if n in wrapper.trainable_copies else wrapper.original_module
                for n in names]
        if not all(_same_values(used[0], other) for other in used[1:]):
            raise LoraLabError(f"adapters {', '.join(map(repr, names))} use different copies of {wrapper_name} "
                               f"(modules_to_save), which cannot be averaged; pass head=NAME to give the combined "
                               f"adapter the copy of one of them")
    return next((n for n in names if any(n in w.trainable_copies for _, w in trainable_copies(model))), None)


def _same_values(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
