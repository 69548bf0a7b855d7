"""Singular value spectrum, effective rank and stable rank of each ΔW = s·B·A.

The SVD of ΔW (d, k) never needs the dense matrix. With reduced QR factorisations

    B = Q_B·R_B        Q_B (d, q_B) orthonormal columns, R_B (q_B, r)
    Aᵀ = Q_A·R_A       Q_A (k, q_A) orthonormal columns, R_A (q_A, r)

ΔW = Q_B·(s·R_B·R_Aᵀ)·Q_Aᵀ, and the SVD of the small core C = s·R_B·R_Aᵀ (q_B, q_A) = U_c·Σ·V_cᵀ gives
ΔW = (Q_B·U_c)·Σ·(V_cᵀ·Q_Aᵀ): the same singular values, and singular vectors lifted by one product.
Cost O((d + k)·r² + r³) time and O((d + k)·r) memory, against O(d·k·min(d, k)) time and d·k memory
for the dense SVD (for d = k = 4096, r = 8: ~0.5 M flops instead of ~7·10¹⁰).

Measures of a spectrum σ_1 ≥ … ≥ σ_q ≥ 0:
* effective rank (Roy & Vetterli 2007): exp(H(p)), p_i = σ_i / Σσ, H = −Σ p_i·ln p_i.
  Between 1 (one direction) and q (all σ equal); continuous, so it sees a fast-decaying tail.
* stable rank: ‖ΔW‖_F² / ‖ΔW‖_2² = Σσ_i² / σ_1². Also in [1, q]; weights by energy, so it is
  smaller than the effective rank for the same spectrum (it ignores small σ more strongly).
Both are 0 for ΔW = 0 (e.g. an untrained adapter, B = 0), where neither is defined.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from loralab.analysis.deltas import LowRankDelta


@dataclass(frozen=True)
class LowRankSVD:
    """Thin SVD of a rank-≤r matrix: M = U·diag(S)·Vh.

    U (d, q), S (q,) descending, Vh (q, k), q = min(r, d, k); float64.
    """
    U: torch.Tensor
    S: torch.Tensor
    Vh: torch.Tensor


def lowrank_svd(B: torch.Tensor, A: torch.Tensor, scale: float = 1.0) -> LowRankSVD:
    """SVD of ΔW = scale·B·A from the factors, via QR of B and Aᵀ and the SVD of the r×r core.

    B: (d, r), A: (r, k), any float dtype. Cost O((d + k)·r² + r³); ΔW (d, k) is never formed.
    Computed in float64.
    """
    B = B.detach().to(torch.float64)
    A = A.detach().to(torch.float64)
    Q_B, R_B = torch.linalg.qr(B, mode="reduced")        # (d, q_B), (q_B, r)
    Q_A, R_A = torch.linalg.qr(A.T, mode="reduced")      # (k, q_A), (q_A, r)
    core = float(scale) * (R_B @ R_A.T)                  # (q_B, q_A), at most r×r
    U_c, S, Vh_c = torch.linalg.svd(core, full_matrices=False)
    return LowRankSVD(U=Q_B @ U_c, S=S, Vh=Vh_c @ Q_A.T)


def delta_svd(delta: LowRankDelta) -> LowRankSVD:
    """`lowrank_svd` of one LowRankDelta."""
    return lowrank_svd(delta.B, delta.A, delta.scale)


def effective_rank(singular_values: torch.Tensor) -> float:
    """Roy & Vetterli's effective rank exp(−Σ p_i ln p_i), p_i = σ_i/Σσ (0·ln 0 = 0). 0 for a zero matrix."""
    s = singular_values.detach().to(torch.float64).abs()
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def stable_rank(singular_values: torch.Tensor) -> float:
    """Stable rank ‖M‖_F² / ‖M‖_2² = Σσ_i² / max σ_i². 0 for a zero matrix."""
    s = singular_values.detach().to(torch.float64).abs()
    top = s.max() if s.numel() else torch.tensor(0.0, dtype=torch.float64)
    if top <= 0:
        return 0.0
    return float((s ** 2).sum() / top ** 2)


def energy_rank(singular_values: torch.Tensor, fraction: float = 0.9) -> int:
    """Smallest k whose top-k singular values hold `fraction` of Σσ² (= ‖M‖_F²): the rank of the best
    approximation (Eckart–Young) with relative squared error ≤ 1 − fraction. 0 for a zero matrix."""
    s = singular_values.detach().to(torch.float64).abs().sort(descending=True).values
    energy = (s ** 2).cumsum(0)
    if not s.numel() or energy[-1] <= 0:
        return 0
    return int((energy < fraction * energy[-1]).sum()) + 1


def numerical_rank(singular_values: torch.Tensor, shape: tuple[int, int]) -> int:
    """Number of σ above the usual round-off threshold max(shape)·eps(float64)·σ_1."""
    s = singular_values.detach().to(torch.float64).abs()
    if not s.numel() or s.max() <= 0:
        return 0
    tol = max(shape) * torch.finfo(torch.float64).eps * s.max()
    return int((s > tol).sum())


@dataclass
class ModuleSpectrum:
    """The spectrum of one ΔW and its summaries.

    singular_values: descending, q = min(r, d_out, d_in) of them (units of the weights)
    frobenius = ‖ΔW‖_F, spectral = ‖ΔW‖_2 = σ_1
    energy_top1: σ_1² / Σσ² (share of ‖ΔW‖_F² in the top direction)
    """
    name: str
    module: str
    d_out: int
    d_in: int
    r: int
    scale: float
    singular_values: list[float] = field(repr=False)
    frobenius: float
    spectral: float
    effective_rank: float
    stable_rank: float
    numerical_rank: int
    energy_top1: float

    def to_dict(self) -> dict:
        return asdict(self)


def spectrum_of(delta: LowRankDelta) -> ModuleSpectrum:
    """Spectrum and ranks of one ΔW, through the QR path (never dense)."""
    s = delta_svd(delta).S
    energy = float((s ** 2).sum())
    return ModuleSpectrum(
        name=delta.name, module=delta.module, d_out=delta.d_out, d_in=delta.d_in, r=delta.r, scale=delta.scale,
        singular_values=[float(x) for x in s], frobenius=math.sqrt(energy),
        spectral=float(s[0]) if s.numel() else 0.0, effective_rank=effective_rank(s), stable_rank=stable_rank(s),
        numerical_rank=numerical_rank(s, (delta.d_out, delta.d_in)),
        energy_top1=float(s[0] ** 2) / energy if energy > 0 else 0.0)


def adapter_spectra(deltas: list[LowRankDelta]) -> list[ModuleSpectrum]:
    """`spectrum_of` for every ΔW of an adapter, in the given order."""
    return [spectrum_of(d) for d in deltas]
