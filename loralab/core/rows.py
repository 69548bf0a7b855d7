"""Per-row adapters: one forward pass in which row i of the batch uses adapter names[i] (None: the base model).

`loralab.per_row_adapters(model, names)` sets one `RowPlan` on every LoraLayer and TrainableCopy of the
model; `LoraLayer.forward` then hands the base output to `plan.apply(layer, x, out)` instead of adding its
active adapters. Row i's result is what the model gives that row alone with `set_adapter(names[i])`.

Three ways to add the rows' low-rank updates without a Python loop over rows (after Punica's SGMV and
BGMV, Chen et al. 2023, with torch's CPU kernels). N = rows × positions, R = the summed ranks of the
adapters the batch uses:

  grouped   (SGMV-like) the rows of one adapter are gathered, go through the layer kind's own A and B
            and are added back with index_add: one gather, two matmuls and one scatter per distinct
            adapter. Works for every layer kind and variant (one that is not ΔW = s·B·A, like DoRA, runs
            its own forward on its rows) and keeps autograd.
  masked    every row through every used adapter's slot of A at once (one (N, k)·(k, U·r_max) matmul), the
            columns of other adapters zeroed by a (rows, U·r_max) mask, then one addmm with the slots' s·Bᵀ:
            three ops whatever the mix, U·r_max/r times the single adapter's flops.
  gathered  (BGMV-like) every row gathers its rank-padded factors (slot 0: zeros for the base) and two
            batched matmuls (bmm) do all rows: four ops, but B·r_max·(k+d) factor values copied per call.

Each is a `RowStrategy` registered in `ROW_STRATEGIES` (in the spirit of vLLM's Punica wrapper, which
picks one implementation per platform): `apply(layer, plan, x, out, used, repeat)` adds the rows' updates,
`runs(layer, used)` says whether it can (the stacked ones need a linear kind, no autograd and ΔW = s·B·A
adapters without active dropout; otherwise grouped runs), and `cost(work, costs)` estimates its price in
units of N·R. `choose_strategy` takes the cheapest (ties: the first registered); where it cannot run,
grouped does.
A new strategy is one `RowStrategy` subclass with `@register_row_strategy`, from any module;
`RowPlan(names, strategy="name")` forces it.

The cost model (`RowCosts`, constants read once per process by `row_costs()`): masked costs N·R (every
row goes through every used adapter's rank); grouped a flat `costs.grouped` (its gathers and scatters per
adapter dominate at these sizes); gathered a flat `costs.gathered`. Measured per layer on this project's
CPU (32 rows, 8 adapters of rank 8, 576→576, extra µs over the base layer; one adapter for reference):
decoding (32, 1): masked 91, grouped 302, gathered 315-461, one 62; 32 × 64 tokens: grouped 1.7-4.0 ms,
masked 3.0-6.8 ms, gathered 2.9 ms, one 1.0-2.2 ms. The masked path wins while N·R is small (decoding),
grouped once the rows are long (prefill, classifiers over sentences): the crossover lies between (32, 8)
and (32, 16) rows at R = 64, so `costs.grouped` = MASKED_MAX_WORK = 24,576 = 32·12·64. Gathered never won
here (its gather copies more than masked computes on a CPU): its cost is infinite, so it runs only when
forced (`strategy="gathered"`), for comparison and for hardware with gather-friendly kernels.
`python -m benchmarks.rows_calibrate` re-measures the crossover on this machine (one thread) and prints
the constant; `LORALAB_MASKED_MAX_WORK=N` uses it without editing this file.

The stacked paths read per-layer slots (`SlotStack`, after vLLM's preallocated LoRA slots and its
`set_lora(index)`): each resident adapter owns a slot of rank-padded tensors (capacity × r_max × k for A,
capacity × r_max × d for s·Bᵀ; zero rows past its rank add exact zeros), written in place when an adapter
first needs it (or by `write_slots` right after a load), zeroed and freed by `LoraLayer.remove_adapter`.
A step indexes slots (row → slot); nothing is concatenated per step. A slot is rewritten only when its
factors changed (another object, storage or in-place version: loading, training steps), the stacks are
reallocated only when they run out of slots (doubling up to `reserve_slots`' count), meet a larger rank
or another device; `SlotStack.builds`/`.writes` and SLOT_HOOKS count both.

Rows: the plan's rows are the batch's first dimension. A layer whose input has m·B rows (transformers'
generate repeats each row m times for beams or num_return_sequences) sees each name repeated m times.
"""
from __future__ import annotations

