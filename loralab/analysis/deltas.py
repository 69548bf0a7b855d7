"""Adapters as lists of low-rank updates ΔW = s·B·A, the unit every analysis works on.

An adapter file stores, per adapted module, A (r, k) and B (d, r) in the matrix view (d = output
features, k = input features). Two cases need unpacking before the paper's analyses make sense:

* fused projections (GPT-2's c_attn holds [q; k; v]): loralab writes LoRA on the q and v slices as
  one rank-(n·r) adapter on the whole projection, with B zero outside each slice's rows and columns.
  The paper studies ΔWq and ΔWv separately, so `deltas_from_adapter` splits such an adapter back into
  one rank-r update per slice (named "<module>[<slice index>]"), using the slice description loralab
  keeps in the file's metadata.
* DoRA adapters also carry a magnitude vector; ΔW here is only the direction update s·B·A.

All tensors are converted to float64 on the CPU: the analyses are cheap (they never form d×k unless
the base weight is needed) and the extra precision keeps tiny singular values meaningful.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from loralab.errors import LoraLabError
from loralab.formats.peft import read_adapter

if TYPE_CHECKING:
    from loralab.formats.peft import AdapterFile


@dataclass(frozen=True)
class LowRankDelta:
    """One low-rank update ΔW = scale·B·A in the matrix view.

    name:   display name: the module path, plus "[i]" for slice i of a fused projection
    module: the module path in the base model (where W0 lives)
    A:      (r, k) float64
    B:      (d, r) float64
    scale:  s (alpha/r, or alpha/sqrt(r) with rsLoRA)
    rows:   (start, stop) rows of the module's W0 (d_full, k) this ΔW updates; None = all rows
    """
    name: str
    module: str
    A: torch.Tensor
    B: torch.Tensor
    scale: float
    rows: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.A.dim() != 2 or self.B.dim() != 2 or self.A.shape[0] != self.B.shape[1]:
            raise LoraLabError(f"{self.name}: A {tuple(self.A.shape)} and B {tuple(self.B.shape)} do not form "
                               f"ΔW = B·A; A must be (r, k) and B (d, r)")

    @property
    def r(self) -> int:
        return self.A.shape[0]

    @property
    def d_out(self) -> int:
        return self.B.shape[0]

    @property
    def d_in(self) -> int:
        return self.A.shape[1]

    def dense(self) -> torch.Tensor:
        """ΔW as a dense (d, k) float64 matrix. O(d·k·r) time and d·k memory: for tests and small layers."""
        return self.scale * (self.B @ self.A)

    def base_weight(self, weights: dict[str, torch.Tensor]) -> torch.Tensor:
        """This ΔW's W0 (d, k) from {module path: W0 (d_full, k)} in the matrix view: a fused-slice ΔW's own
        rows. One line when the module is missing or the shapes differ (an adapter of another base)."""
        if self.module not in weights:
            raise LoraLabError(f"no base weight for {self.module}; pass the base model the adapter was trained on")
        W0 = weights[self.module]
        if self.rows is not None:
            W0 = W0[self.rows[0]:self.rows[1]]
        if tuple(W0.shape) != (self.d_out, self.d_in):
            raise LoraLabError(f"{self.name}: base weight is {tuple(W0.shape)} but ΔW is ({self.d_out}, "
                               f"{self.d_in}); the adapter was trained on a different base model")
        return W0


def make_delta(name: str, A: torch.Tensor, B: torch.Tensor, scale: float = 1.0, module: str | None = None,
               rows: tuple[int, int] | None = None) -> LowRankDelta:
    """A LowRankDelta from any-dtype factors (conv factors are flattened to the matrix view)."""
    A2 = A.detach().reshape(A.shape[0], -1).to("cpu", torch.float64)
    B2 = B.detach().reshape(B.shape[0], -1).to("cpu", torch.float64)
    return LowRankDelta(name, module or name, A2, B2, float(scale), rows)


def deltas_from_adapter(adapter: "AdapterFile", split_fused: bool = True) -> list[LowRankDelta]:
    """Every ΔW of an adapter read with `loralab.formats.peft.read_adapter`, in module order.

    With split_fused, a fused-slice adapter (loralab metadata "sliced") becomes one rank-r update per
    adapted slice; otherwise it stays one rank-(n·r) update on the whole projection.
    """
    sliced = (adapter.loralab_meta or {}).get("sliced", {}) if split_fused else {}
    out: list[LowRankDelta] = []
    for module in sorted(adapter.factors):
        A, B, scale = adapter.factors[module]
        info = sliced.get(module)
        if info is None:
            out.append(make_delta(module, A, B, scale))
            continue
        slices, r = list(info["slices"]), int(info["r"])
        d = B.shape[0]
        widths = info.get("widths") or ([d // len(slices)] * len(slices))     # files before 0.2: equal widths
        if sum(widths) != d or A.shape[0] != r * sum(slices):
            raise LoraLabError(f"{adapter.path}: {module} does not match its fused-slice description {info}; "
                               f"re-save the adapter or analyse it with split_fused=False")
        starts = [sum(widths[:i]) for i in range(len(widths))]
        enabled = [i for i, on in enumerate(slices) if on]
        for j, i in enumerate(enabled):
            rows = (starts[i], starts[i] + widths[i])
            cols = slice(j * r, (j + 1) * r)
            out.append(make_delta(f"{module}[{i}]", A[cols], B[rows[0]:rows[1], cols], scale, module=module,
                                  rows=rows))
    return out


def load_deltas(path, split_fused: bool = True) -> tuple[list[LowRankDelta], dict]:
    """Read an adapter folder (PEFT layout) and return (its ΔWs, its adapter_config.json)."""
    adapter = read_adapter(path)
    deltas = deltas_from_adapter(adapter, split_fused=split_fused)
    if not deltas:
        raise LoraLabError(f"adapter {path} holds no LoRA factors (only biases or saved modules); "
                           f"there is no ΔW to analyse")
    return deltas, adapter.config
