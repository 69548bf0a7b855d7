"""The intrinsic-subspace method on tiny random models: only z trains, z = 0 is the base model exactly,
the forward equals a model whose weights were set to θ0 + P·z by hand, and z's gradient is Pᵀ times the
full gradient."""
import copy

import pytest
import torch

from loralab import LoraLabError
from loralab.baselines import METHODS, count_trainable, prepare_intrinsic, subspace_of
from loralab.testing import model_output, tiny_inputs, tiny_model

D_MODEL, LABELS = 32, 3
HEAD = D_MODEL * LABELS + LABELS


def flat_parameters(model):
    return [(n, p) for n, p in model.named_parameters()]


def test_registered_and_only_z_trains():
    model = tiny_model("bert")
    total = sum(p.numel() for p in model.parameters())
    METHODS["intrinsic"](model, d=11)
    assert count_trainable(model) == 11
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["intrinsic_subspace.z"]
    assert subspace_of(model).projection.D == total   # every parameter value, the head included


def test_train_head_keeps_the_head_out_of_the_subspace():
    model = tiny_model("bert")
    total = sum(p.numel() for p in model.parameters())
    prepare_intrinsic(model, d=5, train_head=True)
    assert count_trainable(model) == 5 + HEAD
    assert subspace_of(model).projection.D == total - HEAD


def test_zero_z_is_the_base_model_exactly():
    base = tiny_model("bert")
    inputs = tiny_inputs(base)
    expected = model_output(base, inputs)
    model = prepare_intrinsic(copy.deepcopy(base), d=16)
    assert torch.equal(model_output(model, inputs), expected)


def test_forward_equals_weights_set_by_hand():
    base = tiny_model("bert")
    reference = copy.deepcopy(base)
    inputs = tiny_inputs(base)
    model = prepare_intrinsic(base, d=16, seed=5)
    subspace = subspace_of(model)
    with torch.no_grad():
        subspace.z.copy_(torch.randn(16, generator=torch.Generator().manual_seed(0)))
        offset = subspace.projection.dense() @ subspace.z      # P·z from the dense matrix
    start = 0
    with torch.no_grad():
        for _, p in flat_parameters(reference):                  # same order as the subspace's
            p.add_(offset[start:start + p.numel()].view_as(p))
            start += p.numel()
    assert start == offset.numel()
    moved = model_output(model, inputs)
    assert not torch.allclose(moved, model_output(tiny_model("bert"), inputs))
    assert torch.allclose(moved, model_output(reference, inputs), atol=1e-5)
    # evaluation caches P·z while z is unchanged; a change of z must show at once
    assert torch.equal(model_output(model, inputs), moved)
    with torch.no_grad():
        subspace.z.mul_(2)
    assert not torch.allclose(model_output(model, inputs), moved)


def test_gradient_of_z_is_projected_full_gradient():
    base = tiny_model("bert")
    full = copy.deepcopy(base)
    inputs = tiny_inputs(base)
    labels = torch.tensor([0, 2])
    # eval mode: dropout off, so both forwards compute the same function (gradients flow all the same)
    full(**inputs, labels=labels).loss.backward()
    g = torch.cat([p.grad.reshape(-1) for _, p in flat_parameters(full)])
    model = prepare_intrinsic(base, d=8, seed=1)
    model(**inputs, labels=labels).loss.backward()
    P = subspace_of(model).projection.dense()
    z_grad = subspace_of(model).z.grad
    assert z_grad.abs().sum() > 0
    assert torch.allclose(z_grad, P.T @ g, rtol=1e-4, atol=1e-6)


def test_two_backward_passes_with_the_same_z():
    """Gradient accumulation: two forwards before one optimizer step each build their own graph."""
    model = prepare_intrinsic(tiny_model("bert"), d=4)
    inputs = tiny_inputs(model)
    for _ in range(2):
        model(**inputs, labels=torch.tensor([0, 1])).loss.backward()
    one = copy.deepcopy(subspace_of(model).z.grad)
    subspace_of(model).z.grad = None
    model(**inputs, labels=torch.tensor([0, 1])).loss.backward()
    assert torch.allclose(one, 2 * subspace_of(model).z.grad, rtol=1e-5)


def test_an_optimizer_step_moves_the_model():
    model = prepare_intrinsic(tiny_model("bert"), d=6)
    inputs = tiny_inputs(model)
    before = model_output(model, inputs)
    optimizer = torch.optim.SGD([subspace_of(model).z], lr=1.0)
    model(**inputs, labels=torch.tensor([0, 1])).loss.backward()
    optimizer.step()
    assert not torch.allclose(model_output(model, inputs), before)


def test_errors():
    with pytest.raises(LoraLabError, match="positive integer"):
        prepare_intrinsic(tiny_model("bert"), d=0)
    with pytest.raises(LoraLabError, match="exceeds"):
        prepare_intrinsic(tiny_model("bert"), d=10 ** 9)
    model = prepare_intrinsic(tiny_model("bert"), d=3)
    with pytest.raises(LoraLabError, match="already"):
        prepare_intrinsic(model, d=3)


def test_excluded_modules_stay_outside_the_subspace():
    model = tiny_model("bert")
    total = sum(p.numel() for p in model.parameters())
    words = model.bert.embeddings.word_embeddings.weight
    before = words.detach().clone()
    prepare_intrinsic(model, d=4, exclude=["word_embeddings"])
    assert subspace_of(model).projection.D == total - before.numel()
    with torch.no_grad():
        subspace_of(model).z.fill_(1.0)
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, before)   # not parametrized: unchanged
    assert not torch.equal(model.classifier.weight, model.classifier.parametrizations.weight.original)
    with pytest.raises(LoraLabError, match="matches no module"):
        prepare_intrinsic(tiny_model("bert"), d=4, exclude=["no_such_module"])
