"""LoRA on a 16-bit base (bf16, fp16) with fp32 factors: the factors stay fp32, every kind's forward keeps the
base's dtype and matches an fp32 reference (same rounded weights, same input) within a stated tolerance,
with and without autocast; gradients reach the factors in fp32; merge rounds once to the storage dtype.

Tolerances (u = the 16-bit dtype's unit roundoff, 2**-8 bf16, 2**-11 fp16), relative to max |reference|:
without autocast the base product is one 16-bit result and LoRA is added in fp32 and rounded once (2u allowed,
0.86u measured); under autocast every product, LoRA's too, is rounded to 16 bits (4u allowed, 1.77u measured).
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import loralab
from loralab.core.kinds import kind_of
from loralab.core.lora import LoraFactors, LoraLayer
from loralab.testing import randomize_trainable, tiny_inputs, tiny_model

UNIT = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}


def _layer(base: nn.Module, dtype: torch.dtype, seed: int = 0) -> LoraLayer:
    """`base` rounded to `dtype`, wrapped with one random fp32 adapter (B nonzero, so LoRA does something)."""
    torch.manual_seed(seed)
    base = base.to(dtype)
    layer = LoraLayer(base, kind_of(base))
    d, k = layer.kind.shape(base)
    layer.add_adapter("a", LoraFactors(d, k, r=4, alpha=8), "gaussian")
    layer.set_active(["a"])
    with torch.no_grad():
        layer.lora_adapters["a"].B.normal_(0, 0.5)
    return layer


def _reference(layer: LoraLayer) -> LoraLayer:
    """The same layer with every tensor in fp32 (the 16-bit weights' exact values, the same factors)."""
    return copy.deepcopy(layer).float()


def _layers():
    from transformers.pytorch_utils import Conv1D

    yield "linear", nn.Linear(24, 40), lambda: torch.randn(3, 5, 24)
    yield "conv1d-transposed", Conv1D(40, 24), lambda: torch.randn(3, 5, 24)
    yield "conv2d", nn.Conv2d(6, 8, 3, padding=1), lambda: torch.randn(2, 6, 7, 7)
    yield "embedding", nn.Embedding(50, 16), lambda: torch.randint(0, 50, (3, 5))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("autocast", [False, True], ids=["plain", "autocast"])
@pytest.mark.parametrize("name, base, make_input", list(_layers()), ids=[n for n, *_ in _layers()])
def test_every_kind_on_a_16_bit_base_matches_fp32_within_tolerance(name, base, make_input, dtype, autocast):
    if autocast and dtype == torch.float16 and name == "conv2d":
        pytest.skip("CPU autocast has no fp16 convolution")
    layer = _layer(base, dtype)
    assert all(p.dtype == torch.float32 for p in layer.lora_adapters.parameters())
    torch.manual_seed(1)
    x = make_input()
    x16 = x.to(dtype) if x.is_floating_point() else x
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=autocast):
        out = layer(x16)
    with torch.no_grad():
        reference = _reference(layer)(x16.float() if x.is_floating_point() else x)
    assert out.dtype == dtype
    bound = (4 if autocast else 2) * UNIT[dtype] * float(reference.abs().max())
    assert float((out.float() - reference).abs().max()) <= bound


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_gradients_reach_fp32_factors_close_to_fp32(dtype):
    layer = _layer(nn.Linear(24, 40), dtype)
    reference = _reference(layer)
    x = torch.randn(6, 24).to(dtype)
    layer(x).float().square().sum().backward()
    reference(x.float()).square().sum().backward()
    for (name, p), q in zip(layer.lora_adapters["a"].named_parameters(), reference.lora_adapters["a"].parameters()):
        assert p.grad is not None and p.grad.dtype == torch.float32, name
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=8 * UNIT[dtype] * float(q.grad.abs().max()))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_merge_rounds_once_to_the_storage_dtype(dtype):
    layer = _layer(nn.Linear(24, 40), dtype)
    W0 = layer.base_layer.weight.detach().float().clone()
    delta = layer.lora_adapters["a"].delta_weight().detach()
    layer.merge()
    merged = layer.base_layer.weight.detach()
    assert merged.dtype == dtype
    exact = W0 + delta
    assert torch.equal(merged, exact.to(dtype))                              # one rounding, from fp32
    assert bool(((merged.float() - exact).abs() <= UNIT[dtype] * exact.abs()).all())   # the docstring's bound
    layer.unmerge()
    back = layer.base_layer.weight.detach().float()
    assert bool(((back - W0).abs() <= UNIT[dtype] * (2 * W0.abs() + delta.abs())).all())


def test_factors_are_at_least_fp32():
    for base_dtype, factor_dtype in ((torch.bfloat16, torch.float32), (torch.float16, torch.float32),
                                     (torch.float32, torch.float32), (torch.float64, torch.float64)):
        layer = _layer(nn.Linear(8, 8), base_dtype)
        assert {p.dtype for p in layer.lora_adapters.parameters()} == {factor_dtype}


def test_dora_on_a_bf16_base_keeps_the_dtype_and_matches_fp32():
    model = tiny_model("llama").to(torch.bfloat16)
    loralab.inject(model, loralab.LoraConfig(r=4, variant="dora", targets=["q_proj", "v_proj"]))
    randomize_trainable(model, scale=0.1)
    reference = copy.deepcopy(model).float()
    inputs = tiny_inputs(model)
    with torch.no_grad():
        logits, expected = model(**inputs).logits, reference(**inputs).logits
    assert logits.dtype == torch.bfloat16
    assert float((logits.float() - expected).abs().max()) <= 0.05 * float(expected.abs().max())


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_whole_bf16_model_with_fp32_adapter_runs_without_autocast(family):
    model = tiny_model(family)
    loralab.inject(model, loralab.LoraConfig(r=4, alpha=8))
    randomize_trainable(model)
    reference = copy.deepcopy(model)
    for module in model.modules():                      # the frozen base in bf16, the adapter stays fp32
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                p.data = p.data.to(torch.bfloat16)
    inputs = tiny_inputs(model)
    logits = model(**inputs).logits
    logits.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    with torch.no_grad():
        expected = reference(**inputs).logits
    assert float((logits.float() - expected).abs().max()) <= 0.05 * float(expected.abs().max())
