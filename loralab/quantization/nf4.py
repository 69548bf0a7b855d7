"""nf4: QLoRA's 4-bit NormalFloat weights (Dettmers et al. 2023, arXiv 2305.14314), bitsandbytes' layout.

The weight is read row-major as one flat vector and cut into blocks of 64 values. Each block keeps its
absmax (fp32) and each value the index (0-15) of the nearest NF4 value to w / absmax (ties go to the lower
one); two indices per byte, the first in the high nibble. Codes and absmax are bit-identical to
bitsandbytes' `quantize_4bit(..., quant_type="nf4")` (tested when bitsandbytes is installed).

Double quantization (optional, as in QLoRA) stores the absmax values themselves in 8 bits: their mean is
kept as an fp32 offset, and (absmax - mean) is quantized in blocks of 256 to symmetric linear int8 with an
fp32 scale per block. (bitsandbytes uses its 8-bit dynamic-tree code there instead; same memory, so the
nested part differs from its files; `from_bitsandbytes` reads both.)

Memory per weight: 4 bits + 32/64 for absmax = 4.5 bits (14.1 % of fp32); with double quantization
4 + 8/64 + 32/(64·256) = 4.127 bits (12.9 %), plus 4 bytes of offset per layer.

Products: the layer dequantizes to compute_dtype (bf16 where native) and multiplies; the backward
dequantizes again (see `DequantizingLinear`). NF4's own error is a few % of each weight (about 9-10 %
relative Frobenius error on Gaussian weights), so bf16 rounding (2^-9) adds nothing visible.
"""
from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from loralab.errors import LoraLabError, choose
from loralab.quantization.base import (DequantizingLinear, QuantScheme, check_compute_dtype, register_scheme,
                                       resolve_compute_dtype)

# The 16 NF4 values as bitsandbytes stores them (fp32): quantiles of N(0, 1) at probabilities spaced
# evenly from 1 - 0.9677083 to 0.9677083 (8 positive, 7 negative, an exact 0), normalised to [-1, 1].
# tests/quantization/test_nf4.py re-derives them from that definition and compares with bitsandbytes.
NF4_VALUES = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)
NESTED_BLOCK = 256       # absmax values per block in double quantization (QLoRA's choice)
NESTED_QMAX = 127
KERNELS = ("auto", "torch", "bitsandbytes")


def nf4_table(device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.tensor(NF4_VALUES, dtype=torch.float32, device=device)


@functools.lru_cache(maxsize=8)
def _byte_table(device: torch.device) -> torch.Tensor:
    """(256, 2): the two NF4 values a packed byte holds (high nibble first), so one lookup decodes a byte."""
    values = nf4_table(device)
    byte = torch.arange(256, device=device)
    return torch.stack([values[byte >> 4], values[byte & 0xF]], dim=1)


def quantize_nf4(weight: torch.Tensor, block_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes uint8 (ceil(n/2),), absmax fp32 (ceil(n/block_size),)) for a weight of n values, row-major."""
    flat = weight.detach().reshape(-1).float()
    n = flat.numel()
    blocks = F.pad(flat, (0, -n % block_size)).view(-1, block_size)
    absmax = blocks.abs().amax(dim=1)
    scaled = (blocks * (1.0 / absmax.clamp(min=1e-38))[:, None]).clamp_(-1, 1).reshape(-1)[:n]
    values = nf4_table(flat.device)
    codes = torch.bucketize(F.pad(scaled, (0, n % 2)), (values[1:] + values[:-1]) / 2).to(torch.uint8)
    return (codes[0::2] << 4) | codes[1::2], absmax


def dequantize_nf4(codes: torch.Tensor, absmax: torch.Tensor, shape: tuple[int, ...], block_size: int = 64,
                   dtype: torch.dtype = torch.float32, kernel: str = "auto") -> torch.Tensor:
    """The weight of `shape` back from packed codes and per-block absmax: value·absmax in fp32, then `dtype`.

    kernel 'bitsandbytes' runs bitsandbytes' dequantize_4bit on these very buffers (the layout is its own;
    about 4x faster than the torch code on this CPU), 'torch' the code below, 'auto' the first where
    bitsandbytes is installed and right (see below). Both give the same values there (tested)."""
    op = _bitsandbytes_dequantize() if kernel != "torch" else None
    if kernel == "bitsandbytes" and op is None:
        raise LoraLabError("nf4 kernel 'bitsandbytes' needs the bitsandbytes package: pip install bitsandbytes")
    # 'auto' takes bitsandbytes' CPU kernel only where rows are whole blocks: in bitsandbytes 0.50.2 its
    # native CPU kernel returns wrong values when blocks straddle rows (e.g. (64, 48): 23 % round-trip
    # error instead of 9 %), and odd widths fall back to torch.compile'd code (250 ms a call here).
    if op is not None and (kernel == "bitsandbytes" or codes.device.type != "cpu" or shape[-1] % block_size == 0):
        return op(codes, absmax, block_size, "nf4", tuple(shape), dtype)
    n = math.prod(shape)
    values = _byte_table(codes.device).index_select(0, codes.int()).view(-1)
    if values.numel() != absmax.numel() * block_size:
        values = F.pad(values, (0, absmax.numel() * block_size - values.numel()))
    values = values.view(-1, block_size).mul_(absmax[:, None])
    return values.view(-1)[:n].view(shape).to(dtype)


@functools.cache
def _bitsandbytes_dequantize():
    """bitsandbytes' dequantize_4bit op, or None when the package is missing."""
    logger = logging.getLogger("bitsandbytes")
    level = logger.level
    logger.setLevel(logging.ERROR)       # its CPU backend warns at import about an optional hub kernel
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return None
    finally:
        logger.setLevel(level)
    return torch.ops.bitsandbytes.dequantize_4bit.default


