"""loralab.core.inits: what each init draws (in numbers), that PiSSA's base_offset gives back the original W0
exactly, and how each recognises PEFT's `init_lora_weights`."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from loralab.core.inits import INITS, Gaussian, Kaiming, PiSSA
from loralab.core.kinds import kind_of
from loralab.core.lora import LoraFactors, LoraLayer


def initialised(base: nn.Module, init: str, r: int, alpha: float = 16.0, seed: int = 0):
    torch.manual_seed(seed)
    layer = LoraLayer(base, kind_of(base))
    d, k = layer.kind.shape(base)
    f = LoraFactors(d, k, r, alpha)
    layer.add_adapter("a", f, init)
    layer.set_active(["a"])
    return layer, f


def test_gaussian_draws_a_with_std_one_over_r_and_b_zero():
    _, f = initialised(nn.Linear(1024, 64), "gaussian", r=8)         # 8192 draws
    A = f.A.detach()
    assert abs(A.std().item() * 8 - 1) < 0.03                         # 3 standard errors of a std estimate
    assert abs(A.mean().item()) < 3 * (1 / 8) / math.sqrt(A.numel())
    assert torch.count_nonzero(f.B) == 0


def test_kaiming_draws_a_uniform_within_one_over_sqrt_k_and_b_zero():
    _, f = initialised(nn.Linear(1024, 64), "kaiming", r=8)
    A, bound = f.A.detach(), 1 / math.sqrt(1024)                      # kaiming_uniform(a=√5): bound = 1/√fan_in
    assert A.abs().max().item() <= bound and A.abs().max().item() > 0.99 * bound
    assert abs(A.std().item() / (bound / math.sqrt(3)) - 1) < 0.03  # a uniform's std: bound/√3
    assert torch.count_nonzero(f.B) == 0


def test_pissa_base_offset_restores_the_original_w0_exactly_even_after_training():
    torch.manual_seed(1)
    base = nn.Linear(12, 9).double()
    W0 = base.weight.detach().clone()
    layer, f = initialised(base, "pissa", r=4, alpha=8.0)
    A0, B0 = f.init_scheme.base_offset(f)
    torch.testing.assert_close(base.weight + f.scale * B0 @ A0, W0, rtol=0, atol=1e-14)
    with torch.no_grad():                          # training moves A and B; the offset stays the initial factors
        f.A.add_(0.1)
        f.B.mul_(2)
    A0_after, B0_after = f.init_scheme.base_offset(f)
    assert torch.equal(A0_after, A0) and torch.equal(B0_after, B0)
    torch.testing.assert_close(base.weight + f.scale * B0_after @ A0_after, W0, rtol=0, atol=1e-14)


def test_pissa_factors_are_the_principal_singular_directions_split_evenly():
    """B = U_r·√(S_r/s), A = √(S_r/s)·V_rᵀ: BᵀB = AAᵀ = diag(S_r)/s, and s·B·A is W0's best rank-r part."""
    torch.manual_seed(2)
    base = nn.Linear(12, 9).double()
    W0 = base.weight.detach().clone()
    _, f = initialised(base, "pissa", r=3, alpha=6.0)
    S = torch.linalg.svdvals(W0.float()).double()[:3]
    A, B = f.A.detach(), f.B.detach()
    torch.testing.assert_close(B.T @ B, torch.diag(S / f.scale), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(A @ A.T, torch.diag(S / f.scale), rtol=1e-5, atol=1e-6)
    rest = torch.linalg.svdvals(W0.float()).double()[3:]
    torch.testing.assert_close(torch.linalg.matrix_norm(base.weight.detach()), rest.norm(), rtol=1e-5, atol=1e-6)


def test_only_pissa_moves_w0_and_has_an_offset():
    for name, moves in (("kaiming", False), ("gaussian", False), ("pissa", True)):
        base = nn.Linear(8, 6)
        w0 = base.weight.detach().clone()
        _, f = initialised(base, name, r=2)
        assert INITS[name].changes_base_weight is moves and (INITS[name].base_offset(f) is not None) is moves
        assert torch.equal(base.weight, w0) is not moves


@pytest.mark.parametrize("init, value, accepted", [
    (Kaiming(), True, True), (Kaiming(), 1, False), (Kaiming(), "true", False), (Kaiming(), False, False),
    (Gaussian(), "gaussian", True), (Gaussian(), "Gaussian", True), (Gaussian(), True, False),
    (PiSSA(), "pissa", True), (PiSSA(), "pissa_niter_16", True), (PiSSA(), "pissa_niter_x", False),
    (PiSSA(), "olora", False),
])
def test_each_init_recognises_its_peft_spelling(init, value, accepted):
    assert init.accepts_peft(value) is accepted


def test_registered_inits_and_what_they_declare():
    declared = {name: (INITS[name].peft_value, INITS[name].supports_slices, INITS[name].changes_base_weight)
                for name in ("kaiming", "gaussian", "pissa")}
    assert declared == {"kaiming": (True, True, False), "gaussian": ("gaussian", True, False),
                        "pissa": ("pissa", False, True)}
