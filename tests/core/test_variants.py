"""loralab.core.variants: plain LoRA and DoRA in numbers — merge adds exactly ΔW, DoRA's forward equals the
layer with its merged weight, DoRA's norm is a constant in backward, and the declared capabilities."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from loralab.core.kinds import kind_of
from loralab.core.lora import LoraFactors, LoraLayer
from loralab.core.variants import PLAIN, VARIANTS, DoRA, Variant


def adapted(base: nn.Module, variant: str, r: int = 3, alpha: float = 6.0, seed: int = 0):
    """`base` wrapped with one active adapter of `variant`, its factors (and DoRA's magnitude) random."""
    torch.manual_seed(seed)
    layer = LoraLayer(base, kind_of(base))
    d, k = layer.kind.shape(base)
    f = LoraFactors(d, k, r, alpha, variant=VARIANTS[variant])
    layer.add_adapter("a", f, "kaiming")
    layer.set_active(["a"])
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        f.B.copy_(torch.randn(f.B.shape, generator=g, dtype=f.B.dtype) * 0.3)
        if variant == "dora":
            f.magnitude.mul_(1 + torch.rand(f.magnitude.shape, generator=g, dtype=f.magnitude.dtype))
    return layer, f


def linear64(d_in: int = 10, d_out: int = 6) -> nn.Linear:
    torch.manual_seed(3)
    return nn.Linear(d_in, d_out).double()


def test_plain_merge_adds_exactly_delta_w_and_unmerge_takes_it_out():
    base = linear64()
    w0 = base.weight.detach().clone()
    layer, f = adapted(base, "lora")
    delta = f.delta_weight().detach()
    torch.testing.assert_close(delta, f.scale * f.B @ f.A, rtol=0, atol=0)
    layer.merge()
    torch.testing.assert_close(base.weight, w0 + delta, rtol=0, atol=1e-15)
    layer.unmerge()
    torch.testing.assert_close(base.weight, w0, rtol=0, atol=1e-15)


def test_dora_forward_equals_the_layer_with_its_merged_weight():
    base = linear64()
    x = torch.randn(5, 10, dtype=torch.float64)
    layer, f = adapted(base, "dora")
    unmerged = layer(x).detach()
    layer.merge()
    merged_weight = base.weight.detach().clone()
    torch.testing.assert_close(unmerged, F.linear(x, merged_weight, base.bias), rtol=1e-12, atol=1e-12)
    layer.unmerge()
    W0 = base.weight.detach()
    adapted_W = W0 + f.delta_weight().detach()
    expected = f.magnitude.detach()[:, None] * adapted_W / adapted_W.norm(dim=1, keepdim=True)
    torch.testing.assert_close(merged_weight, expected, rtol=1e-12, atol=1e-12)


def test_dora_starts_with_the_magnitude_of_w0_and_the_output_unchanged():
    base = linear64()
    x = torch.randn(4, 10, dtype=torch.float64)
    torch.manual_seed(0)
    layer = LoraLayer(base, kind_of(base))
    f = LoraFactors(6, 10, 2, 4.0, variant=VARIANTS["dora"])
    layer.add_adapter("a", f, "kaiming")
    layer.set_active(["a"])
    torch.testing.assert_close(f.magnitude.detach(), base.weight.detach().norm(dim=1), rtol=1e-15, atol=0)
    torch.testing.assert_close(layer(x), base(x), rtol=1e-14, atol=1e-14)


def test_dora_treats_the_norm_as_a_constant_in_backward():
    """The gradients are those of m ⊙ V / sg(‖V‖) (DoRA §4.3), not of m ⊙ V / ‖V‖."""
    base = linear64()
    x = torch.randn(4, 10, dtype=torch.float64)
    layer, f = adapted(base, "dora")
    layer(x).square().sum().backward()
    got = [f.A.grad.clone(), f.B.grad.clone(), f.magnitude.grad.clone()]
    A, B, m = (t.detach().clone().requires_grad_() for t in (f.A, f.B, f.magnitude))
    V = base.weight.detach() + f.scale * B @ A
    F.linear(x, m[:, None] * V / V.norm(dim=1, keepdim=True).detach(), base.bias).square().sum().backward()
    for mine, reference in zip(got, (A.grad, B.grad, m.grad)):
        torch.testing.assert_close(mine, reference, rtol=1e-12, atol=1e-12)
    V2 = base.weight.detach() + f.scale * B @ A
    A.grad = None
    F.linear(x, m[:, None] * V2 / V2.norm(dim=1, keepdim=True), base.bias).square().sum().backward()
    assert not torch.allclose(got[0], A.grad)        # the detach is what the test distinguishes


def test_dora_on_a_bf16_base_keeps_the_base_dtype():
    base = nn.Linear(8, 4).bfloat16()
    layer, _ = adapted(base, "dora")
    assert layer(torch.randn(3, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_dora_refuses_layers_that_are_not_linear():
    with pytest.raises(ValueError, match="^DoRA is supported on linear layers only, not on conv$"):
        adapted(nn.Conv1d(2, 3, 1), "dora")


def test_registered_variants_and_what_they_declare():
    assert {"lora", "dora"} <= set(VARIANTS) and PLAIN is VARIANTS["lora"] and type(PLAIN) is Variant
    declared = {name: (v.peft_flag, v.peft_keys, v.combinable, v.supports_slices, v.per_row,
                       v.extra_parameters(6, 10)) for name, v in VARIANTS.items() if name in ("lora", "dora")}
    assert declared == {
        "lora": (None, {}, True, True, True, {}),
        "dora": ("use_dora", {"magnitude": "lora_magnitude_vector"}, False, False, True, {"magnitude": (6,)}),
    }
    assert isinstance(VARIANTS["dora"], DoRA)
