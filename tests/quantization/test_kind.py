"""The layer kind for quantized bases: LoRA sees a Linear with W0 = the dequantized weight, adapters stay
fp32, DoRA works on top, and an in-place merge is refused with the way to merge instead."""
import pytest
import torch

import loralab
from loralab.core.kinds import kind_of
from loralab.quantization import QuantizedLinear, dequantize_model, quantize
from loralab.quantization.kind import QuantizedLinearKind
from loralab.testing import model_output, tiny_inputs, tiny_model


def test_kind_is_a_linear_view_of_the_dequantized_weight():
    layer = quantize(tiny_model("llama"), "nf4").model.layers[0].mlp.down_proj
    kind = kind_of(layer)
    assert isinstance(layer, QuantizedLinear) and isinstance(kind, QuantizedLinearKind)
    assert kind.name == "linear" and kind.shape(layer) == (32, 48)
    assert torch.equal(kind.weight_matrix(layer), layer.dequantize())
    assert kind.weight_matrix(layer).dtype == torch.float32


def test_all_linear_selects_the_same_layers_quantized_or_not():
    config = loralab.LoraConfig(r=2, targets="all-linear")
    plain = loralab.plan_injection(tiny_model("bert"), config)
    quantized = loralab.plan_injection(quantize(tiny_model("bert"), "int8"), config)
    assert [(p.name, p.d_out, p.d_in) for p in plain] == [(p.name, p.d_out, p.d_in) for p in quantized]


def test_adapters_are_fp32_on_a_bf16_base():
    model = loralab.inject(quantize(tiny_model("bert"), "bf16"), loralab.LoraConfig(r=2, targets="all-linear"))
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}


def test_in_place_merge_is_refused_with_the_way_out():
    model = loralab.inject(quantize(tiny_model("bert"), "nf4"), loralab.LoraConfig(r=2))
    with pytest.raises(loralab.LoraLabError, match="merge_into_quantized"):
        loralab.merge(model)
    assert not loralab.is_merged(model)
    with pytest.raises(loralab.LoraLabError, match="PiSSA"):
        loralab.inject(quantize(tiny_model("bert"), "nf4"), loralab.LoraConfig(r=2, init="pissa"))


def test_dora_on_a_quantized_base_equals_dora_on_its_dequantized_weights():
    config = loralab.LoraConfig(r=2, dora=True, targets=["query", "value"])
    quantized = quantize(tiny_model("bert"), "nf4", compute_dtype="fp32")
    torch.manual_seed(0)
    loralab.inject(quantized, config)
    dense = dequantize_model(quantize(tiny_model("bert"), "nf4", compute_dtype="fp32"))
    torch.manual_seed(0)
    loralab.inject(dense, config)
    x = tiny_inputs(dense)
    torch.testing.assert_close(model_output(quantized, x), model_output(dense, x), rtol=1e-5, atol=1e-6)
