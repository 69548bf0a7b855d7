"""Intruder dimensions (Shuttleworth et al. 2024, "LoRA vs Full Fine-tuning: An Illusion of Equivalence",
arXiv:2410.21228): high-ranking singular vectors of the fine-tuned weight W0 + ΔW that resemble no singular
vector of the base weight W0.

With W0 = U0·S0·V0ᵀ and W0 + ΔW = U·S·Vᵀ (thin SVDs, singular values descending), singular vector j of the
fine-tuned weight is an intruder when

    max_i |cos(U[:, j], U0[:, i])| < ε          (cosine of unit vectors = |U[:, j] · U0[:, i]|)

and intruders are counted among the top k singular vectors (j < k). Left singular vectors (output
directions) are compared, as PEFT's `reduce_intruder_dimension` does; the defaults k = 10, ε = 0.5 are
PEFT's. The comparison is strict: a similarity exactly equal to ε is not an intruder.

Mitigation (`reduce_intruders`): scale the intruders' components σ_j·u_j·v_jᵀ of W0 + ΔW by `scale`
and return the ΔW that gives that merged weight (PEFT's `mitigation_lambda` plays the same part).
`scale_model_intruders` does the same in place on a merged model's weights (`loralab merge
--reduce-intruders SCALE`, `loralab experiment intruders`): a weight without intruders is not touched.

Costs: two dense SVDs per layer, O(d·k·min(d, k)) each, in float64 on the CPU.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from loralab.analysis.base import resolve_module
from loralab.analysis.deltas import LowRankDelta
from loralab.core.kinds import kind_of
from loralab.errors import LoraLabError

DEFAULT_K = 10            # top singular vectors of W0 + ΔW examined (PEFT's top_k)
DEFAULT_THRESHOLD = 0.5   # ε on max |cos| (PEFT's threshold_epsilon)


def check_intruder_settings(k: int, threshold: float) -> None:
    """Refuse a k or ε that makes the count meaningless (one-line LoraLabError naming the CLI flag)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise LoraLabError(f"--intruder-k must be an integer ≥ 1, got {k!r}")
    if not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise LoraLabError(f"--intruder-threshold must be a cosine similarity in (0, 1], got {threshold!r}")


