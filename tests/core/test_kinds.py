"""loralab.core.kinds: each layer type's matrix view W0 (d, k), its storage layout, its forward pieces and its
PEFT layout, checked in numbers against the dense computation."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from loralab.core.kinds import (ConvKind, EmbeddingKind, LinearKind, TransposedLinearKind, in_dtype_of, kind_of,
                                weight_matrix)


def _seeded(module: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()
    return module


# name: (base layer, input, (d, k) of the matrix view)
CASES = {
    "linear": (lambda: nn.Linear(16, 12), lambda: torch.randn(2, 3, 16), (12, 16)),
    "gpt2-conv1d": (lambda: Conv1D(12, 16), lambda: torch.randn(2, 3, 16), (12, 16)),
    "embedding": (lambda: nn.Embedding(20, 12), lambda: torch.randint(0, 20, (2, 5)), (12, 20)),
    "conv1d": (lambda: nn.Conv1d(4, 6, 3, padding=1), lambda: torch.randn(2, 4, 9), (6, 12)),
    "conv2d": (lambda: nn.Conv2d(3, 5, (3, 2), stride=2, padding=1), lambda: torch.randn(2, 3, 8, 7), (5, 18)),
}
KIND_TYPES = {"linear": LinearKind, "gpt2-conv1d": TransposedLinearKind, "embedding": EmbeddingKind,
              "conv1d": ConvKind, "conv2d": ConvKind}


@pytest.mark.parametrize("case", list(CASES))
def test_matrix_view_shape_and_the_storage_layout_round_trip_exactly(case):
    make_base, _, (d, k) = CASES[case]
    base = _seeded(make_base())
    kind = kind_of(base)
    assert type(kind) is KIND_TYPES[case]
    W = kind.weight_matrix(base)
    assert kind.shape(base) == (d, k) and tuple(W.shape) == (d, k)
    assert torch.equal(kind.to_weight_layout(base, W), base.weight)           # bit for bit
    assert W.untyped_storage().data_ptr() == base.weight.untyped_storage().data_ptr()   # a view, never a copy


@pytest.mark.parametrize("case", list(CASES))
def test_lora_input_then_output_is_the_dense_layer_of_b_times_a(case):
    """B·(A·x) through the kind's pieces equals the base layer's own operation with weight B·A in its layout."""
    make_base, make_x, (d, k) = CASES[case]
    base = _seeded(make_base()).double()
    x = make_x()
    x = x.double() if x.is_floating_point() else x
    g = torch.Generator().manual_seed(1)
    A, B = torch.randn(3, k, generator=g, dtype=torch.float64), torch.randn(d, 3, generator=g, dtype=torch.float64)
    kind = kind_of(base)
    reference = _seeded(make_base()).double()
    with torch.no_grad():
        reference.weight.copy_(kind.to_weight_layout(reference, B @ A))
        if getattr(reference, "bias", None) is not None:
            reference.bias.zero_()
    got = kind.lora_output(base, kind.lora_input(base, x, A), B)
    torch.testing.assert_close(got, reference(x), rtol=1e-12, atol=1e-12)
    out = torch.randn(got.shape, generator=g, dtype=torch.float64)
    fused = kind.add_lora_output(base, out, kind.lora_input(base, x, A), B, 0.5)
    torch.testing.assert_close(fused, out + 0.5 * got, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", ["linear", "conv2d"])
def test_a_16_bit_output_with_fp32_factors_is_added_in_fp32_and_rounded_once(case):
    make_base, make_x, (d, k) = CASES[case]
    base = _seeded(make_base())
    x = make_x()
    g = torch.Generator().manual_seed(2)
    A, B = torch.randn(2, k, generator=g), torch.randn(d, 2, generator=g)
    kind = kind_of(base)
    a = kind.lora_input(base, x.bfloat16(), A)
    assert a.dtype == torch.float32                       # x is cast to the factors' dtype, not A to x's
    out = base(x).bfloat16()
    fused = kind.add_lora_output(base, out, a, B, 2.0)
    assert fused.dtype == torch.bfloat16
    assert torch.equal(fused, (out.float() + 2.0 * kind.lora_output(base, a, B)).bfloat16())


@pytest.mark.parametrize("case", list(CASES))
def test_peft_layout_round_trips_exactly_without_the_layer(case):
    make_base, _, (d, k) = CASES[case]
    base = make_base()
    kind = kind_of(base)
    A, B = torch.randn(3, k), torch.randn(d, 3)
    stored_A, stored_B = kind.to_peft(base, A, B)
    if isinstance(kind, ConvKind):    # PEFT's conv layout: an r-channel kernel and a 1×…×1 kernel
        assert stored_A.shape == (3, *base.weight.shape[1:])
        assert stored_B.shape == (d, 3, *([1] * (base.weight.dim() - 2)))
    else:
        assert stored_A.shape == (3, k) and stored_B.shape == (d, 3)
    back_A, back_B = kind.from_peft(stored_A, stored_B)
    assert torch.equal(back_A, A) and torch.equal(back_B, B)


def test_declared_capabilities():
    flags = {name: (kind.is_linear, kind.fan_in_fan_out, kind.input_dropout, kind.peft_names)
             for name, kind in (("linear", LinearKind()), ("conv1d-transposed", TransposedLinearKind()),
                                ("embedding", EmbeddingKind()), ("conv", ConvKind()))}
    assert flags == {
        "linear": (True, False, True, ("lora_A.weight", "lora_B.weight")),
        "conv1d-transposed": (True, True, True, ("lora_A.weight", "lora_B.weight")),
        "embedding": (False, False, False, ("lora_embedding_A", "lora_embedding_B")),
        "conv": (False, False, True, ("lora_A.weight", "lora_B.weight")),
    }


def test_lookup_follows_the_type_hierarchy_and_unknown_layers_have_none():
    class MyLinear(nn.Linear):
        pass

    assert type(kind_of(MyLinear(2, 3))) is LinearKind
    assert kind_of(nn.LayerNorm(4)) is None
    with pytest.raises(TypeError, match="^LayerNorm is not a layer type LoRA can adapt$"):
        weight_matrix(nn.LayerNorm(4))


@pytest.mark.parametrize("layer, message", [
    (nn.Conv2d(4, 4, 3, groups=2), "LoRA on grouped convolutions is not supported (groups must be 1)"),
    (nn.Conv1d(4, 4, 3, padding=1, padding_mode="reflect"),
     "LoRA on convolutions with padding_mode='reflect' is not supported"),
])
def test_convolutions_lora_cannot_express_are_refused(layer, message):
    with pytest.raises(ValueError) as raised:
        kind_of(layer).check(layer)
    assert str(raised.value) == message


def test_inputs_are_cast_to_the_factors_dtype_except_under_autocast():
    x, A = torch.randn(2, 4, dtype=torch.bfloat16), torch.randn(3, 4)
    assert in_dtype_of(x, A).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert in_dtype_of(x, A) is x
    assert F.linear(in_dtype_of(x, A), A).dtype == torch.float32
