"""Mixed-adapter batches: row i of a batch uses adapter names[i], or the bare base model for None.

    with loralab.per_row_adapters(model, ["sst2", "mrpc", None, "sst2"]):
        logits = model(**batch).logits            # row 2 is the base model's output
    with loralab.per_row_adapters(model, names):
        ids = model.generate(**prompts, do_sample=False)

Inside the block the rows' names replace the active adapter in every LoraLayer and TrainableCopy
(modules_to_save); on exit the model is as before. The math is in loralab.core.rows.

A server keeps its resident adapters in per-layer slots (loralab.core.rows.SlotStack):

    reserve_row_slots(model, 64)          # at most 64 resident adapters: slots grow to 65 (slot 0: the base)
    write_row_slots(model, ["acme"])      # right after loading "acme": its slots written now, not in a step
    row_slot_bytes(model)                 # bytes the slot stacks hold (allocated, every layer)
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from torch import nn

from loralab.adapters.state import STATE_ATTR, TrainableCopy, adapter_state, lora_layers
from loralab.core.lora import LoraLayer
from loralab.core.rows import RowPlan, reserve_slots, slots_of, write_slots
from loralab.errors import LoraLabError


@contextlib.contextmanager
def per_row_adapters(model: nn.Module, names: Sequence[str | None], strategy: str | None = None) -> Iterator[nn.Module]:
    """Run the model with one adapter per batch row (see the module docstring).

    names: one adapter name or None per row of the batches run inside the block (a layer that sees m·B
    rows, as generate's beams do, repeats each name m times). strategy: None (picked per layer and
    shape), "grouped" or "gathered" (loralab.core.rows). Refused with a LoraLabError: unknown names,
    adapters merged into the base weights (the base rows would not be the base), variants that do not
    declare `per_row`, and nesting; inside the block, `delete_adapter` of an adapter some row uses (those
    rows would silently get the base model's output).
    """
    found = _row_modules(model)
    plan = _checked_plan(model, names, strategy, [(n, m) for n, m in found if isinstance(m, LoraLayer)])
    layers = [module for _, module in found]
    if any(module.row_plan is not None for module in layers):
        raise LoraLabError("per_row_adapters blocks cannot nest; leave the outer block first")
    for module in layers:
        module.row_plan = plan
    try:
        yield model
    finally:
        for module in layers:
            module.row_plan = None


ROW_MODULES_ATTR = "_row_modules"


def _row_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every LoraLayer and TrainableCopy. This runs around every decoding step, and walking
    a model's modules is a few % of a small model's step, so the walk is kept on the model while its adapters
    are the same config objects: every loralab operation that adds or removes these modules (inject, load,
    delete, combine, merge_and_unload) changes `adapter_state(model).configs`, and the cache holds the config
    objects it was made for (compared by identity, so a new config never passes for an old one)."""
    state = getattr(model, STATE_ATTR, None)
    key = tuple(state.configs.items()) if state is not None else ()
    cached = model.__dict__.get(ROW_MODULES_ATTR)
    if cached is not None and len(cached[0]) == len(key) and all(
            name == old_name and config is old_config for (name, config), (old_name, old_config) in zip(key, cached[0])):
        return cached[1]
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, (LoraLayer, TrainableCopy))]
    model.__dict__[ROW_MODULES_ATTR] = (key, found)
    return found


def _checked_plan(model: nn.Module, names: Sequence[str | None], strategy: str | None,
                  layers: list[tuple[str, LoraLayer]]) -> RowPlan:
    if isinstance(names, str) or not isinstance(names, Sequence) or not names:
        raise LoraLabError("per_row_adapters needs a non-empty list with one adapter name (or None) per row")
    known = adapter_state(model).configs
    unknown = sorted({str(n) for n in names if n is not None and n not in known})
    if unknown:
        raise LoraLabError(f"per_row_adapters: no adapter named {', '.join(map(repr, unknown))}; this model has "
                           f"{sorted(known) or 'none'}")
    used = {n for n in names if n is not None}
    for layer_name, layer in layers:
        if layer.merged:
            raise LoraLabError(f"per_row_adapters: adapter(s) {', '.join(map(repr, layer.merged))} are merged into "
                               f"{layer_name}'s base weights, so no row could use the base or another adapter; "
                               f"call loralab.unmerge(model) first")
        held = layer.lora_adapters._modules        # not a set of every resident adapter, per layer and forward
        for name in used:
            variant = held[name].variant if name in held else None
            if variant is not None and not variant.per_row:
                raise LoraLabError(f"per_row_adapters: adapter {name!r} uses the {variant.name!r} variant, whose "
                                   f"forward mixes batch rows; run it with loralab.set_adapter instead")
    try:
        return RowPlan(names, strategy)
    except ValueError as exc:
        raise LoraLabError(str(exc)) from None


RESERVE_ATTR = "_row_slot_reserve"


def reserve_row_slots(model: nn.Module, adapters: int | None) -> None:
    """Bound every layer's slot stack to `adapters` resident adapters (None: unbounded), also the layers of
    adapters loaded later (`write_row_slots` applies it). Nothing is allocated here: stacks grow by doubling
    up to the bound as slots are written."""
    model.__dict__[RESERVE_ATTR] = adapters
    for _, layer in lora_layers(model):
        reserve_slots(layer, adapters)


def write_row_slots(model: nn.Module, names: Sequence[str], layers: Sequence[LoraLayer] | None = None) -> None:
    """Write the slots of adapters `names` on every layer that holds them (ΔW = s·B·A adapters on linear
    layers; others never use slots), so no decoding step writes them. `layers`: the model's LoraLayers, when
    the caller has walked the model already."""
    reserved = model.__dict__.get(RESERVE_ATTR)
    for layer in [layer for _, layer in lora_layers(model)] if layers is None else layers:
        if reserved is not None:
            reserve_slots(layer, reserved)
        write_slots(layer, names)


def row_slot_bytes(model: nn.Module, layers: Sequence[LoraLayer] | None = None) -> int:
    """Bytes held by the model's slot stacks (allocated capacity, not only the filled slots); `layers` as for
    `write_row_slots`."""
    layers = [layer for _, layer in lora_layers(model)] if layers is None else layers
    return sum(slots_of(layer).nbytes() for layer in layers)
