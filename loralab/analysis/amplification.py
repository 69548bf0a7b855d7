"""ΔW versus W (paper §7.3, Table 7): does the update point along W's strong directions, or does it
amplify directions W already has but does not emphasise?

For an update ΔW of rank r with thin SVD ΔW = U·Σ·Vh (U (d, r), Vh (r, k)), project W (d, k) onto
ΔW's r-dimensional input and output subspaces and measure what is left:

    ‖Uᵀ·W·Vhᵀ‖_F                      (an r×r matrix; the paper writes UᵀWVᵀ with V = Vh)

and compare it with
* ‖W‖_F                               (all of W),
* W's own top-r directions:           sqrt(σ_1(W)² + … + σ_r(W)²), the largest any r-dim pair can give,
* random orthonormal U, V (d, r), (k, r):  E‖UᵀWV‖_F² = (r/d)(r/k)·‖W‖_F²  (E[UUᵀ] = (r/d)·I and
  E[VVᵀ] = (r/k)·I, independent), so the typical value is r·‖W‖_F / sqrt(d·k).

Amplification factor = ‖ΔW‖_F / ‖Uᵀ·W·Vhᵀ‖_F: how much ΔW magnifies W's component in ΔW's own
directions. The paper finds ≈21.5 at r = 4 and ≈2 at r = 64 (GPT-3, Wq of layer 48): a low-rank
update strongly amplifies a few task-specific directions that W carries only weakly.

Costs: the projection is O(d·k·r) (W·Vhᵀ first); W's top-r needs W's singular values, O(d·k·min(d, k)),
the only dense decomposition here (W is dense anyway).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from loralab.analysis.deltas import LowRankDelta
from loralab.analysis.spectrum import delta_svd
from loralab.errors import LoraLabError


def projection_norm(W: torch.Tensor, U: torch.Tensor, Vh: torch.Tensor) -> float:
    """‖Uᵀ·W·Vhᵀ‖_F for W (d, k), U (d, r) and Vh (r, k) with orthonormal columns/rows. O(d·k·r)."""
    W = W.detach().to(torch.float64)
    return float(torch.linalg.matrix_norm(U.to(torch.float64).T @ (W @ Vh.to(torch.float64).T)))


def top_r_projection_norm(W: torch.Tensor, r: int) -> float:
    """‖Uᵀ·W·Vhᵀ‖_F with U, Vh W's own top-r singular vectors: UᵀWVhᵀ = diag(σ_1..σ_r), so the norm is
    sqrt(Σ_{i≤r} σ_i(W)²). O(d·k·min(d, k)) for W's singular values."""
    s = torch.linalg.svdvals(W.detach().to(torch.float64))
    return float(torch.sqrt((s[:r] ** 2).sum()))


def random_orthonormal(n: int, r: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A uniformly random (n, r) matrix with orthonormal columns (QR of a Gaussian, signs fixed by R's
    diagonal so the distribution is exactly Haar). float64."""
    G = torch.randn(n, r, generator=generator, dtype=torch.float64)
    Q, R = torch.linalg.qr(G, mode="reduced")
    signs = torch.sign(torch.diagonal(R))
    signs[signs == 0] = 1.0
    return Q * signs


def expected_random_projection_norm(w_fro: float, d: int, k: int, r: int) -> float:
    """sqrt(E‖UᵀWV‖_F²) = r·‖W‖_F / sqrt(d·k) for random orthonormal U (d, r), V (k, r)."""
    return r * w_fro / math.sqrt(d * k)


@dataclass
class ModuleAmplification:
    """ΔW versus W for one module (all norms Frobenius, in units of the weights).

    r:                the rank used for every projection (ΔW's number of singular vectors, min(r, d, k))
    w_fro:            ‖W‖_F
    delta_fro:        ‖ΔW‖_F
    proj_delta:       ‖UᵀWVhᵀ‖_F, U, Vh = ΔW's top-r singular vectors
    proj_w_top:       the same with W's own top-r singular vectors
    proj_random:      mean over trials with random orthonormal U, V
    proj_random_expected: r·‖W‖_F / sqrt(d·k)
    amplification:    delta_fro / proj_delta (nan when ΔW = 0: the subspace is undefined)
    """
    name: str
    module: str
    d_out: int
    d_in: int
    r: int
    w_fro: float
    delta_fro: float
    proj_delta: float
    proj_w_top: float
    proj_random: float
    proj_random_expected: float
    amplification: float

    def to_dict(self) -> dict:
        return asdict(self)


def amplification_of(delta: LowRankDelta, W: torch.Tensor, trials: int = 10,
                     generator: torch.Generator | None = None) -> ModuleAmplification:
    """Table 7's measures for one ΔW and the matching base weight W (d, k) in the matrix view."""
    W = W.detach().to(torch.float64)
    if tuple(W.shape) != (delta.d_out, delta.d_in):
        raise LoraLabError(f"{delta.name}: base weight is {tuple(W.shape)} but ΔW is ({delta.d_out}, {delta.d_in}); "
                           f"the adapter was trained on a different base model")
    if trials < 1:
        raise LoraLabError(f"random projection trials must be ≥ 1, got {trials}")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    svd = delta_svd(delta)
    r = svd.S.numel()
    d, k = W.shape
    delta_fro = float(torch.sqrt((svd.S ** 2).sum()))
    proj_delta = projection_norm(W, svd.U, svd.Vh)
    proj_random = sum(projection_norm(W, random_orthonormal(d, r, generator), random_orthonormal(k, r, generator).T)
                      for _ in range(trials)) / trials
    w_fro = float(torch.linalg.matrix_norm(W))
    return ModuleAmplification(
        name=delta.name, module=delta.module, d_out=d, d_in=k, r=r, w_fro=w_fro, delta_fro=delta_fro,
        proj_delta=proj_delta, proj_w_top=top_r_projection_norm(W, r), proj_random=proj_random,
        proj_random_expected=expected_random_projection_norm(w_fro, d, k, r),
        amplification=delta_fro / proj_delta if delta_fro > 0 and proj_delta > 0 else float("nan"))


def compare_with_base(deltas: list[LowRankDelta], weights: dict[str, torch.Tensor], trials: int = 10,
                      seed: int = 0) -> list[ModuleAmplification]:
    """`amplification_of` for every ΔW. weights: {module path: W0 (d_full, k)} in the matrix view;
    a fused-slice ΔW is compared with its own rows of W0."""
    return [amplification_of(delta, delta.base_weight(weights), trials, torch.Generator().manual_seed(seed))
            for delta in deltas]
