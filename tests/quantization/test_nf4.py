"""NF4: the table, nearest-value codes, the packed layout, bit-identity with bitsandbytes, double
quantization, exact memory, and the layer's forward/backward.

Tolerances: each value lands on its nearest NF4 value (code-exact); the dequantized weight is within half
the widest NF4 gap (0.139·absmax) per entry; on Gaussian weights the relative error is about 9 % (< 11 %);
the layer's products (bf16 compute) match fp32 products with the dequantized weight within 1 %.
"""
import pytest
import torch
import torch.nn.functional as F

from loralab.quantization import NF4Linear, NF4Scheme, get_scheme
from loralab.quantization.nf4 import (NF4_VALUES, dequantize_absmax, dequantize_nf4, nf4_table, quantize_absmax,
                                      quantize_nf4)


def rel(a, b) -> float:
    return float((a.detach().double() - b.detach().double()).norm() / b.detach().double().norm())


def gaussian(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_table_follows_from_its_definition():
    """Quantiles of N(0,1) at 8 (positive) and 7 (negative) probabilities evenly spaced from 0.9677083
    to 1/2, an exact 0, scaled to [-1, 1] (QLoRA; bitsandbytes' create_normal_map offset)."""
    offset = 0.9677083
    pos = torch.special.ndtri(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])
    neg = -torch.special.ndtri(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])
    values = torch.cat([neg, torch.zeros(1, dtype=torch.float64), pos]).sort().values
    torch.testing.assert_close(nf4_table().double(), values / values.max(), rtol=0, atol=2e-7)
    assert NF4_VALUES[0] == -1.0 and NF4_VALUES[7] == 0.0 and NF4_VALUES[-1] == 1.0


def test_codes_are_the_nearest_values_high_nibble_first():
    W = gaussian(12, 64)
    codes, absmax = quantize_nf4(W)
    assert codes.dtype == torch.uint8 and codes.numel() == W.numel() // 2 and absmax.numel() == 12
    torch.testing.assert_close(absmax, W.abs().amax(1))        # one 64-block per row here
    nearest = (W.reshape(-1, 1) / absmax.repeat_interleave(64)[:, None] - nf4_table()).abs().argmin(1)
    unpacked = torch.stack([codes >> 4, codes & 0xF], 1).reshape(-1)
    assert torch.equal(unpacked.long(), nearest)


def test_round_trip_error_bounds():
    W = gaussian(96, 128)
    codes, absmax = quantize_nf4(W)
    W_hat = dequantize_nf4(codes, absmax, W.shape)
    gap = max(b - a for a, b in zip(NF4_VALUES, NF4_VALUES[1:]))
    per_entry = (W_hat - W).abs().view(-1, 64) / absmax[:, None]
    assert float(per_entry.max()) <= gap / 2 + 1e-6
    assert 0.05 < rel(W_hat, W) < 0.11


