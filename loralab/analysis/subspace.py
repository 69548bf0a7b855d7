"""Subspace similarity between two adapters (paper §7.2): how much of the top-i directions one
adapter learned are shared by the top-j directions of another (two ranks, two seeds, two tasks).

Normalised Grassmann similarity (Hu et al. 2021, eq. in §7.2):

    φ(A1, A2, i, j) = ‖U1[:, :i]ᵀ·U2[:, :j]‖_F² / min(i, j)   ∈ [0, 1]

U = right-singular vectors of A (A is r×k, so U is k×r, columns ordered by singular value): the input
directions the adapter reads. φ = 1 when one top subspace contains the other, 0 when they are
orthogonal. Only subspaces enter, so φ ignores A's scale and the sign of singular vectors.

Random baseline. If the j-dim subspace is uniformly random in R^k, E[P_j] = (j/k)·I by rotation
invariance (E[P_j] commutes with every rotation, and tr P_j = j), so
E‖U_iᵀU_j‖_F² = tr(U_iᵀ·E[P_j]·U_i) = i·j/k and E φ(i, j) = i·j / (k·min(i, j)) = max(i, j)/k.
`random_similarity_baseline` also measures it with seeded Gaussian matrices, as the paper does.

All φ(i, j), i ≤ r1, j ≤ r2, come from one r1×r2 product: M = (U1ᵀU2)∘(U1ᵀU2); the numerator for
(i, j) is the sum of M's top-left i×j block, i.e. a 2-D cumulative sum. Cost O(k·r1·r2) after the
two thin SVDs (O(k·r²) each).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from loralab.analysis.deltas import LowRankDelta
from loralab.analysis.spectrum import delta_svd
from loralab.errors import LoraLabError


def right_singular_vectors(A: torch.Tensor) -> torch.Tensor:
    """Right-singular vectors of A (r, k) as the columns of a (k, q) matrix, q = min(r, k), ordered by
    descending singular value. float64."""
    _, _, Vh = torch.linalg.svd(A.detach().to(torch.float64), full_matrices=False)
    return Vh.T


def left_singular_vectors(B: torch.Tensor) -> torch.Tensor:
    """Left-singular vectors of B (d, r) as the columns of a (d, q) matrix, q = min(d, r). float64."""
    U, _, _ = torch.linalg.svd(B.detach().to(torch.float64), full_matrices=False)
    return U


def similarity_grid(U1: torch.Tensor, U2: torch.Tensor) -> torch.Tensor:
    """φ(i, j) for all i = 1..q1, j = 1..q2 as a (q1, q2) float64 tensor (entry [i-1, j-1]).

    U1 (n, q1), U2 (n, q2): orthonormal columns, ordered by importance.
    """
    if U1.shape[0] != U2.shape[0]:
        raise LoraLabError(f"the two subspaces live in different spaces (R^{U1.shape[0]} vs R^{U2.shape[0]}); "
                           f"compare adapters of the same base model")
    overlap = (U1.to(torch.float64).T @ U2.to(torch.float64)) ** 2        # (q1, q2)
    numerator = overlap.cumsum(0).cumsum(1)
    i = torch.arange(1, U1.shape[1] + 1, dtype=torch.float64)[:, None]
    j = torch.arange(1, U2.shape[1] + 1, dtype=torch.float64)[None, :]
    return numerator / torch.minimum(i, j)


def phi(A1: torch.Tensor, A2: torch.Tensor, i: int, j: int) -> float:
    """The paper's φ(A1, A2, i, j) for two A matrices (r1, k) and (r2, k); 1 ≤ i ≤ r1, 1 ≤ j ≤ r2."""
    U1, U2 = right_singular_vectors(A1), right_singular_vectors(A2)
    if not (1 <= i <= U1.shape[1] and 1 <= j <= U2.shape[1]):
        raise LoraLabError(f"φ needs 1 ≤ i ≤ {U1.shape[1]} and 1 ≤ j ≤ {U2.shape[1]}, got i={i}, j={j}")
    top = U1[:, :i].T @ U2[:, :j]
    return float((top ** 2).sum() / min(i, j))


def expected_random_similarity(i: int, j: int, k: int) -> float:
    """E φ(i, j) for independent uniformly random subspaces of dims i and j in R^k: max(i, j)/k."""
    return max(i, j) / k


def expected_random_grid(r1: int, r2: int, k: int) -> torch.Tensor:
    """max(i, j)/k for i = 1..r1, j = 1..r2 as a (r1, r2) float64 tensor."""
    i = torch.arange(1, r1 + 1, dtype=torch.float64)[:, None]
    j = torch.arange(1, r2 + 1, dtype=torch.float64)[None, :]
    return torch.maximum(i, j) / k


