"""The LoRA math: scale, init, forward formula, merge/unmerge exactness, PiSSA, DoRA, fused slices."""
import math

import pytest
import torch
from torch import nn

from loralab.core.inits import INITS
from loralab.core.kinds import kind_of
from loralab.core.lora import LoraFactors, LoraLayer, SlicedLoraFactors, lora_scale
from loralab.core.variants import VARIANTS

U = 2.0 ** -24   # fp32 unit roundoff


def make_layer(base: nn.Module, r=4, alpha=8.0, init="kaiming", variant="lora", slices=None, dropout=0.0, seed=0,
               widths=None):
    torch.manual_seed(seed)
    layer = LoraLayer(base, kind_of(base))
    d, k = layer.kind.shape(base)
    kw = dict(dropout=dropout, variant=VARIANTS[variant])
    f = SlicedLoraFactors(d, k, r, alpha, slices, widths, **kw) if slices else LoraFactors(d, k, r, alpha, **kw)
    layer.add_adapter("a", f, init)
    layer.set_active(["a"])
    return layer, f


def randomize(f: LoraFactors, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        f.A.copy_(torch.randn(f.A.shape, generator=g))
        f.B.copy_(torch.randn(f.B.shape, generator=g) * 0.1)


def test_scale_is_alpha_over_r_or_sqrt_r():
    assert lora_scale(8, 16) == 2.0
    assert lora_scale(4, 8, rslora=True) == 4.0
    assert lora_scale(64, 16, rslora=True) == 2.0


@pytest.mark.parametrize("init", ["kaiming", "gaussian"])
def test_init_b_zero_a_random_output_unchanged(init):
    base = nn.Linear(16, 12)
    x = torch.randn(5, 16)
    y0 = base(x)
    layer, f = make_layer(base, r=4, init=init)
    assert torch.count_nonzero(f.B) == 0 and torch.count_nonzero(f.A) == f.A.numel()
    assert torch.equal(layer(x), y0)
    if init == "kaiming":   # kaiming_uniform(a=√5) bound = 1/sqrt(fan_in)
        assert f.A.abs().max() <= 1 / math.sqrt(16)
    else:
        assert abs(f.A.std().item() - 1 / 4) < 0.06


def test_forward_is_w0x_plus_s_bax():
    base = nn.Linear(16, 12)
    layer, f = make_layer(base, r=4, alpha=8.0)
    randomize(f)
    x = torch.randn(3, 5, 16)
    expected = x @ base.weight.T + base.bias + 2.0 * (x @ f.A.T @ f.B.T)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(f.delta_weight(), 2.0 * f.B @ f.A)


def _conv1d_gpt2(k, d):
    from transformers.pytorch_utils import Conv1D
    layer = Conv1D(d, k)
    nn.init.normal_(layer.weight, std=0.2)
    nn.init.normal_(layer.bias, std=0.2)
    return layer


KIND_CASES = {
    "linear": (lambda: nn.Linear(16, 12), lambda: torch.randn(2, 3, 16)),
    "gpt2-conv1d": (lambda: _conv1d_gpt2(16, 12), lambda: torch.randn(2, 3, 16)),
    "embedding": (lambda: nn.Embedding(20, 12, padding_idx=0), lambda: torch.randint(0, 20, (2, 5))),
    "conv1d": (lambda: nn.Conv1d(4, 6, 3, padding=1), lambda: torch.randn(2, 4, 9)),
    "conv2d": (lambda: nn.Conv2d(3, 5, (3, 2), stride=2, padding=1), lambda: torch.randn(2, 3, 8, 7)),
}


@pytest.mark.parametrize("case", list(KIND_CASES))
def test_every_kind_unmerged_equals_merged_equals_dense_weight(case):
    make_base, make_x = KIND_CASES[case]
    torch.manual_seed(0)
    base = make_base()
    x = make_x()
    w0 = base.weight.detach().clone()
    layer, f = make_layer(base, r=3, alpha=6.0)
    randomize(f)
    y_unmerged = layer(x)
    # Reference: a copy of the base layer whose weight is W0 + ΔW in its own storage layout.
    reference = make_base()
    reference.load_state_dict(base.state_dict())
    with torch.no_grad():
        reference.weight.add_(layer.kind.to_weight_layout(reference, f.delta_weight()))
    torch.testing.assert_close(y_unmerged, reference(x), rtol=1e-5, atol=1e-5)
    layer.merge()
    torch.testing.assert_close(layer(x), y_unmerged, rtol=1e-5, atol=1e-5)
    layer.unmerge()
    torch.testing.assert_close(base.weight, w0, rtol=0, atol=4 * U * (w0.abs().max().item() + 1))


def test_merge_unmerge_cycles_stay_within_stated_bound():
    torch.manual_seed(0)
    base = nn.Linear(64, 48)
    w0 = base.weight.detach().clone()
    layer, f = make_layer(base, r=8, alpha=16.0)
    randomize(f)
    delta = f.delta_weight().detach().abs()
    n = 200
    for _ in range(n):
        layer.merge()
        layer.unmerge()
    bound = n * U * (2 * w0.abs() + delta)
    assert torch.all((base.weight - w0).abs() <= bound)


def test_merge_is_idempotent_and_refuses_nan():
    base = nn.Linear(8, 8)
    layer, f = make_layer(base)
    randomize(f)
    layer.merge()
    w = base.weight.detach().clone()
    layer.merge()
    assert torch.equal(base.weight, w) and layer.merged == ["a"]
    layer.unmerge()
    with torch.no_grad():
        f.B[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN/Inf"):
        layer.merge()
    assert layer.merged == []


def test_unmerge_can_keep_the_first_merged():
    base = nn.Linear(8, 8)
    w0 = base.weight.detach().clone()
    layer, f = make_layer(base)
    randomize(f)
    layer.add_adapter("b", LoraFactors(8, 8, 2, 2.0), "kaiming")
    randomize(layer.lora_adapters["b"], seed=2)
    layer.merge(["a"])
    w_a = base.weight.detach().clone()
    layer.merge(["b"])
    layer.unmerge(keep=1)
    assert layer.merged == ["a"]
    torch.testing.assert_close(base.weight, w_a, rtol=0, atol=1e-6)
    layer.unmerge()
    torch.testing.assert_close(base.weight, w0, rtol=0, atol=1e-6)


def test_only_factors_train_and_frozen_weight_is_unchanged_by_a_step():
    base = nn.Linear(8, 6)
    base.requires_grad_(False)
    w0 = base.weight.detach().clone()
    layer, f = make_layer(base)
    opt = torch.optim.AdamW([p for p in layer.parameters() if p.requires_grad], lr=0.1)
    loss = layer(torch.randn(4, 8)).pow(2).sum()
    loss.backward()
    opt.step()
    assert base.weight.grad is None and torch.equal(base.weight, w0)
    assert torch.count_nonzero(f.B) > 0     # B moved away from zero on the first step


def test_dropout_applies_to_lora_path_only():
    base = nn.Linear(8, 6)
    layer, f = make_layer(base, dropout=0.5)
    layer.train()
    x = torch.randn(4, 8)
    assert torch.equal(layer(x), base(x))     # B = 0: the frozen path saw the clean input
    randomize(f)
    layer.eval()
    assert torch.equal(layer(x), layer(x))


def test_sliced_factors_adapt_only_enabled_slices():
    base = nn.Linear(8, 12)                    # fused [q; k; v], 4 rows each
    layer, f = make_layer(base, r=2, alpha=2.0, slices=(True, False, True))
    assert f.A.shape == (4, 8) and f.B.shape == (8, 2)
    randomize(f)
    dw = f.delta_weight()
    assert torch.count_nonzero(dw[4:8]) == 0 and torch.count_nonzero(dw[:4]) > 0 and torch.count_nonzero(dw[8:]) > 0
    # Each slice is its own rank-2 update: q rows = B_q·A_q, v rows = B_v·A_v.
    torch.testing.assert_close(dw[:4], f.B[:4] @ f.A[:2])
    torch.testing.assert_close(dw[8:], f.B[4:] @ f.A[2:])
    x = torch.randn(3, 8)
    torch.testing.assert_close(layer(x), base(x) + x @ dw.T, rtol=1e-5, atol=1e-6)


def test_sliced_factors_with_unequal_widths():
    base = nn.Linear(8, 12)                    # grouped-query [q; k; v]: 8 query rows, 2 key, 2 value
    layer, f = make_layer(base, r=2, alpha=2.0, slices=(True, False, True), widths=(8, 2, 2))
    assert f.A.shape == (4, 8) and f.B.shape == (10, 2)
    randomize(f)
    dw = f.delta_weight()
    assert torch.count_nonzero(dw[8:10]) == 0
    torch.testing.assert_close(dw[:8], f.B[:8] @ f.A[:2])
    torch.testing.assert_close(dw[10:], f.B[8:] @ f.A[2:])
    assert torch.equal(f.stored_B(f.B_matrix()), f.B)         # the file layout's inverse is exact
    x = torch.randn(3, 8)
    torch.testing.assert_close(layer(x), base(x) + x @ dw.T, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"widths \[8, 2, 1\] do not add up to the layer's 12 outputs"):
        SlicedLoraFactors(12, 8, 2, 2.0, (True, False, True), (8, 2, 1))


@pytest.mark.parametrize("variant, init", [("dora", "kaiming"), ("lora", "pissa")])
def test_variants_and_inits_declare_whether_they_take_slices(variant, init):
    with pytest.raises(ValueError, match=f"the '{variant if variant != 'lora' else init}' .* does not support fused"):
        make_layer(nn.Linear(8, 12), r=2, slices=(True, False, True), variant=variant, init=init)


def test_failed_init_leaves_no_adapter_and_remove_adapter_restores_w0():
    base = nn.Linear(6, 5)
    w0 = base.weight.detach().clone()
    with pytest.raises(ValueError, match="PiSSA needs r <= min"):
        make_layer(base, r=6, init="pissa")
    assert torch.equal(base.weight, w0)
    layer, f = make_layer(base, r=3, init="pissa")
    assert not torch.equal(base.weight, w0)
    layer.remove_adapter("a")
    assert list(layer.lora_adapters) == [] and layer.active == []
    torch.testing.assert_close(base.weight, w0, rtol=0, atol=1e-6)


def test_pissa_starts_at_base_output_on_principal_directions():
    torch.manual_seed(0)
    base = nn.Linear(20, 16)
    x = torch.randn(4, 20)
    y0 = base(x).detach()
    W = base.weight.detach().clone()
    layer, f = make_layer(base, r=4, alpha=8.0, init="pissa")
    torch.testing.assert_close(layer(x), y0, rtol=1e-5, atol=1e-5)
    U_, S, Vh = torch.linalg.svd(W)
    top = (U_[:, :4] * S[:4]) @ Vh[:4]
    torch.testing.assert_close(f.delta_weight(), top, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(base.weight, W - top, rtol=1e-4, atol=1e-5)


def test_dora_init_forward_formula_and_merge():
    torch.manual_seed(0)
    base = nn.Linear(10, 6)
    x = torch.randn(4, 10)
    y0 = base(x).detach()
    w0 = base.weight.detach().clone()
    layer, f = make_layer(base, r=2, alpha=4.0, variant="dora")
    torch.testing.assert_close(layer(x), y0, rtol=1e-5, atol=1e-6)
    randomize(f)
    with torch.no_grad():
        f.magnitude.mul_(1.5)
    V = w0 + f.delta_weight()
    W_dora = f.magnitude[:, None] * V / V.norm(dim=1, keepdim=True)
    expected = x @ W_dora.T + base.bias
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    layer.merge()
    torch.testing.assert_close(base.weight, W_dora, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    layer.unmerge()
    torch.testing.assert_close(base.weight, w0, rtol=1e-5, atol=1e-6)


def test_dora_refuses_embeddings():
    with pytest.raises(ValueError, match="DoRA"):
        make_layer(nn.Embedding(10, 4), variant="dora")


def test_registered_inits():
    assert {"kaiming", "gaussian", "pissa"} <= set(INITS)