def check_intruder_scale(scale: float, what: str = "intruder scale") -> None:
    """Refuse a mitigation scale outside [0, 1] (NaN included) with one line; `what` names it (a CLI flag)."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 <= scale <= 1:
        raise LoraLabError(f"{what} must be in [0, 1] (0 removes the intruder directions, 1 keeps them), "
                           f"got {scale!r}")


def _svd_against_base(W0: torch.Tensor, W_ft: torch.Tensor, k: int):
    """(max |cos| of each of the top min(k, d, n) left singular vectors of W_ft to W0's, U, S, Vh of W_ft),
    all float64 on the CPU."""
    W0 = W0.detach().to("cpu", torch.float64)
    W_ft = W_ft.detach().to("cpu", torch.float64)
    if W0.shape != W_ft.shape or W0.dim() != 2:
        raise LoraLabError(f"base weight {tuple(W0.shape)} and fine-tuned weight {tuple(W_ft.shape)} must be the "
                           f"same matrix shape; pass the base model the weights were trained from")
    U0 = torch.linalg.svd(W0, full_matrices=False).U
    U, S, Vh = torch.linalg.svd(W_ft, full_matrices=False)
    top = min(k, S.numel())
    return (U[:, :top].T @ U0).abs().max(dim=1).values, U, S, Vh


def max_cosine_to_base(W0: torch.Tensor, W_ft: torch.Tensor, k: int = DEFAULT_K) -> tuple[torch.Tensor, torch.Tensor]:
    """(max |cos| per top singular vector, the fine-tuned singular values).

    W0, W_ft: (d, n) weights in the matrix view. Returns two float64 vectors of length min(k, d, n): entry j is
    max_i |U[:, j] · U0[:, i]| over every left singular vector of W0, and σ_j(W_ft)."""
    cos, _, S, _ = _svd_against_base(W0, W_ft, k)
    return cos, S[:cos.numel()]


def intruder_indices(W0: torch.Tensor, W_ft: torch.Tensor, k: int = DEFAULT_K,
                     threshold: float = DEFAULT_THRESHOLD) -> list[int]:
    """Ranks j (0-based, < k) of the intruder singular vectors of W_ft (d, n) against W0 (d, n)."""
    check_intruder_settings(k, threshold)
    cos, _ = max_cosine_to_base(W0, W_ft, k)
    return [j for j, c in enumerate(cos.tolist()) if c < threshold]


@dataclass
class ModuleIntruders:
    """Intruder dimensions of one adapted weight.

    k, threshold:  the settings (top k singular vectors of W0 + ΔW; ε on max |cos|)
    count:         number of intruders among the top k
    indices:       their ranks (1-based, as in "the 3rd singular vector")
    max_cosine:    max |cos| to W0's singular vectors for each of the top k (dimensionless, in [0, 1])
    singular_values: σ_1..σ_k of W0 + ΔW (units of the weights)
    """
    name: str
    module: str
    d_out: int
    d_in: int
    k: int
    threshold: float
    count: int
    indices: list[int]
    max_cosine: list[float]
    singular_values: list[float]

    def to_dict(self) -> dict:
        return asdict(self)


def _dense(delta: LowRankDelta | torch.Tensor) -> torch.Tensor:
    return delta.dense() if isinstance(delta, LowRankDelta) else delta.detach().to("cpu", torch.float64)


def intruders_of(name: str, delta: LowRankDelta | torch.Tensor, W0: torch.Tensor, k: int = DEFAULT_K,
                 threshold: float = DEFAULT_THRESHOLD, module: str | None = None) -> ModuleIntruders:
    """`ModuleIntruders` of W0 + ΔW against W0. delta: a LowRankDelta or a dense ΔW (d, n) (a full fine-tuning
    update W_ft − W0); W0: (d, n)."""
    check_intruder_settings(k, threshold)
    W0 = W0.detach().to("cpu", torch.float64)
    cos, sigma = max_cosine_to_base(W0, W0 + _dense(delta), k)
    indices = [j + 1 for j, c in enumerate(cos.tolist()) if c < threshold]
    return ModuleIntruders(name=name, module=module or name, d_out=W0.shape[0], d_in=W0.shape[1], k=k,
                           threshold=float(threshold), count=len(indices), indices=indices,
                           max_cosine=cos.tolist(), singular_values=sigma.tolist())


def adapter_intruders(deltas: list[LowRankDelta], weights: dict[str, torch.Tensor], k: int = DEFAULT_K,
                      threshold: float = DEFAULT_THRESHOLD) -> list[ModuleIntruders]:
    """`intruders_of` for every ΔW of an adapter. weights: {module path: W0 (d_full, n)}; a fused-slice ΔW is
    compared with its own rows of W0."""
    return [intruders_of(delta.name, delta, delta.base_weight(weights), k, threshold, module=delta.module)
            for delta in deltas]


def reduce_intruders(delta: torch.Tensor, base: torch.Tensor, scale: float, k: int = DEFAULT_K,
                     threshold: float = DEFAULT_THRESHOLD) -> torch.Tensor:
    """ΔW' (d, n) float64 such that W0 + ΔW' is W0 + ΔW with each intruder component σ_j·u_j·v_jᵀ scaled by
    `scale` (0 removes it, 1 keeps it). delta: ΔW (d, n); base: W0 (d, n).

    With scale = 1, or no intruder, ΔW is returned unchanged (a float64 copy, bit for bit). ΔW' generally has a
    higher rank than ΔW: refactor it (e.g. a truncated SVD) to store it as LoRA factors."""
    check_intruder_scale(scale)
    dW = delta.detach().to("cpu", torch.float64).clone()
    W0 = base.detach().to("cpu", torch.float64)
    if scale == 1:
        return dW
    _, _, part = intruder_part(W0, W0 + dW, k, threshold)
    return dW if part is None else dW + (scale - 1.0) * part


def intruder_part(W0: torch.Tensor, W_ft: torch.Tensor, k: int = DEFAULT_K, threshold: float = DEFAULT_THRESHOLD
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(max |cos| of W_ft's top k singular vectors to W0's, their σ_1..σ_k, Σ_{j intruder} σ_j·u_j·v_jᵀ as a
    (d, n) float64 matrix or None when there is no intruder). W0, W_ft: (d, n)."""
    check_intruder_settings(k, threshold)
    cos, U, S, Vh = _svd_against_base(W0, W_ft, k)
    picked = torch.tensor([j for j, c in enumerate(cos.tolist()) if c < threshold], dtype=torch.long)
    part = (U[:, picked] * S[picked]) @ Vh[picked] if picked.numel() else None
    return cos, S[:cos.numel()], part


@dataclass(frozen=True)
class WeightSlice:
    """Which weight (or rows of one) `scale_model_intruders` examines.

    name:   display name (a fused projection's slice i: "<module>[i]", as in `deltas.LowRankDelta`)
    module: the module path in the model
    rows:   (start, stop) rows of the module's matrix view (d_full, n); None = all rows
    """
    name: str
    module: str
    rows: tuple[int, int] | None = None


def slices_of(deltas: Sequence[LowRankDelta]) -> list[WeightSlice]:
    """The weights an adapter's ΔWs update, each fused slice on its own rows (as `adapter_intruders` compares)."""
    return [WeightSlice(d.name, d.module, d.rows) for d in deltas]


@torch.no_grad()
def scale_model_intruders(model: nn.Module, base_weights: dict[str, torch.Tensor], scale: float,
                          k: int = DEFAULT_K, threshold: float = DEFAULT_THRESHOLD,
                          slices: Sequence[WeightSlice] | None = None) -> list[ModuleIntruders]:
    """Scale the intruder components of a fine-tuned (merged) model's weights, in place.

    model: plain layers (an adapter merged and unloaded, or fully fine-tuned weights); base_weights: {module
    path: W0 (d_full, n)} in the matrix view (`loralab.analysis.base.base_weights`); slices: the weights to
    examine (default: every module of base_weights, all rows). For each, W_ft = the model's weight there, and
    W_ft ← W_ft + (scale − 1)·Σ_{j intruder} σ_j·u_j·v_jᵀ (computed in float64, stored in the weight's dtype):
    the same merged weight `reduce_intruders` gives. A weight without intruders, or scale = 1, is left exactly
    as it was. Returns the `ModuleIntruders` of every slice as found before scaling."""
    check_intruder_scale(scale)
    check_intruder_settings(k, threshold)
    slices = list(slices) if slices is not None else [WeightSlice(name, name) for name in base_weights]
    found = []
    for piece in slices:
        module = resolve_module(model, piece.module)
        if module is None:
            raise LoraLabError(f"the model has no module {piece.module}; pass the model the adapter was trained on")
        kind = kind_of(module)
        if kind is None:
            raise LoraLabError(f"{piece.module} is a {type(module).__name__}, not a plain layer with a weight "
                               f"matrix; merge and unload the adapter first")
        weight = kind.weight_matrix(module)          # a view: writing into it writes the layer's weight
        if piece.rows is not None:
            weight = weight[piece.rows[0]:piece.rows[1]]
        if piece.module not in base_weights:
            raise LoraLabError(f"no base weight for {piece.module}; pass the base model the weights were trained from")
        W0 = base_weights[piece.module]
        if piece.rows is not None:
            W0 = W0[piece.rows[0]:piece.rows[1]]
        cos, sigma, part = intruder_part(W0, weight, k, threshold)
        indices = [j + 1 for j, c in enumerate(cos.tolist()) if c < threshold]
        found.append(ModuleIntruders(name=piece.name, module=piece.module, d_out=W0.shape[0], d_in=W0.shape[1],
                                     k=k, threshold=float(threshold), count=len(indices), indices=indices,
                                     max_cosine=cos.tolist(), singular_values=sigma.tolist()))
        if part is not None and scale != 1:
            new = weight.detach().to("cpu", torch.float64) + (scale - 1.0) * part
            weight.copy_(new.to(device=weight.device, dtype=weight.dtype))
    return found