def random_similarity_baseline(k: int, r1: int, r2: int, trials: int = 20,
                               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Empirical φ grid between the right-singular vectors of two independent standard Gaussian
    matrices (r1, k) and (r2, k), over `trials` draws: (mean (r1', r2'), std (r1', r2')), r' = min(r, k).

    generator: a seeded torch.Generator for reproducible baselines (default: seed 0).
    """
    if trials < 1:
        raise LoraLabError(f"random baseline trials must be ≥ 1, got {trials}")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    grids = []
    for _ in range(trials):
        A1 = torch.randn(r1, k, generator=generator, dtype=torch.float64)
        A2 = torch.randn(r2, k, generator=generator, dtype=torch.float64)
        grids.append(similarity_grid(right_singular_vectors(A1), right_singular_vectors(A2)))
    stack = torch.stack(grids)
    std = stack.std(0) if trials > 1 else torch.zeros_like(stack[0])
    return stack.mean(0), std


@dataclass
class ModuleSimilarity:
    """φ between the same module of two adapters, next to its random baselines.

    phi, random_mean, random_std, expected: (r1, r2) grids, entry [i-1][j-1] = value at (i, j).
    factor: "A" (right-singular vectors of A, in R^k; the paper's choice) or "B" (left-singular of B, R^d).
    """
    name: str
    factor: str
    dim: int                   # k for "A", d for "B": the ambient dimension of the subspaces
    r1: int
    r2: int
    phi: list[list[float]] = field(repr=False)
    random_mean: list[list[float]] = field(repr=False)
    random_std: list[list[float]] = field(repr=False)
    expected: list[list[float]] = field(repr=False)

    @property
    def top_overlap(self) -> float:
        """φ(1, 1): squared cosine between the two top directions."""
        return self.phi[0][0]

    @property
    def mean_phi(self) -> float:
        return sum(map(sum, self.phi)) / (self.r1 * self.r2)

    @property
    def mean_expected(self) -> float:
        return sum(map(sum, self.expected)) / (self.r1 * self.r2)

    def to_dict(self) -> dict:
        return {"name": self.name, "factor": self.factor, "dim": self.dim, "r1": self.r1, "r2": self.r2,
                "top_overlap": self.top_overlap, "mean_phi": self.mean_phi, "mean_expected": self.mean_expected,
                "phi": self.phi, "random_mean": self.random_mean, "random_std": self.random_std,
                "expected": self.expected}


def _basis(delta: LowRankDelta, factor: str, use_delta: bool) -> torch.Tensor:
    if use_delta:   # singular vectors of ΔW itself (the row/column space of s·B·A, ordered by ΔW's σ)
        svd = delta_svd(delta)
        return svd.Vh.T if factor == "A" else svd.U
    return right_singular_vectors(delta.A) if factor == "A" else left_singular_vectors(delta.B)


def compare_adapters(deltas1: list[LowRankDelta], deltas2: list[LowRankDelta], factor: str = "A",
                     trials: int = 20, seed: int = 0, use_delta: bool = False) -> list[ModuleSimilarity]:
    """φ grids for every ΔW (by name) the two adapters share, each with its random baselines.

    factor "A" follows the paper (right-singular vectors of A); "B" compares output directions.
    use_delta: take the singular vectors of ΔW = s·B·A instead of A's (or B's) own.
    The empirical baseline for each (dim, r1, r2) is computed once, with a generator seeded by `seed`.
    """
    if factor not in ("A", "B"):
        raise LoraLabError(f"factor must be 'A' or 'B', got {factor!r}")
    by_name2 = {d.name: d for d in deltas2}
    common = [d for d in deltas1 if d.name in by_name2]
    if not common:
        raise LoraLabError("the two adapters share no adapted module; subspace similarity needs adapters "
                           "trained on the same modules of the same base model")
    baselines: dict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor]] = {}
    out = []
    for d1 in common:
        d2 = by_name2[d1.name]
        U1, U2 = _basis(d1, factor, use_delta), _basis(d2, factor, use_delta)
        if U1.shape[0] != U2.shape[0]:
            raise LoraLabError(f"{d1.name} is {d1.d_out}×{d1.d_in} in one adapter and {d2.d_out}×{d2.d_in} "
                               f"in the other; compare adapters of the same base model")
        n, q1, q2 = U1.shape[0], U1.shape[1], U2.shape[1]
        key = (n, q1, q2)
        if key not in baselines:
            gen = torch.Generator().manual_seed(seed)
            baselines[key] = random_similarity_baseline(n, q1, q2, trials, gen)
        mean, std = baselines[key]
        out.append(ModuleSimilarity(
            name=d1.name, factor=factor, dim=n, r1=q1, r2=q2, phi=similarity_grid(U1, U2).tolist(),
            random_mean=mean.tolist(), random_std=std.tolist(), expected=expected_random_grid(q1, q2, n).tolist()))
    return out
