"""The LoRA math, in one place (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models").

A frozen pretrained layer computes h = W0·x. LoRA freezes W0 and learns a low-rank update (paper eq. 3):

    h = W0·x + s·B·A·x        W0: (d, k)   A: (r, k)   B: (d, r)   r << min(d, k)

    s = alpha / r             (the paper's scaling; rsLoRA, Kalajdzievic 2023, uses alpha / sqrt(r))

Everything in this file works in that *matrix view*: k = input features, d = output features.
`kinds.py` maps each layer type onto it (nn.Linear, nn.Embedding, convolutions, GPT-2's transposed
Conv1D) and `variants.py` holds the variants that change how ΔW is applied (DoRA).

* init:    A random (Kaiming-uniform like the reference code, or Gaussian like the paper), B = 0,
           so ΔW = s·B·A = 0 and the adapted model starts exactly at the base model.
           PiSSA (Meng et al. 2024) instead takes A, B from the top-r SVD of W0 and leaves the residual in W0.
* forward: base output + s·B·(A·dropout(x)). For linear layers the scale and the add ride on one
           addmm (out + s·a·Bᵀ), so the d-wide product is never stored on its own.
* merge:   W0 += s·B·A, so inference costs exactly what the base model costs (paper §4.1).
* unmerge: W0 -= s·B·A. In fp32 each merge/unmerge cycle moves a weight by at most
           u·(2|W0| + |ΔW|) with u = 2**-24 (two roundings), so n cycles stay within n times that.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from loralab.core.variants import PLAIN, Variant

if TYPE_CHECKING:
    from loralab.core.kinds import LayerKind


def lora_scale(r: int, alpha: float, rslora: bool = False) -> float:
    """The factor s in h = W0·x + s·B·A·x: alpha/r, or alpha/sqrt(r) with rsLoRA."""
    return alpha / math.sqrt(r) if rslora else alpha / r


class LoraFactors(nn.Module):
    """One adapter's trainable factors for one layer: A (r, k) and B (d, r), plus its scale and dropout.

    `delta_weight()` is the single place where ΔW = s·B·A is formed; forward, merge, the file
    formats and the analyses all go through it or through `A`/`B_matrix()`.
    """

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

    def delta_weight(self) -> torch.Tensor:
        """ΔW = s·B·A, shape (d, k), in the matrix view (not the layer's storage layout)."""
        return self.scale * (self.B_matrix() @ self.A)

    def extra_repr(self) -> str:
        return f"d={self.d}, k={self.k}, r={self.r}, alpha={self.alpha:g}, scale={self.scale:g}, variant={self.variant.name}"


class SlicedLoraFactors(LoraFactors):
    """LoRA on some slices of a fused projection (GPT-2's c_attn holds [q; k; v] stacked on d).

    The paper adapts only Wq and Wv: each enabled slice i gets its own A_i (r, k) and B_i (d/n, r).
    Stored stacked: A is (n_enabled·r, k), B is (n_enabled·d/n, r). B_matrix() places each B_i in its
    slice's rows and its own r columns, giving an exact rank-(n_enabled·r) ΔW with zero rows for the
    frozen slices — which is also how the adapter is written in PEFT's layout.
    """

    def __init__(self, d: int, k: int, r: int, alpha: float, slices: tuple[bool, ...], **kw):
        if d % len(slices) != 0:
            raise ValueError(f"fused output size {d} does not split into {len(slices)} equal slices")
        self.slices = tuple(bool(s) for s in slices)
        self.n_enabled = sum(self.slices)
        self.slice_size = d // len(slices)
        super().__init__(d, k, r, alpha, **kw)
        rows = [torch.arange(i * self.slice_size, (i + 1) * self.slice_size) for i, on in enumerate(self.slices) if on]
        self.register_buffer("slice_rows", torch.cat(rows), persistent=False)

    @property
    def rank_total(self) -> int:
        return self.r * self.n_enabled

    @property
    def B_shape(self) -> tuple[int, int]:
        return (self.slice_size * self.n_enabled, self.r)

    def B_matrix(self) -> torch.Tensor:
        blocks = torch.block_diag(*self.B.split(self.slice_size))   # (n_en·d/n, n_en·r)
        full = self.B.new_zeros(self.d, self.rank_total)
        return full.index_copy(0, self.slice_rows, blocks)


# ---------------------------------------------------------------------------------------------
# Initialisation. Registered by name so that a new scheme is one function, not a new branch.
# Each takes the layer (for W0) and the fresh factors, and must leave the layer's output unchanged.
# ---------------------------------------------------------------------------------------------
INITS: dict[str, callable] = {}


def register_init(name: str):
    def deco(fn):
        INITS[name] = fn
        return fn
    return deco


@register_init("kaiming")
def init_kaiming(layer: "LoraLayer", f: LoraFactors) -> None:
    """A ~ Kaiming-uniform(a=√5) (the reference implementation's choice), B = 0."""
    nn.init.kaiming_uniform_(f.A, a=math.sqrt(5))
    nn.init.zeros_(f.B)


@register_init("gaussian")
def init_gaussian(layer: "LoraLayer", f: LoraFactors) -> None:
    """A ~ N(0, 1/r²) (the paper's "random Gaussian"; std 1/r keeps A·x of order one), B = 0."""
    nn.init.normal_(f.A, std=1.0 / f.r)
    nn.init.zeros_(f.B)


@register_init("pissa")
def init_pissa(layer: "LoraLayer", f: LoraFactors) -> None:
    """PiSSA: W0 = U·S·Vᵀ; B = U_r·√S_r/√s, A = √S_r·V_rᵀ/√s, W0 ← W0 - s·B·A (the residual).

    The adapter then starts on W0's principal directions and the layer's output is unchanged.
    The initial factors are kept (as buffers) so the adapter can be saved relative to the
    original W0 (see `formats.peft`), like PEFT's PiSSA conversion.
    """
    if isinstance(f, SlicedLoraFactors):
        raise ValueError("PiSSA init is not supported on fused slices; use init='kaiming' or 'gaussian'")
    W = layer.kind.weight_matrix(layer.base_layer).detach().float()
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    root = (S[: f.r] / f.scale).sqrt()
    with torch.no_grad():
        f.B.copy_(U[:, : f.r] * root)
        f.A.copy_(root[:, None] * Vh[: f.r])
        layer.add_to_weight(-f.delta_weight())
    f.register_buffer("A0", f.A.detach().clone())
    f.register_buffer("B0", f.B.detach().clone())


# ---------------------------------------------------------------------------------------------
# The layer
# ---------------------------------------------------------------------------------------------
class LoraLayer(nn.Module):
    """A frozen base layer plus any number of named adapters.

    `active` adapters take part in forward; `merged` ones are already inside the base weight
    and are skipped by forward. Nothing merges implicitly (no merge on `.eval()`).
    """

    def __init__(self, base_layer: nn.Module, kind: "LayerKind"):
        super().__init__()
        self.base_layer = base_layer
        self.kind = kind
        self.lora_adapters = nn.ModuleDict()
        self.active: list[str] = []
        self.merged: list[str] = []
        self._forward_adapters: list[str] = []    # active and not merged; recomputed on changes

    def add_adapter(self, name: str, factors: LoraFactors, init: str) -> None:
        if name in self.lora_adapters:
            raise ValueError(f"adapter {name!r} already exists on this layer")
        self.kind.check(self.base_layer)
        factors.variant.check(self, factors)
        if not self.kind.input_dropout:
            factors.dropout = nn.Identity()
        weight = self.kind.weight(self.base_layer)
        factors.to(device=weight.device, dtype=weight.dtype if weight.is_floating_point() else None)
        self.lora_adapters[name] = factors
        INITS[init](self, factors)
        factors.variant.init(self, factors)

    def set_active(self, names: list[str]) -> None:
        self.active = [n for n in names if n in self.lora_adapters]
        self._refresh()

    def _refresh(self) -> None:
        self._forward_adapters = [n for n in self.active if n not in self.merged]

    def add_to_weight(self, delta: torch.Tensor) -> None:
        """W0 += delta, delta given in the matrix view (d, k)."""
        weight = self.kind.weight(self.base_layer)
        with torch.no_grad():
            weight.add_(self.kind.to_weight_layout(self.base_layer, delta).to(weight.dtype))

    def merge(self, names: list[str] | None = None) -> None:
        """Fold the given (default: active) adapters into W0. Merging twice is a no-op."""
        for name in names if names is not None else self.active:
            if name in self.merged:
                continue
            f = self.lora_adapters[name]
            if not (torch.isfinite(f.A).all() and torch.isfinite(f.B).all()):
                raise ValueError(f"adapter {name!r} holds NaN/Inf values; refusing to merge it into the weights")
            f.variant.merge(self, f)
            self.merged.append(name)
        self._refresh()

    def unmerge(self) -> None:
        """Take every merged adapter out of W0 again, last merged first."""
        while self.merged:
            name = self.merged.pop()
            f = self.lora_adapters[name]
            f.variant.unmerge(self, f)
        self._refresh()

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = self.base_layer(x, *args, **kwargs)
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
