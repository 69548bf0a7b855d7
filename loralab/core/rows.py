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
  masked    every row through every used adapter's A at once (one (N, k)·(k, R) matmul), the columns of
            other adapters zeroed by a (rows, R) mask, then one addmm with the stacked s·Bᵀ (R, d):
            three ops whatever the mix, R/r times the single adapter's flops.
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

The stacks are cached on each layer and rebuilt when any factor changes: the cache key holds every
factor's storage address and in-place version counter, so loading, deleting, moving and training steps
(optimizer updates are in-place) invalidate it without anyone having to remember to.

Rows: the plan's rows are the batch's first dimension. A layer whose input has m·B rows (transformers'
generate repeats each row m times for beams or num_return_sequences) sees each name repeated m times.
"""
from __future__ import annotations

import functools
import itertools
import math
import os
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
    whether they need the layer's FactorStack (`stacked`), and implement `cost` and `apply`."""
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
        used = [n for n in self.groups(repeat) if n is not None and n in layer.lora_adapters]
        if not used:
            return out
        if len(self.groups(repeat)) == 1:          # every row the same adapter: the layer's own path
            f = layer.lora_adapters[used[0]]
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
    return Work(tokens, sum(layer.lora_adapters[name].rank_total for name in used), len(used))


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
    return all(layer.lora_adapters[n].variant.combinable and not _dropout_on(layer.lora_adapters[n]) for n in used)


def _dropout_on(f: nn.Module) -> bool:
    return isinstance(f.dropout, nn.Dropout) and f.dropout.training and f.dropout.p > 0


