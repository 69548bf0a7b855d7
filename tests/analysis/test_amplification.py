import math

import pytest
import torch

from loralab.analysis.amplification import (amplification_of, compare_with_base, expected_random_projection_norm,
                                            projection_norm, random_orthonormal, top_r_projection_norm)
from loralab.analysis.deltas import make_delta
from loralab.errors import LoraLabError


def _known_w(d, k, sigmas, seed=0):
    """W = U·diag(σ)·Vᵀ with random orthonormal U (d, n), V (k, n)."""
    g = torch.Generator().manual_seed(seed)
    U = random_orthonormal(d, len(sigmas), g)
    V = random_orthonormal(k, len(sigmas), g)
    return U @ torch.diag(torch.tensor(sigmas, dtype=torch.float64)) @ V.T, U, V


def test_projection_onto_own_top_r_is_root_sum_of_top_sigma_squared():
    g = torch.Generator().manual_seed(1)
    W = torch.randn(30, 20, generator=g, dtype=torch.float64)
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    for r in (1, 3, 7):
        explicit = projection_norm(W, U[:, :r], Vh[:r])
        assert explicit == pytest.approx(math.sqrt(float((S[:r] ** 2).sum())), rel=1e-12)
        assert top_r_projection_norm(W, r) == pytest.approx(explicit, rel=1e-12)
    assert top_r_projection_norm(W, 20) == pytest.approx(float(torch.linalg.matrix_norm(W)), rel=1e-12)


def test_random_orthonormal_and_expected_random_projection():
    g = torch.Generator().manual_seed(2)
    Q = random_orthonormal(50, 4, g)
    torch.testing.assert_close(Q.T @ Q, torch.eye(4, dtype=torch.float64), atol=1e-12, rtol=0)
    W = torch.randn(50, 40, generator=g, dtype=torch.float64)
    w_fro = float(torch.linalg.matrix_norm(W))
    sq = [projection_norm(W, random_orthonormal(50, 4, g), random_orthonormal(40, 4, g).T) ** 2 for _ in range(300)]
    # E‖UᵀWV‖² = r²‖W‖²/(d·k) exactly; 300 draws put the mean within a few percent
    assert sum(sq) / len(sq) == pytest.approx(expected_random_projection_norm(w_fro, 50, 40, 4) ** 2, rel=0.08)


def test_amplification_on_a_constructed_case():
    # W has singular values 10, 5, 2, 0.5 along known directions. ΔW = 3·u4·v4ᵀ (rank 1, along W's
    # weakest direction): UᵀWVᵀ = σ_4 = 0.5, ‖ΔW‖_F = 3, so amplification = 6; W's own top-1 gives 10.
    d, k = 24, 18
    W, U, V = _known_w(d, k, [10.0, 5.0, 2.0, 0.5])
    B, A = 3.0 * U[:, 3:4], V[:, 3:4].T
    m = amplification_of(make_delta("m", A, B, scale=1.0), W, trials=50)
    assert m.r == 1
    assert m.delta_fro == pytest.approx(3.0)
    assert m.proj_delta == pytest.approx(0.5)
    assert m.amplification == pytest.approx(6.0)
    assert m.proj_w_top == pytest.approx(10.0)
    assert m.w_fro == pytest.approx(math.sqrt(100 + 25 + 4 + 0.25))
    assert m.proj_random_expected == pytest.approx(m.w_fro / math.sqrt(d * k))
    assert m.proj_random < m.proj_w_top


def test_amplification_of_rank_two_mixed_directions():
    # ΔW along (u1, v2) and (u2, v1) with σ 4 and 1: UᵀWVᵀ = [[0, 5], [10, 0]] up to signs/order ⇒ √125.
    W, U, V = _known_w(20, 16, [10.0, 5.0, 2.0], seed=3)
    B = torch.stack([4 * U[:, 0], U[:, 1]], 1)
    A = torch.stack([V[:, 1], V[:, 0]])
    m = amplification_of(make_delta("m", A, B, scale=1.0), W)
    assert m.proj_delta == pytest.approx(math.sqrt(125))
    assert m.amplification == pytest.approx(math.sqrt(17) / math.sqrt(125))


def test_compare_with_base_uses_slice_rows_and_checks_shapes():
    W_full, U, V = _known_w(12, 10, [4.0, 3.0, 2.0, 1.0], seed=4)
    rows = (4, 8)
    W_slice = W_full[4:8]
    u, s, vh = torch.linalg.svd(W_slice)
    delta = make_delta("attn[1]", vh[:1], u[:, :1] * 2.0, module="attn", rows=rows)
    (m,) = compare_with_base([delta], {"attn": W_full})
    assert m.proj_delta == pytest.approx(float(s[0]))
    with pytest.raises(LoraLabError, match="different base model"):
        amplification_of(make_delta("x", torch.randn(2, 9), torch.randn(12, 2)), W_full)
    with pytest.raises(LoraLabError, match="no base weight"):
        compare_with_base([make_delta("y", torch.randn(2, 10), torch.randn(12, 2))], {})


def test_zero_delta_amplification_is_undefined():
    W, _, _ = _known_w(8, 8, [1.0, 1.0])
    m = amplification_of(make_delta("z", torch.randn(2, 8), torch.zeros(8, 2)), W)
    assert m.delta_fro == 0 and math.isnan(m.amplification)
