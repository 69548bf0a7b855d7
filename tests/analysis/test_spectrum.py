import math

import pytest
import torch

from loralab.analysis.deltas import make_delta
from loralab.analysis.spectrum import (effective_rank, lowrank_svd, numerical_rank, spectrum_of, stable_rank)


@pytest.mark.parametrize("d,k,r", [(48, 32, 4), (32, 48, 8), (20, 20, 20), (6, 40, 8)])
def test_qr_path_matches_dense_svdvals(d, k, r):
    g = torch.Generator().manual_seed(d * 1000 + k + r)
    B = torch.randn(d, r, generator=g, dtype=torch.float64)
    A = torch.randn(r, k, generator=g, dtype=torch.float64)
    scale = 2.5
    svd = lowrank_svd(B, A, scale)
    dense = scale * B @ A
    expected = torch.linalg.svdvals(dense)[: min(r, d, k)]
    torch.testing.assert_close(svd.S, expected, rtol=1e-10, atol=1e-10)
    # The lifted singular vectors are orthonormal and rebuild ΔW exactly.
    q = svd.S.numel()
    torch.testing.assert_close(svd.U.T @ svd.U, torch.eye(q, dtype=torch.float64), atol=1e-10, rtol=0)
    torch.testing.assert_close(svd.Vh @ svd.Vh.T, torch.eye(q, dtype=torch.float64), atol=1e-10, rtol=0)
    torch.testing.assert_close(svd.U @ torch.diag(svd.S) @ svd.Vh, dense, atol=1e-10, rtol=0)


def test_qr_path_on_rank_deficient_float32_factors():
    g = torch.Generator().manual_seed(3)
    B = torch.randn(40, 8, generator=g)
    A = torch.randn(8, 30, generator=g)
    B[:, 5:] = 0                       # only 5 directions are used
    svd = lowrank_svd(B, A, 0.5)
    dense = 0.5 * B.double() @ A.double()
    torch.testing.assert_close(svd.S, torch.linalg.svdvals(dense)[:8], atol=1e-9, rtol=1e-7)
    assert numerical_rank(svd.S, (40, 30)) == 5


def test_effective_rank_of_known_spectra():
    assert effective_rank(torch.ones(7)) == pytest.approx(7.0)
    assert effective_rank(torch.tensor([3.0, 0.0, 0.0])) == pytest.approx(1.0)
    assert effective_rank(torch.tensor([2.0, 2.0, 0.0, 0.0])) == pytest.approx(2.0)
    # p = (1/2, 1/4, 1/4): H = 1.5·ln 2, so exp(H) = 2^1.5
    assert effective_rank(torch.tensor([2.0, 1.0, 1.0])) == pytest.approx(2 ** 1.5)
    # scale-invariant, and zero for the zero matrix (an untrained adapter)
    assert effective_rank(torch.tensor([20.0, 10.0, 10.0])) == pytest.approx(2 ** 1.5)
    assert effective_rank(torch.zeros(4)) == 0.0


def test_stable_rank_of_known_spectra():
    assert stable_rank(torch.ones(5)) == pytest.approx(5.0)
    assert stable_rank(torch.tensor([2.0, 1.0])) == pytest.approx(5 / 4)
    assert stable_rank(torch.tensor([1.0, 0.0, 0.0])) == pytest.approx(1.0)
    assert stable_rank(torch.zeros(3)) == 0.0
    # stable rank ≤ effective rank for the same spectrum (σ² weights the head more)
    s = torch.tensor([4.0, 2.0, 1.0, 0.5])
    assert stable_rank(s) < effective_rank(s)


def test_spectrum_of_a_constructed_delta():
    # ΔW = s·B·A with orthonormal factors and known singular values 3, 2, 1 (×scale 2)
    g = torch.Generator().manual_seed(0)
    Qb, _ = torch.linalg.qr(torch.randn(16, 3, generator=g, dtype=torch.float64))
    Qa, _ = torch.linalg.qr(torch.randn(24, 3, generator=g, dtype=torch.float64))
    B = Qb @ torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64))
    spec = spectrum_of(make_delta("layer.q", Qa.T, B, scale=2.0))
    assert spec.singular_values == pytest.approx([6.0, 4.0, 2.0])
    assert spec.frobenius == pytest.approx(math.sqrt(36 + 16 + 4))
    assert spec.spectral == pytest.approx(6.0)
    assert spec.stable_rank == pytest.approx(56 / 36)
    assert spec.effective_rank == pytest.approx(math.exp(-sum(p * math.log(p) for p in (0.5, 1 / 3, 1 / 6))))
    assert spec.energy_top1 == pytest.approx(36 / 56)
    assert (spec.d_out, spec.d_in, spec.r, spec.numerical_rank) == (16, 24, 3, 3)


def test_zero_delta_has_zero_ranks():
    spec = spectrum_of(make_delta("m", torch.randn(4, 10), torch.zeros(12, 4), scale=2.0))
    assert spec.frobenius == 0 and spec.effective_rank == 0 and spec.stable_rank == 0 and spec.numerical_rank == 0


def test_energy_rank_of_known_spectra():
    from loralab.analysis.spectrum import energy_rank

    # σ² = 9, 4, 1 (total 14): the top 1 holds 64 %, the top 2 93 %.
    s = torch.tensor([1.0, 3.0, 2.0])                # order does not matter
    assert energy_rank(s, 0.5) == 1
    assert energy_rank(s, 0.9) == 2
    assert energy_rank(s, 1.0) == 3
    assert energy_rank(torch.ones(10), 0.9) == 9      # flat spectrum: 9 of 10 equal directions
    assert energy_rank(torch.zeros(4)) == 0