@pytest.mark.parametrize("shape", [(3, 37), (5, 13)])
def test_odd_sizes_and_partial_last_block(shape):
    W = gaussian(*shape)
    codes, absmax = quantize_nf4(W)
    assert codes.numel() == -(-W.numel() // 2) and absmax.numel() == -(-W.numel() // 64)
    W_hat = dequantize_nf4(codes, absmax, W.shape)
    assert W_hat.shape == W.shape and rel(W_hat, W) < 0.12


def test_double_quantized_absmax_is_close_and_small():
    absmax = gaussian(1000).abs() + 0.5
    codes, scale, offset = quantize_absmax(absmax)
    assert codes.dtype == torch.int8 and scale.numel() == 4 and offset.numel() == 1
    back = dequantize_absmax(codes, scale, offset)
    assert float(((back - absmax).abs() - scale.repeat_interleave(256)[:1000] / 2).max()) <= 1e-6


@pytest.mark.parametrize("double_quant, bound", [(False, 0.1407), (True, 0.1291)])
def test_memory_is_counted_exactly(double_quant, bound):
    scheme = NF4Scheme(double_quant=double_quant)
    d, k = 384, 1536
    layer = scheme.quantize_weight(gaussian(d, k), None)
    assert layer.storage_bytes() == scheme.weight_bytes(d, k)
    n = d * k
    expected = n // 2 + (4 * n // 64 if not double_quant else n // 64 + 4 * (n // 64 // 256) + 4)
    assert layer.storage_bytes() == expected
    assert layer.storage_bytes() / (4 * n) <= bound < 0.15


@pytest.mark.parametrize("double_quant", [False, True])
def test_layer_products_are_those_of_the_dequantized_weight(double_quant):
    W, x, g = gaussian(48, 64) * 0.05, gaussian(2, 9, 64, seed=1), gaussian(2, 9, 48, seed=2)
    layer = get_scheme("nf4", double_quant=double_quant).quantize_weight(W, torch.zeros(48))
    W_hat = layer.dequantize()
    x = x.requires_grad_(True)
    y = layer(x)
    y.backward(g)
    assert y.dtype == torch.float32 and x.grad.dtype == torch.float32
    assert rel(y, F.linear(x, W_hat)) < 0.01 and rel(x.grad, g @ W_hat) < 0.01
    assert rel(W_hat, W) < 0.11


def test_block_size_is_validated():
    from loralab import LoraLabError

    with pytest.raises(LoraLabError, match="block_size"):
        NF4Scheme(block_size=63)


# ---------------------------------------------------------------------------------------------------
# bitsandbytes: same codes, same absmax, same dequantized values; its layers read exactly
# ---------------------------------------------------------------------------------------------------
def _bnb():
    return pytest.importorskip("bitsandbytes")


def test_codes_and_absmax_equal_bitsandbytes():
    bnbf = _bnb().functional
    W = gaussian(96, 128)
    ours_codes, ours_absmax = quantize_nf4(W)
    packed, state = bnbf.quantize_4bit(W, blocksize=64, quant_type="nf4", compress_statistics=False)
    assert torch.equal(ours_codes, packed.reshape(-1))
    assert torch.equal(ours_absmax, state.absmax)
    assert torch.equal(nf4_table(), bnbf.get_4bit_type("nf4", device="cpu"))
    assert torch.equal(dequantize_nf4(ours_codes, ours_absmax, W.shape), bnbf.dequantize_4bit(packed, state))


@pytest.mark.parametrize("compress_statistics", [False, True])
def test_reads_bitsandbytes_linear4bit(compress_statistics):
    bnb = _bnb()
    torch.manual_seed(0)
    linear = torch.nn.Linear(128, 96)
    layer4 = bnb.nn.Linear4bit(128, 96, quant_type="nf4", compress_statistics=compress_statistics,
                               compute_dtype=torch.float32)
    layer4.load_state_dict(linear.state_dict())
    layer4 = layer4.to("cpu")          # quantizes on the move, as bitsandbytes does
    ours = NF4Linear.from_bitsandbytes(layer4)
    expected = bnb.functional.dequantize_4bit(layer4.weight.data, layer4.weight.quant_state)
    torch.testing.assert_close(ours.dequantize(), expected, rtol=0, atol=0)
    x = gaussian(5, 128)
    assert rel(ours(x), F.linear(x, expected, linear.bias)) < 0.01


@pytest.mark.parametrize("shape", [(96, 128), (7, 64), (3, 1536)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_and_bitsandbytes_kernels_give_the_same_weight(shape, dtype):
    _bnb()
    codes, absmax = quantize_nf4(gaussian(*shape))
    assert torch.equal(dequantize_nf4(codes, absmax, shape, dtype=dtype, kernel="torch"),
                       dequantize_nf4(codes, absmax, shape, dtype=dtype, kernel="bitsandbytes"))


@pytest.mark.parametrize("shape", [(64, 48), (4, 96), (3, 37)])
def test_auto_kernel_is_right_where_blocks_straddle_rows(shape):
    """bitsandbytes 0.50.2's CPU kernel is wrong for these shapes; 'auto' must not use it there."""
    W = gaussian(*shape)
    codes, absmax = quantize_nf4(W)
    auto = dequantize_nf4(codes, absmax, shape, kernel="auto")
    assert torch.equal(auto, dequantize_nf4(codes, absmax, shape, kernel="torch"))
    assert rel(auto, W) < 0.12