# ---- the built-in strategies (masked first: it wins ties with grouped, as `N·R <= MASKED_MAX_WORK` says) ----
@register_row_strategy
class Masked(RowStrategy):
    """x: (B, ..., k) through every used adapter's A (B, ..., R), other adapters' columns zeroed, then
    one addmm with s·Bᵀ (R, d) into out (B, ..., d)."""
    name, stacked = MASKED, True

    def cost(self, work: Work, costs: RowCosts) -> float:
        return work.tokens * work.rank if work.adapters > 1 else math.inf     # one adapter: grouped needs no mask

    def apply(self, layer, plan, x, out, used, repeat):
        stack = stack_of(layer)
        columns, mask = self.mask(plan, stack, used, repeat)
        A, B = stack.A, stack.B
        if columns.numel() != A.shape[0]:           # some stacked adapters unused here: keep only the used rows
            columns = columns.to(A.device)
            A, B = A.index_select(0, columns), B.index_select(0, columns)
        a = F.linear(in_dtype_of(x, A), A)
        a = a * mask.to(a.device).view(mask.shape[0], *([1] * (a.dim() - 2)), mask.shape[1])
        wide = widened(out, B)                      # fp32 factors on a 16-bit base: add in fp32, round once
        flat = torch.addmm(wide.reshape(-1, wide.shape[-1]), a.reshape(-1, a.shape[-1]), B.to(wide.dtype))
        return flat.view(out.shape).to(out.dtype)

    @staticmethod
    def mask(plan: RowPlan, stack: "FactorStack", used: Sequence[str], repeat: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The stacked rows of the used adapters (R_used,) and the (rows, R_used) mask that keeps each row's
        own adapter's columns."""
        used = [name for name in stack.spans if name in used]      # stack order: columns increase

        def build() -> tuple[torch.Tensor, torch.Tensor]:
            spans = [stack.spans[name] for name in used]
            columns = torch.cat([torch.arange(start, end) for start, end in spans])
            owner = torch.cat([torch.full((end - start,), i) for i, (start, end) in enumerate(spans)])
            slot = {name: i for i, name in enumerate(used)}
            row_slot = torch.tensor([slot.get(name, -1) for name in plan.row_names(repeat)])
            return columns, (owner[None, :] == row_slot[:, None]).to(stack.A.dtype)
        return plan.layout((MASKED, stack.layout, tuple(used), repeat), build)


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
    """BGMV-like: every row gathers its rank-padded factors; two batched matmuls over all rows.
    x: (B, ..., k), out: (B, ..., d); A_rows (B, r_max, k), B_rows (B, r_max, d) with the scale inside."""
    name, stacked = GATHERED, True

    def cost(self, work: Work, costs: RowCosts) -> float:
        return costs.gathered

    def apply(self, layer, plan, x, out, used, repeat):
        stack = stack_of(layer)
        A_pad, B_pad = stack.padded()
        slots = self.slots(plan, stack, repeat).to(A_pad.device)
        rows = x.shape[0]
        x = in_dtype_of(x, A_pad)
        a = torch.bmm(x.reshape(rows, -1, x.shape[-1]), A_pad.index_select(0, slots).transpose(1, 2))
        wide = widened(out, B_pad)                  # fp32 factors on a 16-bit base: add in fp32, round once
        B_rows = B_pad.index_select(0, slots).to(wide.dtype)
        return torch.baddbmm(wide.reshape(rows, -1, wide.shape[-1]), a, B_rows).view(out.shape).to(out.dtype)

    @staticmethod
    def slots(plan: RowPlan, stack: "FactorStack", repeat: int) -> torch.Tensor:
        """(rows,) each row's slot in the stack (0: base, or an adapter it lacks)."""
        def build() -> torch.Tensor:
            where = {name: i + 1 for i, name in enumerate(stack.spans)}
            return torch.tensor([where.get(name, 0) for name in plan.row_names(repeat)])
        return plan.layout((GATHERED, stack.layout, repeat), build)


STRATEGIES = tuple(ROW_STRATEGIES)      # the built-in names; ROW_STRATEGIES also holds any registered later


class FactorStack:
    """One layer's ΔW = s·B·A adapters, stacked for the masked and gathered paths.

    A: (R, k), every adapter's A on top of each other; B: (R, d), its s·Bᵀ; spans: {name: (start, end)}
    rows of each adapter; layout: names and ranks (what a plan's masks depend on); key: what the stack
    was built from (see the module docstring). `padded()`: (n+1, r_max, k) and (n+1, r_max, d), slot 0
    zeros, built on first use."""

    def __init__(self, layer: nn.Module, key: tuple):
        factors = [(name, f) for name, f in layer.lora_adapters.items() if f.variant.combinable]
        self.key = key
        self.spans: dict[str, tuple[int, int]] = {}
        for name, f in factors:
            start = next(reversed(self.spans.values()))[1] if self.spans else 0
            self.spans[name] = (start, start + f.rank_total)
        self.layout = tuple(self.spans.items())
        with torch.no_grad():
            self.A = torch.cat([f.A.detach() for _, f in factors])
            self.B = torch.cat([(f.scale * f.B_matrix().detach()).t() for _, f in factors])
        self._padded: tuple[torch.Tensor, torch.Tensor] | None = None

    def padded(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._padded is None:
            r_max = max(end - start for start, end in self.spans.values())
            A_pad = self.A.new_zeros(len(self.spans) + 1, r_max, self.A.shape[1])
            B_pad = self.B.new_zeros(len(self.spans) + 1, r_max, self.B.shape[1])
            for slot, (start, end) in enumerate(self.spans.values(), start=1):
                A_pad[slot, : end - start] = self.A[start:end]
                B_pad[slot, : end - start] = self.B[start:end]
            self._padded = A_pad, B_pad
        return self._padded


def stack_key(layer: nn.Module) -> tuple:
    """What a layer's stack depends on: adapter names, scales and every factor's storage address and version."""
    return tuple((name, f.scale, *((p.data_ptr(), _version(p)) for p in (f.A, f.B)))
                 for name, f in layer.lora_adapters.items())


_never_equal = itertools.count(-1, -1)


def _version(p: torch.Tensor) -> int:
    try:
        return p._version
    except RuntimeError:        # an inference tensor has no version counter: never reuse a stack built from it
        return next(_never_equal)


def stack_of(layer: nn.Module) -> FactorStack:
    """The layer's cached FactorStack, rebuilt when its key changed."""
    key = stack_key(layer)
    stack = layer.__dict__.get("_row_stack")
    if stack is None or stack.key != key:
        stack = FactorStack(layer, key)
        layer.__dict__["_row_stack"] = stack
    return stack