import functools
import itertools
import math
import os
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from loralab.core.kinds import in_dtype_of, widened
from loralab.core.registry import Registry
from loralab.errors import LoraLabError

GROUPED, MASKED, GATHERED = "grouped", "masked", "gathered"
MASKED_MAX_WORK = 24_576      # N·R up to which the masked path beats grouped (see the module docstring)
ROW_STRATEGIES = Registry("per-row strategy")     # name -> RowStrategy object


@dataclass(frozen=True)
class Work:
    """What one layer's mixed batch asks for: tokens N (rows × positions), the summed rank R of the
    adapters it uses, and how many distinct adapters those are."""
    tokens: int
    rank: int
    adapters: int


@dataclass(frozen=True)
class RowCosts:
    """The cost model's platform constants, in units of N·R (see the module docstring for the measurement).
    grouped: grouped's flat cost, the N·R at which masked's extra compute catches up with it;
    gathered: gathered's flat cost (infinite: never chosen unless forced)."""
    grouped: float = MASKED_MAX_WORK
    gathered: float = math.inf


@functools.cache
def row_costs() -> RowCosts:
    """This process's constants: the measured ones, or grouped's from $LORALAB_MASKED_MAX_WORK (what
    `python -m benchmarks.rows_calibrate` prints). Read once."""
    text = os.environ.get("LORALAB_MASKED_MAX_WORK", "").strip()
    if not text:
        return RowCosts()
    if not text.isdigit():
        raise LoraLabError(f"LORALAB_MASKED_MAX_WORK must be a whole number (tokens × summed rank), got {text!r}")
    return RowCosts(grouped=int(text))


class RowStrategy:
    """One way to add each row's own adapter update to a layer's base output. Subclasses set `name`, say
    whether they read the layer's SlotStack (`stacked`), and implement `cost` and `apply`."""
    name: ClassVar[str] = ""
    stacked: ClassVar[bool] = False

    def runs(self, layer: nn.Module, used: Sequence[str]) -> bool:
        """True where this strategy gives the right result on `layer` for the `used` adapters."""
        return not self.stacked or _stackable(layer, used)

    def cost(self, work: Work, costs: RowCosts) -> float:
        """Estimated price in units of N·R (math.inf: never chosen automatically)."""
        raise NotImplementedError

    def apply(self, layer: nn.Module, plan: "RowPlan", x: torch.Tensor, out: torch.Tensor, used: Sequence[str],
              repeat: int) -> torch.Tensor:
        """`out` (layer's base output for x, may be updated in place without autograd) plus each row's update
        from its adapter among `used`; rows are the plan's names, each repeated `repeat` times."""
        raise NotImplementedError


def register_row_strategy(cls: type[RowStrategy]) -> type[RowStrategy]:
    """Class decorator: register one instance of a RowStrategy subclass under its `name` (duplicates refused)."""
    ROW_STRATEGIES.add(cls.name, cls())
    return cls


