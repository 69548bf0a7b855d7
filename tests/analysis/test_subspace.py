import pytest
import torch

from loralab.analysis.deltas import make_delta
from loralab.analysis.subspace import (compare_adapters, expected_random_grid, expected_random_similarity, phi,
                                       random_similarity_baseline, right_singular_vectors, similarity_grid)
from loralab.errors import LoraLabError


def _orthonormal_rows(r, k, seed):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(k, r, generator=g, dtype=torch.float64))
    return Q.T


def test_identical_subspaces_give_one_everywhere():
    A = torch.randn(6, 40, generator=torch.Generator().manual_seed(1))
    U = right_singular_vectors(A)
    torch.testing.assert_close(similarity_grid(U, U), torch.ones(6, 6, dtype=torch.float64))
    # φ sees only the subspace: rescaling A, and mixing its rows inside the same span with the
    # same ordering of singular directions, changes nothing
    assert phi(A, -3.0 * A, 6, 6) == pytest.approx(1.0)
    assert phi(A, A, 2, 5) == pytest.approx(1.0)


def test_nested_subspaces():
    # A1's two directions are A2's 1st and 3rd of 5. φ = 1 wherever the smaller top subspace lies
    # inside the larger; only (i=2, j=2) differs: span(v1, v3) vs span(v1, v2) share one of two → 1/2.
    rows = _orthonormal_rows(5, 30, seed=2)
    A2 = torch.diag(torch.tensor([5.0, 4, 3, 2, 1], dtype=torch.float64)) @ rows
    A1 = torch.diag(torch.tensor([2.0, 1.0], dtype=torch.float64)) @ rows[[0, 2]]
    grid = similarity_grid(right_singular_vectors(A1), right_singular_vectors(A2))
    expected = torch.tensor([[1, 1, 1, 1, 1], [1, 0.5, 1, 1, 1]], dtype=torch.float64)
    torch.testing.assert_close(grid, expected, atol=1e-12, rtol=0)


def test_orthogonal_subspaces_give_zero():
    rows = _orthonormal_rows(8, 32, seed=3)
    A1, A2 = rows[:4] * 2.0, rows[4:]
    grid = similarity_grid(right_singular_vectors(A1), right_singular_vectors(A2))
    assert grid.abs().max() < 1e-12
    assert phi(A1, A2, 4, 4) == pytest.approx(0.0, abs=1e-12)


def test_grid_equals_definition_entry_by_entry():
    g = torch.Generator().manual_seed(4)
    A1, A2 = torch.randn(3, 20, generator=g), torch.randn(5, 20, generator=g)
    grid = similarity_grid(right_singular_vectors(A1), right_singular_vectors(A2))
    for i in range(1, 4):
        for j in range(1, 6):
            assert grid[i - 1, j - 1].item() == pytest.approx(phi(A1, A2, i, j), abs=1e-12)
    assert ((grid >= 0) & (grid <= 1 + 1e-12)).all()


def test_random_subspaces_match_expected_value():
    # E φ(i, j) = max(i, j)/k; 400 seeded draws of k = 64, r = 4 vs 8: the mean's standard error is
    # below 0.005 for every cell, so 0.02 is a > 4σ tolerance.
    k = 64
    mean, std = random_similarity_baseline(k, 4, 8, trials=400, generator=torch.Generator().manual_seed(0))
    expected = expected_random_grid(4, 8, k)
    assert (std / 20 < 0.005).all()
    torch.testing.assert_close(mean, expected, atol=0.02, rtol=0)
    assert expected_random_similarity(3, 7, 64) == pytest.approx(7 / 64)
    assert expected[2, 6].item() == pytest.approx(7 / 64)


def test_random_baseline_is_reproducible():
    a = random_similarity_baseline(16, 2, 3, trials=5, generator=torch.Generator().manual_seed(7))
    b = random_similarity_baseline(16, 2, 3, trials=5, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)


def test_compare_adapters_matches_shared_modules():
    g = torch.Generator().manual_seed(5)
    k, d = 24, 16
    A_small = torch.randn(2, k, generator=g)
    A_big = torch.cat([A_small * 10, torch.randn(6, k, generator=g) * 0.01])   # shares its top-2 directions
    first = [make_delta("l.q", A_small, torch.randn(d, 2, generator=g)),
             make_delta("l.v", torch.randn(2, k, generator=g), torch.randn(d, 2, generator=g))]
    second = [make_delta("l.q", A_big, torch.randn(d, 8, generator=g)),
              make_delta("other", torch.randn(8, k, generator=g), torch.randn(d, 8, generator=g))]
    sims = compare_adapters(first, second, trials=10)
    assert [s.name for s in sims] == ["l.q"]
    s = sims[0]
    assert (s.dim, s.r1, s.r2) == (k, 2, 8)
    assert s.phi[1][1] == pytest.approx(1.0, abs=1e-3)            # top-2 of both span the same plane
    assert s.expected[0][7] == pytest.approx(8 / k)
    assert len(s.random_mean) == 2 and len(s.random_mean[0]) == 8
    # B factor: output directions live in R^d
    assert compare_adapters(first, second, factor="B", trials=2)[0].dim == d
    with pytest.raises(LoraLabError, match="share no adapted module"):
        compare_adapters(first[1:], second[1:])
