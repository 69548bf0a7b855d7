"""The Fastfood transform: a D × d random projection P applied in O(D log d) time and O(D) memory,
never stored as a matrix (Le, Sarlós, Smola 2013; used for intrinsic dimension by Li et al. 2018 and
Aghajanyan et al. 2020).

P is a stack of b = ⌈D / n⌉ independent n × n blocks, n = the power of two ≥ d (z is zero-padded to n):

    P = c · [V_1; V_2; …; V_b] truncated to D rows,      V_j = H G_j Π_j H B_j

    H    (n, n)  the Walsh–Hadamard matrix (Sylvester order, entries ±1, HᵀH = n·I), never formed
    B_j  (n,)    random signs ±1 (diagonal)
    Π_j          a random permutation of n entries
    G_j  (n,)    standard Gaussians (diagonal)
    c            1 / (√n · ‖G‖_F), G all blocks' Gaussians together

Every column of the untruncated stack has norm exactly 1: H B_j e_i has ±1 entries, so after Π_j and
G_j its norm is ‖G_j‖ and after H it is √n·‖G_j‖; summed over blocks, n·‖G‖_F². Columns are orthogonal
in expectation (exactly when G is constant). Le et al. stack n × n blocks for a tall matrix as here;
Li et al.'s intrinsic-dimension code uses one block of n ≥ D instead. Blocks of the size of z cost
D·log₂ n instead of D·log₂ D, and need no padding of the whole parameter vector to a power of two.

`fwht` applies H along the last axis with dense Hadamard factors of at most 32 × 32 (H_n = H_a ⊗ H_b ⊗ …),
i.e. a few matrix products instead of log₂ n elementwise passes, which is much faster on a CPU. Its
backward is H itself (H is symmetric), so nothing is saved for the backward pass.
"""
from __future__ import annotations

import functools
import math

import torch
from torch import nn

from loralab.errors import LoraLabError

_MAX_FACTOR_LOG2 = 5   # dense Hadamard factors of at most 32 × 32


@functools.lru_cache(maxsize=64)
def _cached_hadamard(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return hadamard(n, dtype, device)


def hadamard(n: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """The n × n Walsh–Hadamard matrix in Sylvester order (H_1 = [1], H_2n = [[H, H], [H, −H]]); n a power of 2."""
    if n < 1 or n & (n - 1):
        raise LoraLabError(f"a Hadamard matrix needs a power-of-two size, got {n}")
    matrix = torch.ones(1, 1, dtype=dtype, device=device)
    while matrix.shape[0] < n:
        matrix = torch.cat([torch.cat([matrix, matrix], 1), torch.cat([matrix, -matrix], 1)], 0)
    return matrix


def _factor_sizes(n: int) -> list[int]:
    """Powers of two ≤ 32 whose product is n, as even as possible (e.g. 1024 -> [32, 32], 2048 -> [16, 16, 8])."""
    bits = n.bit_length() - 1
    count = max(1, -(-bits // _MAX_FACTOR_LOG2))
    return [2 ** (bits // count + (1 if i < bits % count else 0)) for i in range(count)]


def _fwht(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[-1]
    factors = _factor_sizes(n)
    y = x.reshape(-1, *factors)
    # H_n = H_{m1} ⊗ … ⊗ H_{mk} with index i = ((i1·m2 + i2)·m3 + …): multiply the last axis by its
    # factor, then rotate that axis to the front; after k rotations the axes are back in order.
    for _ in factors:
        y = torch.matmul(y, _cached_hadamard(y.shape[-1], y.dtype, y.device)).movedim(-1, 1)
    return y.reshape(x.shape)


class _WalshHadamard(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return _fwht(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _fwht(grad)   # d(Hx)/dx = H, and Hᵀ = H


def fwht(x: torch.Tensor) -> torch.Tensor:
    """H·x along the last axis (unnormalised Walsh–Hadamard transform, Sylvester order): x (..., n), n a
    power of two; returns (..., n). O(n log n)-like cost via ≤ 32 × 32 dense factors; differentiable."""
    n = x.shape[-1]
    if n < 1 or n & (n - 1):
        raise LoraLabError(f"the Walsh–Hadamard transform needs a power-of-two length, got {n}")
    return _WalshHadamard.apply(x)


def block_size(d: int) -> int:
    """n: the smallest power of two ≥ d."""
    return 1 << max(0, (d - 1).bit_length())


class FastfoodProjection(nn.Module):
    """z (d,) -> P·z (D,) with P the D × d Fastfood matrix described in this module's docstring.

    D: output size (number of parameter values); d: subspace dimension (1 ≤ d ≤ D); seed: the draw of
    B, Π, G (a torch.Generator of its own, so the global random state is untouched and the same seed
    gives the same P on every machine). The random tensors are non-persistent buffers: a state dict of a
    model holding this module does not carry them (they are rebuilt from the seed). Memory: about
    16 bytes per output value (signs, Gaussians, permutation indices).
    """

    def __init__(self, D: int, d: int, seed: int = 0) -> None:
        super().__init__()
        if not (isinstance(d, int) and isinstance(D, int) and 1 <= d <= D):
            raise LoraLabError(f"a Fastfood projection needs 1 ≤ d ≤ D, got d={d!r}, D={D!r}")
        self.D, self.d, self.seed = D, d, seed
        self.n = block_size(d)
        self.blocks = -(-D // self.n)
        generator = torch.Generator().manual_seed(seed)
        shape = (self.blocks, self.n)
        signs = torch.randint(0, 2, shape, generator=generator).float().mul_(2).sub_(1)
        gauss = torch.randn(shape, generator=generator)
        order = torch.argsort(torch.rand(shape, generator=generator), dim=1)   # a permutation per block
        self.register_buffer("signs", signs, persistent=False)
        self.register_buffer("gauss", gauss, persistent=False)
        self.register_buffer("order", order, persistent=False)
        self.scale = 1.0 / (math.sqrt(self.n) * float(gauss.norm()))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z (d,) -> (D,), differentiable in z."""
        if z.shape != (self.d,):
            raise LoraLabError(f"the projection takes a vector of {self.d} values, got shape {tuple(z.shape)}")
        padded = torch.nn.functional.pad(z, (0, self.n - self.d))         # (n,)
        x = fwht(self.signs * padded)                                     # H B_j z, all blocks: (b, n)
        x = torch.gather(x, 1, self.order) * self.gauss                   # G_j Π_j
        x = fwht(x)                                                       # H
        return x.reshape(-1)[:self.D] * self.scale

    def dense(self) -> torch.Tensor:
        """P as a dense (D, d) matrix (column i = P·e_i). For tests and small sizes only."""
        eye = torch.eye(self.d, dtype=self.gauss.dtype, device=self.gauss.device)
        with torch.no_grad():
            return torch.stack([self(eye[i]) for i in range(self.d)], dim=1)

    def extra_repr(self) -> str:
        return f"D={self.D}, d={self.d}, n={self.n}, blocks={self.blocks}, seed={self.seed}"


def fastfood_projection(D: int, d: int, seed: int = 0) -> FastfoodProjection:
    """A D × d Fastfood random projection (see FastfoodProjection); call it on z (d,) to get P·z (D,)."""
    return FastfoodProjection(D, d, seed)
