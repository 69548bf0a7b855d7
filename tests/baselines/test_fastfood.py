"""The Fastfood projection against explicit dense matrices built independently of the implementation:
the Walsh–Hadamard transform, P = c·[H G_j Π_j H B_j]_j, unit-norm columns, exact orthogonality when G is
constant, near-orthogonality otherwise, determinism by seed, and gradients."""
import math

import pytest
import torch

from loralab import LoraLabError
from loralab.baselines.fastfood import FastfoodProjection, block_size, fastfood_projection, fwht, hadamard


def sylvester_entry_matrix(n: int) -> torch.Tensor:
    """H[i, j] = (−1)^popcount(i AND j): the Sylvester Hadamard matrix from its closed form."""
    idx = torch.arange(n)
    bits = (idx[:, None] & idx[None, :])
    parity = torch.zeros(n, n, dtype=torch.long)
    while bits.any():
        parity ^= bits & 1
        bits = bits >> 1
    return (1 - 2 * parity).to(torch.float64)


@pytest.mark.parametrize("n", [1, 2, 4, 32, 64, 512, 2048])
def test_hadamard_matches_closed_form(n):
    H = sylvester_entry_matrix(n)
    assert torch.equal(hadamard(n, torch.float64), H)
    assert torch.equal(H @ H.T, n * torch.eye(n, dtype=torch.float64))


@pytest.mark.parametrize("n", [1, 2, 8, 64, 1024, 2048, 4096])
def test_fwht_equals_dense_product(n):
    x = torch.randn(3, 5, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    expected = x @ sylvester_entry_matrix(n)   # H is symmetric: (H x) for each row = x @ H
    assert torch.allclose(fwht(x), expected, rtol=1e-12, atol=1e-9)
    # H·H = n·I: applying it twice returns n·x
    assert torch.allclose(fwht(fwht(x)), n * x, rtol=1e-12, atol=1e-9)


def test_fwht_backward_is_the_transform():
    x = torch.randn(4, 16, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(4, 16, dtype=torch.float64)
    (fwht(x) * weights).sum().backward()
    assert torch.allclose(x.grad, weights @ sylvester_entry_matrix(16))
    assert torch.autograd.gradcheck(fwht, (torch.randn(2, 8, dtype=torch.float64, requires_grad=True),))


def test_fwht_rejects_other_lengths():
    with pytest.raises(LoraLabError, match="power-of-two"):
        fwht(torch.zeros(3, 12))


def explicit_matrix(proj: FastfoodProjection) -> torch.Tensor:
    """P built block by block from the projection's random draws with dense matrices."""
    n, H = proj.n, sylvester_entry_matrix(proj.n)
    blocks = []
    for j in range(proj.blocks):
        B = torch.diag(proj.signs[j].double())
        Pi = torch.zeros(n, n, dtype=torch.float64)
        Pi[torch.arange(n), proj.order[j]] = 1.0         # (Π x)_i = x_order[i]
        G = torch.diag(proj.gauss[j].double())
        blocks.append(H @ G @ Pi @ H @ B)
    stacked = torch.cat(blocks, 0)[:proj.D, :proj.d]      # z is zero-padded to n: only d columns matter
    scale = 1.0 / (math.sqrt(n) * float(proj.gauss.double().norm()))
    return stacked * scale


@pytest.mark.parametrize("D,d", [(40, 5), (64, 16), (100, 1), (300, 37), (50, 50)])
def test_projection_equals_explicit_dense_matrix(D, d):
    proj = fastfood_projection(D, d, seed=3)
    assert proj.n == block_size(d) and proj.blocks == math.ceil(D / proj.n)
    P = explicit_matrix(proj)
    assert torch.allclose(proj.dense().double(), P, rtol=1e-5, atol=1e-6)
    z = torch.randn(d)
    assert torch.allclose(proj(z).double(), P @ z.double(), rtol=1e-4, atol=1e-5)


def test_columns_have_unit_norm_when_blocks_fill_D():
    proj = FastfoodProjection(8 * 64, 50, seed=1)   # n = 64, 8 full blocks: no truncated rows
    norms = proj.dense().double().norm(dim=0)
    assert torch.allclose(norms, torch.ones(50, dtype=torch.float64), atol=1e-5)


def test_columns_are_orthonormal_when_gaussians_are_constant():
    proj = FastfoodProjection(4 * 32, 32, seed=2)
    proj.gauss.fill_(1.0)   # V_j = H Π_j H B_j is then √n·n^{-1/2}-scaled orthogonal: PᵀP = I exactly
    proj.scale = 1.0 / (math.sqrt(proj.n) * math.sqrt(proj.gauss.numel()))
    P = proj.dense().double()
    assert torch.allclose(P.T @ P, torch.eye(32, dtype=torch.float64), atol=1e-5)


def test_random_columns_are_nearly_orthogonal():
    P = FastfoodProjection(2 ** 15, 16, seed=0).dense().double()
    gram = P.T @ P
    off = gram - torch.diag(torch.diag(gram))
    assert off.abs().max() < 0.05   # ~1/√(blocks) = 1/√2048 ≈ 0.02 typical


def test_zero_maps_to_zero_and_seed_is_deterministic():
    state = torch.get_rng_state()
    a, b = FastfoodProjection(1000, 20, seed=7), FastfoodProjection(1000, 20, seed=7)
    c = FastfoodProjection(1000, 20, seed=8)
    assert torch.equal(torch.get_rng_state(), state)   # its own generator: the global stream is untouched
    assert torch.equal(a(torch.zeros(20)), torch.zeros(1000))
    z = torch.randn(20)
    assert torch.equal(a(z), b(z))
    assert not torch.allclose(a(z), c(z))
    assert not any(k in a.state_dict() for k in ("signs", "gauss", "order"))   # rebuilt from the seed


def test_gradient_is_the_transpose():
    proj = FastfoodProjection(200, 9, seed=4)
    z = torch.zeros(9, requires_grad=True)
    g = torch.randn(200)
    (proj(z) * g).sum().backward()
    assert torch.allclose(z.grad.double(), proj.dense().double().T @ g.double(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("D,d", [(10, 0), (10, 11), (10, 2.5)])
def test_invalid_sizes(D, d):
    with pytest.raises(LoraLabError, match="1 ≤ d ≤ D"):
        FastfoodProjection(D, d)
