"""int8 per-channel weights: rounding bound, the fbgemm forward and both backward paths against fp32,
exact memory, state dicts that move between the fbgemm and the plain layer.

Tolerances (relative Frobenius error vs fp32, Gaussian data, a 96->160 layer):
  weight rounding: |W - Ŵ| ≤ scale/2 = rowmax/254 per entry (exact);
  weight-only int8 output ≤ 1.5 % (0.7 % measured);
  fbgemm forward (inputs quantized to 8 bits with one scale per call) ≤ 3 % (≈ 1.3-2.2 % measured);
  input gradient through the transposed int8 copy ≤ 3 %; through the bf16 backward ≤ 1.5 %.
"""
import pytest
import torch
import torch.nn.functional as F

from loralab.quantization import FbgemmInt8Linear, Int8Linear, Int8Scheme, get_scheme
from loralab.quantization.int8 import dequantize_per_channel, fbgemm_available, quantize_per_channel

needs_fbgemm = pytest.mark.skipif(not fbgemm_available(), reason="fbgemm int8 kernels (x86 CPU) not available")

D, K = 160, 96


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).norm() / b.detach().double().norm())


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    return {"W": torch.randn(D, K, generator=g) * 0.05, "b": torch.randn(D, generator=g) * 0.01,
            "x": torch.randn(3, 40, K, generator=g), "g": torch.randn(3, 40, D, generator=g)}


def test_rounding_is_within_half_a_step_per_row(data):
    q, scale = quantize_per_channel(data["W"])
    assert q.dtype == torch.int8 and scale.shape == (D,)
    assert int(q.abs().max()) == 127                       # each row's largest entry maps to ±127
    err = (dequantize_per_channel(q, scale, torch.float32) - data["W"]).abs()
    assert bool((err <= scale[:, None] / 2 * (1 + 1e-6)).all())
    assert float((err / data["W"].abs().amax(1, keepdim=True)).max()) <= (1 + 1e-6) / 254


def test_zero_rows_stay_zero():
    W = torch.zeros(4, 8)
    W[1] = torch.arange(8.0)
    q, scale = quantize_per_channel(W)
    assert torch.equal(dequantize_per_channel(q, scale, torch.float32)[[0, 2, 3]], torch.zeros(3, 8))


def _layer_and_grad(layer, x, g):
    x = x.clone().requires_grad_(True)
    y = layer(x)
    y.backward(g)
    return y.detach(), x.grad


def test_plain_int8_layer_is_the_dequantized_product(data):
    layer = Int8Linear(*quantize_per_channel(data["W"]), data["b"], Int8Scheme(compute_dtype="fp32"))
    W_hat = layer.dequantize()
    y, gx = _layer_and_grad(layer, data["x"], data["g"])
    torch.testing.assert_close(y, F.linear(data["x"], W_hat, data["b"]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx, data["g"] @ W_hat, rtol=1e-5, atol=1e-6)
    assert rel(y, F.linear(data["x"], data["W"], data["b"])) < 0.015


@needs_fbgemm
@pytest.mark.parametrize("transposed_copy, grad_tol", [(True, 0.03), (False, 0.015)])
def test_fbgemm_forward_and_input_gradient_close_to_fp32(data, transposed_copy, grad_tol):
    layer = get_scheme("int8", transposed_copy=transposed_copy).quantize_weight(data["W"], data["b"])
    assert isinstance(layer, FbgemmInt8Linear)
    y, gx = _layer_and_grad(layer, data["x"], data["g"])
    assert rel(y, F.linear(data["x"], data["W"], data["b"])) < 0.03
    assert rel(gx, data["g"] @ data["W"]) < grad_tol


@needs_fbgemm
def test_backward_keeps_small_gradient_rows(data):
    """Rows of g 10^4 apart in size: each row of dL/dx must still be right (per-row scaling in backward)."""
    layer = get_scheme("int8").quantize_weight(data["W"], None)
    g = data["g"].clone()
    g[:, ::2] *= 1e-4
    _, gx = _layer_and_grad(layer, data["x"], g)
    ref = g @ data["W"]
    assert rel(gx[:, ::2], ref[:, ::2]) < 0.03


@needs_fbgemm
def test_bias_gradient_when_bias_trains(data):
    layer = get_scheme("int8").quantize_weight(data["W"], data["b"])
    layer.bias.requires_grad_(True)
    layer(data["x"]).backward(data["g"])
    torch.testing.assert_close(layer.bias.grad, data["g"].sum((0, 1)))


@needs_fbgemm
@pytest.mark.parametrize("transposed_copy", [True, False])
def test_memory_is_counted_exactly(data, transposed_copy):
    scheme = Int8Scheme(transposed_copy=transposed_copy)
    layer = scheme.quantize_weight(data["W"], data["b"])
    one = D * K + 4 * D
    expected = one + (K * D + 4 * K if transposed_copy else 0)
    assert layer.storage_bytes() == scheme.weight_bytes(D, K) == expected
    assert expected / (4 * D * K) < (0.55 if transposed_copy else 0.30)


@needs_fbgemm
def test_state_dict_moves_between_fbgemm_and_plain_layers(data):
    fast = get_scheme("int8").quantize_weight(data["W"], data["b"])
    state = fast.state_dict()
    assert set(state) == {"bias", "scale", "qweight"} and state["qweight"].dtype == torch.int8
    plain = Int8Linear(torch.zeros(D, K, dtype=torch.int8), torch.ones(D), torch.zeros(D), Int8Scheme())
    plain.load_state_dict(state)
    assert torch.equal(plain.dequantize(), fast.dequantize())
    again = get_scheme("int8").quantize_weight(torch.zeros(D, K), torch.zeros(D))
    again.load_state_dict(plain.state_dict())
    assert torch.equal(again.dequantize(), fast.dequantize())
    torch.testing.assert_close(again(data["x"]), fast(data["x"]))


def test_bad_options_are_one_line_errors():
    from loralab import LoraLabError

    with pytest.raises(LoraLabError, match="compute_dtype"):
        get_scheme("int8", compute_dtype="fp8")
    with pytest.raises(LoraLabError, match="int8"):
        get_scheme("int8", bits=4)
    with pytest.raises(LoraLabError, match="unknown quantization scheme 'int3'"):
        get_scheme("int3")