class RowPlan:
    """Which adapter each row of a batch uses. names: one adapter name (or None: the base) per row.

    strategy: a registered strategy's name (ROW_STRATEGIES), or None to let `choose_strategy` pick per
    layer and shape.
    """

    def __init__(self, names: Sequence[str | None], strategy: str | None = None):
        if strategy is not None:
            ROW_STRATEGIES.lookup(strategy)            # LoraLabError (a ValueError) naming the registered ones
        self.names = tuple(names)
        self.strategy = strategy
        self._groups: dict[int, dict[str | None, torch.Tensor]] = {}   # repeat -> {name: row indices}
        self._layouts: dict[tuple, Any] = {}                            # per stack layout: masks and slots

    # ---- which rows ----------------------------------------------------------------------------
    def repeat_of(self, rows: int, where: str) -> int:
        """How often each name repeats in a batch of `rows` rows (m for m·B rows)."""
        if rows % len(self.names) != 0:
            raise ValueError(f"{where}: a batch of {rows} rows does not fit the {len(self.names)} adapter names "
                             f"given to per_row_adapters (give one name per row)")
        return rows // len(self.names)

    def row_names(self, repeat: int) -> list[str | None]:
        return [name for name in self.names for _ in range(repeat)]

    def groups(self, repeat: int) -> dict[str | None, torch.Tensor]:
        """{name: indices (int64) of its rows}, in the order names first appear."""
        if repeat not in self._groups:
            rows: dict[str | None, list[int]] = {}
            for i, name in enumerate(self.row_names(repeat)):
                rows.setdefault(name, []).append(i)
            self._groups[repeat] = {name: torch.tensor(index) for name, index in rows.items()}
        return self._groups[repeat]

    def layout(self, key: tuple, build: Callable[[], Any]) -> Any:
        """A strategy's per-plan tensors (masks, slots), built once per `key` and kept with the plan."""
        if key not in self._layouts:
            self._layouts[key] = build()
        return self._layouts[key]

    # ---- the math ------------------------------------------------------------------------------
    def apply(self, layer: nn.Module, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """`out` (the base layer's output for input x) plus each row's own adapter update on `layer`."""
        repeat = self.repeat_of(x.shape[0], type(layer.base_layer).__name__)
        held = layer.lora_adapters._modules        # the ModuleDict's own dict: read per adapter, every forward
        used = [n for n in self.groups(repeat) if n is not None and n in held]
        if not used:
            return out
        if len(self.groups(repeat)) == 1:          # every row the same adapter: the layer's own path
            f = held[used[0]]
            return f.variant.forward(layer, f, x, out)
        strategy = choose(layer, x, used) if self.strategy is None else ROW_STRATEGIES.lookup(self.strategy)
        if not strategy.runs(layer, used):         # e.g. masked on DoRA rows or under autograd: the general path
            strategy = ROW_STRATEGIES[GROUPED]
        return strategy.apply(layer, self, x, out, used, repeat)

    def run_modules(self, modules: Mapping[str, nn.Module], default: nn.Module,
                    call: Callable[[nn.Module, tuple, dict], torch.Tensor], x: torch.Tensor,
                    *args: Any, **kwargs: Any) -> torch.Tensor:
        """A module trained in full per adapter (modules_to_save): each row through its adapter's copy
        (`modules[name]`, or `default` for the base and for adapters without a copy), run as
        `call(module, (rows, *args), kwargs)` (the caller decides dtypes). x: (rows, ...)."""
        groups = self.groups(self.repeat_of(x.shape[0], type(default).__name__))
        by_module: dict[int, tuple[nn.Module, list[torch.Tensor]]] = {}
        for name, index in groups.items():
            module = modules[name] if name in modules else default
            by_module.setdefault(id(module), (module, []))[1].append(index)
        if len(by_module) == 1:                    # every row uses the same module: no split
            module, _ = next(iter(by_module.values()))
            return call(module, (x, *args), kwargs)
        parts, order = [], []
        for module, indices in by_module.values():
            index = torch.cat(indices).to(x.device)
            parts.append(call(module, (x.index_select(0, index), *args), kwargs))
            order.append(index)
        return torch.cat(parts).index_select(0, torch.argsort(torch.cat(order)))


def work_of(layer: nn.Module, x: torch.Tensor, used: Sequence[str]) -> Work:
    tokens = x.numel() // x.shape[-1] if x.dim() > 1 else x.shape[0]
    held = layer.lora_adapters._modules
    return Work(tokens, sum(held[name].rank_total for name in used), len(used))


def choose(layer: nn.Module, x: torch.Tensor, used: Sequence[str], costs: RowCosts | None = None) -> RowStrategy:
    """The registered strategy of least cost for this shape (ties: the first registered); `apply` runs grouped
    instead where the choice cannot run. costs: the constants (default: this process's `row_costs()`)."""
    work, costs = work_of(layer, x, used), costs or row_costs()
    return min(ROW_STRATEGIES.values(), key=lambda s: s.cost(work, costs))


def choose_strategy(layer: nn.Module, x: torch.Tensor, used: Sequence[str], costs: RowCosts | None = None) -> str:
    """The name of `choose`'s strategy; with the measured constants: masked while N·R (tokens × summed ranks
    of the used adapters) is at most MASKED_MAX_WORK and more than one adapter is used, else grouped."""
    return choose(layer, x, used, costs).name


def _stackable(layer: nn.Module, used: Sequence[str]) -> bool:
    """The stacked paths need a linear kind, no autograd, and ΔW = s·B·A adapters without active dropout."""
    if not layer.kind.is_linear or torch.is_grad_enabled():
        return False
    held = layer.lora_adapters._modules
    return all(held[n].variant.combinable and not _dropout_on(held[n]) for n in used)


def _dropout_on(f: nn.Module) -> bool:
    dropout = f._modules["dropout"]
    return isinstance(dropout, nn.Dropout) and dropout.training and dropout.p > 0


# ---- the built-in strategies (masked first: it wins ties with grouped, as `N·R <= MASKED_MAX_WORK` says) ----
@register_row_strategy
class Masked(RowStrategy):
    """x: (B, ..., k) through the used adapters' slots of A at once (B, ..., U·r_max), the columns of other
    rows' slots zeroed, then one addmm with their s·Bᵀ (U·r_max, d) into out (B, ..., d). Zero-padded rank
    rows add exact zeros."""
    name, stacked = MASKED, True

    def cost(self, work: Work, costs: RowCosts) -> float:
        return work.tokens * work.rank if work.adapters > 1 else math.inf     # one adapter: grouped needs no mask

    def apply(self, layer, plan, x, out, used, repeat):
        stack = slots_of(layer)
        stack.sync(layer, used)
        slots, mask, run = self.mask(plan, stack, used, repeat)
        if run is not None:                         # consecutive slots (the usual case): views, no copy
            A, B = stack.A[run], stack.B[run]
        else:
            index = slots.to(stack.A.device)
            A, B = stack.A.index_select(0, index), stack.B.index_select(0, index)
        A, B = A.reshape(-1, A.shape[-1]), B.reshape(-1, B.shape[-1])
        a = F.linear(in_dtype_of(x, A), A)
        a = a * mask.to(a.device).view(mask.shape[0], *([1] * (a.dim() - 2)), mask.shape[1])
        wide = widened(out, B)                      # fp32 factors on a 16-bit base: add in fp32, round once
        flat = torch.addmm(wide.reshape(-1, wide.shape[-1]), a.reshape(-1, a.shape[-1]), B.to(wide.dtype))
        return flat.view(out.shape).to(out.dtype)

    @staticmethod
    def mask(plan: RowPlan, stack: SlotStack, used: Sequence[str],
             repeat: int) -> tuple[torch.Tensor, torch.Tensor, slice | None]:
        """The used adapters' slots, ascending (U,), the (rows, U·r_max) mask keeping each row's own slot, and
        the slots as a slice when they are consecutive (None otherwise)."""
        taken = tuple(sorted((stack.slot_of[name], name) for name in used))
        r_max = stack.r_max

        def build() -> tuple[torch.Tensor, torch.Tensor, slice | None]:
            position = {name: i for i, (_, name) in enumerate(taken)}
            row_slot = torch.tensor([position.get(name, -1) for name in plan.row_names(repeat)])
            owner = torch.arange(len(taken)).repeat_interleave(r_max)
            first, last = taken[0][0], taken[-1][0]
            run = slice(first, last + 1) if last - first + 1 == len(taken) else None
            return (torch.tensor([s for s, _ in taken]), (owner[None, :] == row_slot[:, None]).to(stack.A.dtype),
                    run)
        return plan.layout((MASKED, taken, r_max, repeat), build)


@register_row_strategy
class Grouped(RowStrategy):
    """SGMV-like: per distinct adapter, its rows through A and B, added back into `out`."""
    name = GROUPED

    def cost(self, work: Work, costs: RowCosts) -> float:
        return costs.grouped

    def apply(self, layer, plan, x, out, used, repeat):
        kind, base, groups = layer.kind, layer.base_layer, plan.groups(repeat)
        in_place = not torch.is_grad_enabled()     # out is the base layer's fresh output; autograd wants a copy
        for name in used:
            f = layer.lora_adapters[name]
            index = groups[name].to(x.device)
            rows = x.index_select(0, index)
            if f.variant.combinable:
                a = kind.lora_input(base, f.dropout(rows), f.A)
                update = kind.lora_output(base, a * f.scale, f.B_matrix()).to(out.dtype)
                out = out.index_add_(0, index, update) if in_place else out.index_add(0, index, update)
            else:                                   # e.g. DoRA: the variant's own forward on its rows
                update = f.variant.forward(layer, f, rows, out.index_select(0, index))
                out = out.index_copy_(0, index, update) if in_place else out.index_copy(0, index, update)
        return out


@register_row_strategy
class Gathered(RowStrategy):
    """BGMV-like: every row gathers its slot (rank-padded factors, slot 0 zeros); two batched matmuls over all
    rows. x: (B, ..., k), out: (B, ..., d); A_rows (B, r_max, k), B_rows (B, r_max, d) with the scale inside."""
    name, stacked = GATHERED, True

    def cost(self, work: Work, costs: RowCosts) -> float:
        return costs.gathered

    def apply(self, layer, plan, x, out, used, repeat):
        stack = slots_of(layer)
        stack.sync(layer, used)
        slots = self.slots(plan, stack, used, repeat).to(stack.A.device)
        rows = x.shape[0]
        x = in_dtype_of(x, stack.A)
        a = torch.bmm(x.reshape(rows, -1, x.shape[-1]), stack.A.index_select(0, slots).transpose(1, 2))
        wide = widened(out, stack.B)                # fp32 factors on a 16-bit base: add in fp32, round once
        B_rows = stack.B.index_select(0, slots).to(wide.dtype)
        return torch.baddbmm(wide.reshape(rows, -1, wide.shape[-1]), a, B_rows).view(out.shape).to(out.dtype)

    @staticmethod
    def slots(plan: RowPlan, stack: SlotStack, used: Sequence[str], repeat: int) -> torch.Tensor:
        """(rows,) each row's slot (0: base, or an adapter this layer lacks)."""
        taken = tuple((name, stack.slot_of[name]) for name in used)

        def build() -> torch.Tensor:
            where = dict(taken)
            return torch.tensor([where.get(name, 0) for name in plan.row_names(repeat)])
        return plan.layout((GATHERED, taken, repeat), build)


STRATEGIES = tuple(ROW_STRATEGIES)      # the built-in names; ROW_STRATEGIES also holds any registered later


class SlotStack:
    """One layer's ΔW = s·B·A adapters in preallocated, rank-padded slots, read by the masked and gathered paths.

    A: (capacity, r_max, k), each slot an adapter's A with zero rows below its rank; B: (capacity, r_max, d),
    its s·Bᵀ likewise; slot 0 stays zeros (the base, and adapters this layer lacks). slot_of: {name: slot}.
    An adapter's slot is written in place the first time a plan (or `write_slots`) uses it, rewritten only
    when its factors changed (another object, scale, storage or in-place version: a training step) and
    zeroed when `LoraLayer.remove_adapter` drops it, so a decoding step only indexes slots. The tensors
    are (re)allocated, copying the filled slots, only when a slot is needed and none is free (capacity
    doubles from 8 up to the reserved count, `reserve_slots`), when an adapter's rank is above r_max, or
    when the factors moved to another device or dtype: `builds` counts those, `writes` the slot writes
    (and SLOT_HOOKS hear both)."""

    FIRST_CAPACITY = 8

    def __init__(self, reserved: int | None = None):
        self.reserved = reserved                # most adapters at once (None: no bound); slots = reserved + 1
        self.A: torch.Tensor | None = None
        self.B: torch.Tensor | None = None
        self.slot_of: dict[str, int] = {}
        self._seen: dict[str, tuple] = {}       # name -> what its slot was written from
        self.builds = self.writes = 0

    @property
    def r_max(self) -> int:
        return 0 if self.A is None else self.A.shape[1]

    @property
    def capacity(self) -> int:
        """Slots, the base's slot 0 included."""
        return 0 if self.A is None else self.A.shape[0]

    def nbytes(self) -> int:
        return 0 if self.A is None else self.A.numel() * self.A.element_size() + self.B.numel() * self.B.element_size()

    def sync(self, layer: nn.Module, used: Sequence[str]) -> None:
        """Make every used adapter's slot current (written where new or changed)."""
        factors = layer.lora_adapters._modules
        for name in used:
            f = factors[name]
            seen = self._seen.get(name)
            if seen is None or seen[0]() is not f or seen[1:] != _written_from(f):
                self.write(layer, name)

    def write(self, layer: nn.Module, name: str) -> None:
        f = layer.lora_adapters[name]
        rank = f.rank_total
        if self.A is None or rank > self.r_max or self.A.device != f.A.device or self.A.dtype != f.A.dtype:
            self._grow(layer, self.capacity or self._first_capacity(), max(rank, self.r_max), f.A)
        slot = self.slot_of.get(name)
        if slot is None:
            slot = self._free_slot(layer, f.A)
            self.slot_of[name] = slot
        with torch.inference_mode(False), torch.no_grad():   # normal tensors: writable after a decoding step
            self.A[slot, :rank] = f.A.detach()
            self.B[slot, :rank] = (f.scale * f.B_matrix().detach()).t()
            if rank < self.r_max:               # a smaller adapter than the stack's widest: zero the rest
                self.A[slot, rank:] = 0
                self.B[slot, rank:] = 0
        self._seen[name] = (weakref.ref(f), *_written_from(f))
        self.writes += 1
        _hear("write", layer, name)

    def clear(self, name: str) -> None:
        """Zero `name`'s slot and free it (an adapter removed from the layer)."""
        slot = self.slot_of.pop(name, None)
        self._seen.pop(name, None)
        if slot is not None and self.A is not None:
            with torch.inference_mode(False), torch.no_grad():
                self.A[slot].zero_()
                self.B[slot].zero_()

    def _first_capacity(self) -> int:
        return 1 + min(self.FIRST_CAPACITY, self.reserved or self.FIRST_CAPACITY)

    def _free_slot(self, layer: nn.Module, like: torch.Tensor) -> int:
        adapters = layer.lora_adapters
        for gone in [n for n in self.slot_of if n not in adapters]:               # removed without remove_adapter
            self.clear(gone)
        taken = set(self.slot_of.values())
        free = next((s for s in range(1, self.capacity) if s not in taken), None)
        if free is not None:
            return free
        wanted = 2 * (self.capacity - 1)
        if self.reserved is not None:
            wanted = max(min(wanted, self.reserved), len(self.slot_of) + 1)
        self._grow(layer, wanted + 1, self.r_max, like)
        return self._free_slot(layer, like)

    def _grow(self, layer: nn.Module, capacity: int, r_max: int, like: torch.Tensor) -> None:
        """Allocate (capacity, r_max, ·) stacks on `like`'s device and dtype, keeping the filled slots."""
        d, k = layer.kind.shape(layer.base_layer)
        with torch.inference_mode(False), torch.no_grad():   # not inference tensors: slots are written later
            A = torch.zeros(capacity, r_max, k, dtype=like.dtype, device=like.device)
            B = torch.zeros(capacity, r_max, d, dtype=like.dtype, device=like.device)
            if self.A is not None:
                keep, rank = min(self.capacity, capacity), self.r_max
                A[:keep, :rank] = self.A[:keep].to(A)
                B[:keep, :rank] = self.B[:keep].to(B)
        self.A, self.B = A, B
        self.builds += 1
        _hear("build", layer, None)


SLOT_HOOKS: list[Callable[[str, nn.Module, str | None], None]] = []   # (event "build"/"write", layer, adapter)


def _hear(event: str, layer: nn.Module, name: str | None) -> None:
    for hook in SLOT_HOOKS:
        hook(event, layer, name)


def _written_from(f: nn.Module) -> tuple:
    """What a slot depends on besides the factors object: scale, and A's and B's storage and version."""
    params = f._parameters                       # not f.A / f.B: nn.Module's __getattr__, per adapter and layer
    A, B = params["A"], params["B"]
    return f.scale, A.data_ptr(), _version(A), B.data_ptr(), _version(B)


_never_equal = itertools.count(-1, -1)


def _version(p: torch.Tensor) -> int:
    try:
        return p._version
    except RuntimeError:        # an inference tensor has no version counter: never trust a slot written from it
        return next(_never_equal)


SLOTS_ATTR = "_row_slots"


def slots_of(layer: nn.Module) -> SlotStack:
    """The layer's SlotStack (created empty on first use; nothing is allocated until a slot is written)."""
    stack = layer.__dict__.get(SLOTS_ATTR)
    if stack is None:
        stack = layer.__dict__[SLOTS_ATTR] = SlotStack()
    return stack


def reserve_slots(layer: nn.Module, adapters: int | None) -> None:
    """Bound the layer's slots to `adapters` resident adapters (a server's --max-adapters; None: unbounded)."""
    slots_of(layer).reserved = adapters


def write_slots(layer: nn.Module, names: Sequence[str]) -> None:
    """Write the slots of `names` (those this layer holds, ΔW = s·B·A ones) now, e.g. right after a load,
    so the first decoding step that uses them writes nothing."""
    if not layer.kind.is_linear:
        return
    names = [n for n in names if n in layer.lora_adapters and layer.lora_adapters[n].variant.combinable]
    slots_of(layer).sync(layer, names)


def clear_slot(layer: nn.Module, name: str) -> None:
    """Zero and free adapter `name`'s slot on `layer`, if it has one (LoraLayer.remove_adapter calls this)."""
    stack = layer.__dict__.get(SLOTS_ATTR)
    if stack is not None:
        stack.clear(name)
