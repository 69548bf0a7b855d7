"""The LoRA math, in one place (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models").

A frozen pretrained layer computes h = W0·x. LoRA freezes W0 and learns a low-rank update (paper eq. 3):

    h = W0·x + s·B·A·x        W0: (d, k)   A: (r, k)   B: (d, r)   r << min(d, k)

    s = alpha / r             (the paper's scaling; rsLoRA, Kalajdzievic 2023, uses alpha / sqrt(r))

Everything in this file works in that *matrix view*: k = input features, d = output features.
`kinds.py` maps each layer type onto it (nn.Linear, nn.Embedding, convolutions, GPT-2's transposed
Conv1D), `variants.py` holds the variants that change how ΔW is applied (DoRA) and `inits.py` the
initialisation schemes (below).

* init:    A random (Kaiming-uniform like the reference code, or Gaussian like the paper), B = 0,
           so ΔW = s·B·A = 0 and the adapted model starts exactly at the base model.
           PiSSA (Meng et al. 2024) instead takes A, B from the top-r SVD of W0 and leaves the residual in W0.
* forward: base output + s·B·(A·dropout(x)). For linear layers the scale and the add ride on one
           addmm (out + s·a·Bᵀ), so the d-wide product is never stored on its own.
* merge:   W0 += s·B·A, so inference costs exactly what the base model costs (paper §4.1).
* unmerge: W0 -= s·B·A. In fp32 each merge/unmerge cycle moves a weight by at most
           u·(2|W0| + |ΔW|) with u = 2**-24 (two roundings), so n cycles stay within n times that.

Precision. The factors are created at least fp32 (fp32 LoRA on a bf16 or fp16 base, as in mixed-precision
training); the kinds cast the LoRA input to the factors' dtype and round the sum back once to the base
output's dtype (`kinds.py`). ΔW is always formed in the factors' dtype and added to a 16-bit W0 in one
rounding: merged = round(W0 + ΔW), so |merged − (W0 + ΔW)| ≤ u·|W0 + ΔW| per weight with u the storage
dtype's unit roundoff, u = 2**-8 for bf16 and 2**-11 for fp16 (2**-24 for fp32), and a merge/unmerge cycle
stays within u·(2|W0| + |ΔW|) as above with that u.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from loralab.core.inits import INITS, Init
from loralab.core.rows import clear_slot
from loralab.core.variants import PLAIN, Variant

if TYPE_CHECKING:
    from loralab.core.kinds import LayerKind


# The largest scaling s loralab accepts. Scalings in use lie between about 0.1 and a few hundred (alpha = 2r gives
# 2, rsLoRA with alpha 16 at r = 1 gives 16, the largest published recipes about 500). Far above that, s·B·A·x
# overflows the activations as soon as the adapter has trained a little: past 65504 / 1e4 = 6.5 in |B·A·x| it
# leaves fp16's range, and once |s·B·A·x| > 1.8e19 its square (LayerNorm's variance) leaves fp32's and bf16's
# (3.4e38) -- alpha=1e30 made NaN logits with no message. 1e4 keeps every useful scaling and refuses the rest.
MAX_SCALE = 1e4


def lora_scale(r: int, alpha: float, rslora: bool = False) -> float:
    """The factor s in h = W0·x + s·B·A·x: alpha/r, or alpha/sqrt(r) with rsLoRA."""
    return alpha / math.sqrt(r) if rslora else alpha / r


def check_scale(r: int, alpha: float, rslora: bool = False) -> float:
    """lora_scale(r, alpha, rslora), or ValueError naming the largest alpha allowed when it is above MAX_SCALE."""
    scale = lora_scale(r, alpha, rslora)
    if not scale <= MAX_SCALE:
        rule, limit = ("alpha/sqrt(r)", MAX_SCALE * math.sqrt(r)) if rslora else ("alpha/r", MAX_SCALE * r)
        raise ValueError(f"alpha={alpha:g} with r={r} scales the adapter's output by {rule} = {scale:.3g}, above the "
                         f"{MAX_SCALE:g} loralab accepts (larger scalings overflow the activations into NaN); use "
                         f"alpha <= {limit:g}")
    return scale


class LoraFactors(nn.Module):
    """One adapter's trainable factors for one layer: A (r, k) and B (d, r), plus its scale and dropout,
    and the variant's extra trainable tensors (e.g. DoRA's magnitude (d,)) as attributes.

    `delta_weight()` is the single place where ΔW = s·B·A is formed; forward, merge, the file
    formats and the analyses all go through it or through `A`/`B_matrix()`.
    """
    slices: tuple[bool, ...] | None = None      # fused-projection slices this adapter covers (None: all of W0)
    widths: tuple[int, ...] | None = None       # and the output rows of each slice

    def __init__(self, d: int, k: int, r: int, alpha: float, dropout: float = 0.0, rslora: bool = False,
                 variant: Variant | None = None):
        super().__init__()
        self.d, self.k, self.r, self.alpha, self.rslora = d, k, r, float(alpha), rslora
        self.scale = lora_scale(r, alpha, rslora)
        self.A = nn.Parameter(torch.empty(self.rank_total, k))
        self.B = nn.Parameter(torch.zeros(self.B_shape))
        # Dropout on the LoRA input only (the frozen path sees the clean x). p=0 costs nothing.
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.variant = variant or PLAIN
        for attr, shape in self.variant.extra_parameters(d, k).items():
            self.register_parameter(attr, nn.Parameter(torch.zeros(shape)))
        self.init_scheme: Init | None = None        # set by LoraLayer.add_adapter

    # Shapes. A subclass (SlicedLoraFactors) changes these; the math below does not change.
    @property
    def rank_total(self) -> int:
        """Rows of A: the rank of ΔW (r, or r per adapted slice for a fused projection)."""
        return self.r

    @property
    def B_shape(self) -> tuple[int, int]:
        return (self.d, self.r)

    def B_matrix(self) -> torch.Tensor:
        """B as a dense (d, rank_total) matrix so that ΔW = s·B_matrix()·A."""
        return self.B

    def stored_B(self, B_matrix: torch.Tensor) -> torch.Tensor:
        """The inverse of `B_matrix()`: the stored B for a dense (d, rank_total) B."""
        return B_matrix

    def delta_weight(self) -> torch.Tensor:
        """ΔW = s·B·A, shape (d, k), in the matrix view (not the layer's storage layout)."""
        return self.scale * (self.B_matrix() @ self.A)

    def base_offset(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(A0, B0) when the init moved part of W0 into the adapter (PiSSA): original W0 = W0 + s·B0·A0."""
        return self.init_scheme.base_offset(self) if self.init_scheme is not None else None

    def extra_repr(self) -> str:
        return f"d={self.d}, k={self.k}, r={self.r}, alpha={self.alpha:g}, scale={self.scale:g}, variant={self.variant.name}"


class SlicedLoraFactors(LoraFactors):
    """LoRA on some slices of a fused projection (GPT-2's c_attn holds [q; k; v] stacked on d).

    The paper adapts only Wq and Wv: each enabled slice i gets its own A_i (r, k) and B_i (d_i, r), where
    d_i is the slice's width (equal by default; grouped-query attention has narrower k and v slices).
    Stored stacked: A is (n_enabled·r, k), B is (Σ enabled d_i, r). B_matrix() places each B_i in its
    slice's rows and its own r columns, giving an exact rank-(n_enabled·r) ΔW with zero rows for the
    frozen slices — which is also how the adapter is written in PEFT's layout.
    """

    def __init__(self, d: int, k: int, r: int, alpha: float, slices: tuple[bool, ...],
                 widths: tuple[int, ...] | None = None, **kw):
        if widths is None:
            if d % len(slices) != 0:
                raise ValueError(f"fused output size {d} does not split into {len(slices)} equal slices")
            widths = (d // len(slices),) * len(slices)
        if len(widths) != len(slices) or sum(widths) != d:
            raise ValueError(f"fused slice widths {list(widths)} do not add up to the layer's {d} outputs")
        self.slices, self.widths = tuple(bool(s) for s in slices), tuple(int(w) for w in widths)
        self.enabled_widths = [w for w, on in zip(self.widths, self.slices) if on]
        super().__init__(d, k, r, alpha, **kw)
        starts = [sum(self.widths[:i]) for i in range(len(self.widths))]
        rows = [torch.arange(s, s + w) for s, w, on in zip(starts, self.widths, self.slices) if on]
        self.register_buffer("slice_rows", torch.cat(rows), persistent=False)

    @property
    def rank_total(self) -> int:
        return self.r * len(self.enabled_widths)

    @property
    def B_shape(self) -> tuple[int, int]:
        return (sum(self.enabled_widths), self.r)

    def B_matrix(self) -> torch.Tensor:
        blocks = torch.block_diag(*self.B.split(self.enabled_widths))   # (Σ d_i, n_en·r)
        full = self.B.new_zeros(self.d, self.rank_total)
        return full.index_copy(0, self.slice_rows, blocks)

    def stored_B(self, B_matrix: torch.Tensor) -> torch.Tensor:
        rows = B_matrix.index_select(0, self.slice_rows.to(B_matrix.device)).split(self.enabled_widths)
        return torch.cat([block[:, i * self.r:(i + 1) * self.r] for i, block in enumerate(rows)])


# ---------------------------------------------------------------------------------------------
# The layer
# ---------------------------------------------------------------------------------------------
class LoraLayer(nn.Module):
    """A frozen base layer plus any number of named adapters.

    `active` adapters take part in forward; `merged` ones are already inside the base weight
    and are skipped by forward. Nothing merges implicitly (no merge on `.eval()`).
    While `row_plan` is set (by `loralab.per_row_adapters`), it decides instead which adapter each row of
    the batch uses (loralab.core.rows).
    """
    row_plan = None

    def __init__(self, base_layer: nn.Module, kind: "LayerKind"):
        super().__init__()
        self.base_layer = base_layer
        self.kind = kind
        self.lora_adapters = nn.ModuleDict()
        self.active: list[str] = []
        self.merged: list[str] = []
        self._forward_adapters: list[str] = []    # active and not merged; recomputed on changes

    def check_adapter(self, factors: LoraFactors, init: str) -> None:
        """Raise ValueError if this layer cannot take these factors with this init. Changes nothing."""
        scheme = INITS.lookup(init)
        self.kind.check(self.base_layer)
        if scheme.changes_base_weight:
            self.kind.check_merge(self.base_layer)
        for plugin, what in ((factors.variant, "variant"), (scheme, "init")):
            if factors.slices is not None and not plugin.supports_slices:
                raise ValueError(f"the {plugin.name!r} {what} does not support fused slices")
        factors.variant.check(self, factors)
        scheme.check(self, factors)

    def add_adapter(self, name: str, factors: LoraFactors, init: str) -> None:
        """Initialise `factors` with the named init and add them as adapter `name` (not yet active).
        If the init fails, the adapter is not added (the init itself must not have written W0 by then)."""
        if name in self.lora_adapters:
            raise ValueError(f"adapter {name!r} already exists on this layer")
        self.check_adapter(factors, init)
        if not self.kind.input_dropout:
            factors.dropout = nn.Identity()
        weight = self.kind.weight(self.base_layer)
        # At least fp32: a 16-bit base gets fp32 factors (mixed precision); an fp64 base keeps fp64.
        wide = torch.promote_types(weight.dtype, torch.float32) if weight.is_floating_point() else None
        factors.to(device=weight.device, dtype=wide)
        factors.init_scheme = INITS[init]
        self.lora_adapters[name] = factors
        try:
            factors.init_scheme.init(self, factors)
            factors.variant.init(self, factors)
        except BaseException:
            del self.lora_adapters[name]
            raise

    def remove_adapter(self, name: str) -> None:
        """Drop adapter `name` (unmerged first if merged), giving W0 back what its init took (PiSSA)."""
        if name in self.merged:
            self.unmerge()
        f = self.lora_adapters.pop(name)
        clear_slot(self, name)                           # its per-row slot (loralab.core.rows), zeroed and freed
        offset = f.base_offset()
        if offset is not None:
            A0, B0 = offset
            self.add_to_weight(f.scale * (B0 @ A0))
        self.set_active([a for a in self.active if a != name])

    def set_active(self, names: list[str]) -> None:
        self.active = [n for n in names if n in self.lora_adapters]
        self._refresh()

    def _refresh(self) -> None:
        self._forward_adapters = [n for n in self.active if n not in self.merged]

    def add_to_weight(self, delta: torch.Tensor) -> None:
        """W0 += delta, delta given in the matrix view (d, k). The sum is formed in the wider of the two dtypes
        and rounded once to W0's (an in-place add with type promotion does exactly that)."""
        weight = self.kind.weight(self.base_layer)
        with torch.no_grad():
            weight.add_(self.kind.to_weight_layout(self.base_layer, delta).to(weight.device))

    def check_merge(self, names: list[str] | None = None) -> None:
        """Raise ValueError if one of the given (default: active) adapters cannot be merged (NaN/Inf), or
        the base layer's W0 cannot change in place."""
        names = [n for n in (names if names is not None else self.active) if n not in self.merged]
        if names:
            self.kind.check_merge(self.base_layer)
        for name in names:
            f = self.lora_adapters[name]
            if not all(torch.isfinite(p).all() for p in f.parameters()):
                raise ValueError(f"adapter {name!r} holds NaN/Inf values; refusing to merge it into the weights")

    def merge(self, names: list[str] | None = None) -> None:
        """Fold the given (default: active) adapters into W0. Merging twice is a no-op."""
        names = [n for n in (names if names is not None else self.active) if n not in self.merged]
        self.check_merge(names)
        for name in names:
            f = self.lora_adapters[name]
            f.variant.merge(self, f)
            self.merged.append(name)
        self._refresh()

    def unmerge(self, keep: int = 0) -> None:
        """Take merged adapters out of W0 again, last merged first, until `keep` of them are left."""
        while len(self.merged) > keep:
            name = self.merged.pop()
            f = self.lora_adapters[name]
            f.variant.unmerge(self, f)
        self._refresh()

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = self.base_layer(x, *args, **kwargs)
        if self.row_plan is not None:
            return self.row_plan.apply(self, x, out)
        for name in self._forward_adapters:
            f = self.lora_adapters[name]
            out = f.variant.forward(self, f, x, out)
        return out

    def add_lora(self, f: LoraFactors, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """out + s·B·A·x, x already through the adapter's dropout: the whole extra cost of an unmerged
        adapter. The add and the scale ride on the last matmul (one addmm for linear layers)."""
        a = self.kind.lora_input(self.base_layer, x, f.A)                 # (..., rank_total)
        return self.kind.add_lora_output(self.base_layer, out, a, f.B_matrix(), f.scale)

    def lora_output(self, f: LoraFactors, x: torch.Tensor) -> torch.Tensor:
        """s·B·A·x alone, in the layer's output layout (for variants that weight it, like DoRA)."""
        a = self.kind.lora_input(self.base_layer, x, f.A)
        return self.kind.lora_output(self.base_layer, a * f.scale, f.B_matrix())

    def extra_repr(self) -> str:
        return f"kind={self.kind.name}, active={self.active}, merged={self.merged}"
