"""Merging LoRA into quantized bases: 'dequantize' keeps the merged weights in fp32 (exact), 'requantize'
quantizes them again and reports the added error, which must equal the error measured independently."""
import copy

import pytest
import torch
from torch import nn

import loralab
from loralab.quantization import QuantizedLinear, dequantize_model, merge_into_quantized, quantize
from loralab.testing import model_output, tiny_inputs, tiny_model


def lora_on_quantized(scheme, **options):
    model = quantize(tiny_model("llama"), scheme, **options)
    torch.manual_seed(0)
    loralab.inject(model, loralab.LoraConfig(r=4, alpha=8, targets="all-linear"))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".B"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def test_dequantize_mode_is_exact_and_leaves_a_plain_model():
    model = lora_on_quantized("nf4", compute_dtype="fp32")
    x = tiny_inputs(model)
    expected = model_output(model, x)
    report = merge_into_quantized(model, mode="dequantize")
    assert report.layers == 14 and report.max_abs_error == 0 and report.delta_rel_error == 0
    assert not list(loralab.lora_layers(model)) and not hasattr(model, "loralab_state")
    assert not any(isinstance(m, QuantizedLinear) for m in model.modules())
    torch.testing.assert_close(model_output(model, x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scheme", ["int8", "nf4"])
def test_requantize_mode_reports_the_error_it_adds(scheme):
    model = lora_on_quantized(scheme)
    exact = dequantize_model(copy.deepcopy(model))
    loralab.merge_and_unload(exact)                      # W0 + ΔW in fp32, the reference
    report = merge_into_quantized(model, mode="requantize")
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QuantizedLinear)}
    assert len(layers) == report.layers == 14
    errors = {n: layer.dequantize() - exact.get_submodule(n).weight for n, layer in layers.items()}
    err_sq = sum(float(e.double().square().sum()) for e in errors.values())
    weight_sq = sum(float(exact.get_submodule(n).weight.double().square().sum()) for n in layers)
    assert report.max_abs_error == pytest.approx(max(float(e.abs().max()) for e in errors.values()), rel=1e-6)
    assert report.rel_error == pytest.approx((err_sq / weight_sq) ** 0.5, rel=1e-6)
    assert 0 < report.rel_error < (0.01 if scheme == "int8" else 0.11)
    assert report.delta_rel_error > 0


def test_bad_mode_and_nothing_quantized_are_errors():
    with pytest.raises(loralab.LoraLabError, match="merge mode"):
        merge_into_quantized(lora_on_quantized("int8"), mode="round")
    plain = loralab.inject(tiny_model("bert"), loralab.LoraConfig(r=2))
    with pytest.raises(loralab.LoraLabError, match="no LoRA layer"):
        merge_into_quantized(plain)
    assert all(type(l.base_layer) is nn.Linear for _, l in loralab.lora_layers(plain))