def quantize_absmax(absmax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Double quantization: (codes int8 (m,), scale fp32 (ceil(m/256),), offset fp32 ()) such that
    absmax ≈ codes·scale[block] + offset."""
    offset = absmax.mean()
    centred = F.pad(absmax - offset, (0, -absmax.numel() % NESTED_BLOCK)).view(-1, NESTED_BLOCK)
    scale = centred.abs().amax(dim=1) / NESTED_QMAX
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round(centred / scale[:, None]).clamp_(-NESTED_QMAX, NESTED_QMAX).to(torch.int8)
    return codes.view(-1)[: absmax.numel()].clone(), scale, offset


def dequantize_absmax(codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    padded = F.pad(codes.float(), (0, -codes.numel() % NESTED_BLOCK)).view(-1, NESTED_BLOCK)
    return (padded * scale[:, None]).view(-1)[: codes.numel()] + offset


@register_scheme
@dataclass(frozen=True)
class NF4Scheme(QuantScheme):
    """NF4 with per-block absmax (block_size values per block), optionally double-quantized absmax;
    products in compute_dtype ('auto' = bf16 where native, else fp32); kernel: who dequantizes
    ('auto' = bitsandbytes where installed, else torch)."""
    name: ClassVar[str] = "nf4"
    block_size: int = 64
    double_quant: bool = False
    compute_dtype: str = "auto"
    kernel: str = "auto"

    def __post_init__(self):
        check_compute_dtype(self.compute_dtype)
        choose(self.kernel, KERNELS, "nf4 kernel")
        if self.block_size < 2 or self.block_size % 2:
            raise LoraLabError(f"nf4 block_size must be an even number ≥ 2 (QLoRA uses 64), got {self.block_size}")

    def quantize_weight(self, weight: torch.Tensor, bias: torch.Tensor | None) -> "NF4Linear":
        codes, absmax = quantize_nf4(weight, self.block_size)
        return NF4Linear(codes, absmax, tuple(weight.shape), bias, self)

    def weight_bytes(self, d_out: int, d_in: int) -> int:
        n = d_out * d_in
        blocks = -(-n // self.block_size)
        if not self.double_quant:
            return -(-n // 2) + 4 * blocks
        return -(-n // 2) + blocks + 4 * -(-blocks // NESTED_BLOCK) + 4

    def bitsandbytes_options(self) -> dict[str, Any]:
        """bitsandbytes' NF4 (its codes and block absmax are this scheme's, nf4.py)."""
        return {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": self.double_quant}


class NF4Linear(DequantizingLinear):
    """NF4 weights: `codes` (ceil(n/2),) uint8 and `absmax` (blocks,) fp32, or with double quantization
    `absmax_codes` int8, `absmax_scale` fp32 and `absmax_offset` fp32 in its place."""

    def __init__(self, codes: torch.Tensor, absmax: torch.Tensor, shape: tuple[int, int],
                 bias: torch.Tensor | None, scheme: NF4Scheme):
        super().__init__(shape[1], shape[0], bias, scheme)
        self.block_size = scheme.block_size
        self.register_buffer("codes", codes)
        if scheme.double_quant:
            for name, value in zip(("absmax_codes", "absmax_scale", "absmax_offset"), quantize_absmax(absmax)):
                self.register_buffer(name, value)
        else:
            self.register_buffer("absmax", absmax)
        self.compute_dtype = resolve_compute_dtype(scheme.compute_dtype, codes.device)

    def block_absmax(self) -> torch.Tensor:
        """Each block's absmax (fp32), decoded from the double quantization when used."""
        if self.scheme.double_quant:
            return dequantize_absmax(self.absmax_codes, self.absmax_scale, self.absmax_offset)
        return self.absmax

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_nf4(self.codes, self.block_absmax(), (self.out_features, self.in_features),
                              self.block_size, dtype, self.scheme.kernel)

    def storage_bytes(self) -> int:
        return sum(b.nbytes for b in self.buffers(recurse=False))

    @classmethod
    def from_bitsandbytes(cls, layer, double_quant: bool = False) -> "NF4Linear":
        """An NF4Linear holding exactly the codes of a bitsandbytes `Linear4bit` (quant_type 'nf4'); its
        absmax is decoded to fp32 first (bitsandbytes' own nested format included)."""
        import bitsandbytes.functional as bnbf

        state = layer.weight.quant_state
        if state.quant_type != "nf4":
            raise LoraLabError(f"bitsandbytes layer holds {state.quant_type!r}, not 'nf4'")
        absmax = state.absmax
        if state.nested:
            absmax = bnbf.dequantize_blockwise(state.absmax, state.state2) + state.offset
        scheme = NF4Scheme(block_size=state.blocksize, double_quant=double_quant)
        codes = layer.weight.data.reshape(-1).view(torch.uint8).clone()
        return cls(codes, absmax.float(), tuple(state.shape), layer.bias, scheme)
