"""Per-row adapters on single layers: every kind, every strategy, rows equal to the row run alone; the
strategy choice; the stacked factors' cache and its invalidation; autograd through the grouped path."""
import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from loralab.core.kinds import kind_of
from loralab.core.lora import LoraFactors, LoraLayer, SlicedLoraFactors
from loralab.core.rows import GROUPED, MASKED, STRATEGIES, RowPlan, choose_strategy, slots_of
from loralab.core.variants import VARIANTS
from loralab.testing import one_thread

TOL = dict(rtol=0, atol=1e-5)


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def _factors(layer, r, alpha, variant="lora", rslora=False, slices=None, widths=None):
    d, k = layer.kind.shape(layer.base_layer)
    kw = dict(variant=VARIANTS[variant], rslora=rslora)
    return SlicedLoraFactors(d, k, r, alpha, slices, widths, **kw) if slices else LoraFactors(d, k, r, alpha, **kw)


def layer_with_adapters(base: nn.Module, specs: dict[str, dict], seed: int = 0) -> LoraLayer:
    """A LoraLayer holding one adapter per spec, every factor tensor random (pairwise different outputs)."""
    torch.manual_seed(seed)
    layer = LoraLayer(base, kind_of(base))
    for i, (name, spec) in enumerate(specs.items()):
        f = _factors(layer, **spec)
        layer.add_adapter(name, f, "kaiming")
        g = torch.Generator().manual_seed(seed + 10 + i)
        with torch.no_grad():
            for p in f.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5 + (1.0 if p is getattr(f, "magnitude", None) else 0))
    return layer


def alone(layer: LoraLayer, x: torch.Tensor, names: list) -> torch.Tensor:
    """Each row through the layer alone with its adapter active (the reference), stacked back."""
    outs = []
    for i, name in enumerate(names):
        layer.set_active([name] if name else [])
        outs.append(layer(x[i:i + 1]))
    return torch.cat(outs)


def mixed(layer: LoraLayer, x: torch.Tensor, names: list, strategy=None) -> torch.Tensor:
    layer.row_plan = RowPlan(names, strategy)
    try:
        return layer(x)
    finally:
        layer.row_plan = None


LINEAR = {"a": dict(r=2, alpha=4.0), "b": dict(r=5, alpha=3.0, rslora=True), "c": dict(r=3, alpha=6.0, variant="dora")}
CASES = {
    "linear (B, T, k)": (lambda: nn.Linear(12, 10), LINEAR, lambda g: torch.randn(7, 3, 12, generator=g)),
    "linear decode (B, 1, k)": (lambda: nn.Linear(12, 10), LINEAR, lambda g: torch.randn(7, 1, 12, generator=g)),
    "linear (B, k)": (lambda: nn.Linear(12, 10), LINEAR, lambda g: torch.randn(7, 12, generator=g)),
    "gpt2 conv1d, fused slices of unequal widths": (
        lambda: Conv1D(24, 8),
        {"a": dict(r=2, alpha=4.0, slices=(True, False, True), widths=(6, 8, 10)), "b": dict(r=4, alpha=2.0),
         "c": dict(r=1, alpha=1.0, slices=(False, True, True), widths=(6, 8, 10))},
        lambda g: torch.randn(7, 3, 8, generator=g)),
    "embedding": (lambda: nn.Embedding(20, 6), {"a": dict(r=2, alpha=4.0), "b": dict(r=3, alpha=1.0)},
                  lambda g: torch.randint(0, 20, (7, 4), generator=g)),
    "conv2d": (lambda: nn.Conv2d(3, 4, 3, padding=1), {"a": dict(r=2, alpha=4.0), "b": dict(r=4, alpha=2.0)},
               lambda g: torch.randn(7, 3, 5, 5, generator=g)),
}
NAMES = ["a", None, "b", "a", "c", "b", None]


@pytest.mark.parametrize("strategy", [None, *STRATEGIES])
@pytest.mark.parametrize("case", list(CASES))
def test_each_row_equals_the_row_alone(case, strategy):
    make, specs, inputs = CASES[case]
    layer = layer_with_adapters(make(), specs)
    x = inputs(torch.Generator().manual_seed(3))
    names = [n if n in specs or n is None else "a" for n in NAMES]
    with torch.no_grad():
        expected = alone(layer, x, names)
        got = mixed(layer, x, names, strategy)
    torch.testing.assert_close(got, expected, **TOL)
    # the adapters really differ from each other and from the base, row by row
    rows = {n: expected[names.index(n)] for n in set(names)}
    for n in rows:
        for m in rows:
            if n != m:
                assert not torch.allclose(alone(layer, x[names.index(n):names.index(n) + 1], [m]),
                                          rows[n][None], atol=1e-3), (n, m)


def test_rows_repeated_for_beams_and_wrong_row_counts():
    layer = layer_with_adapters(nn.Linear(12, 10), LINEAR)
    names = ["a", "b", None]
    x = torch.randn(6, 2, 12)                                  # each name's row twice, as generate's beams do
    with torch.no_grad():
        torch.testing.assert_close(mixed(layer, x, names, MASKED), alone(layer, x, [n for n in names for _ in (0, 1)]),
                                   **TOL)
        with pytest.raises(ValueError, match="does not fit the 3 adapter names"):
            mixed(layer, torch.randn(4, 2, 12), names)


def test_strategy_choice_by_shape():
    layer = layer_with_adapters(nn.Linear(576, 576), {f"a{i}": dict(r=8, alpha=16.0) for i in range(8)})
    used = list(layer.lora_adapters)
    assert choose_strategy(layer, torch.zeros(32, 1, 576), used) == MASKED          # decoding step
    assert choose_strategy(layer, torch.zeros(32, 64, 576), used) == GROUPED        # whole sentences
    assert choose_strategy(layer, torch.zeros(32, 1, 576), used[:1]) == GROUPED     # one adapter: no mask needed
    with pytest.raises(ValueError, match="unknown per-row strategy"):
        RowPlan(["a0"], "loop")


def test_slots_are_rewritten_when_factors_change():
    layer = layer_with_adapters(nn.Linear(12, 10), {"a": dict(r=2, alpha=4.0), "b": dict(r=3, alpha=3.0)})
    x, names = torch.randn(4, 1, 12), ["a", "b", "b", None]
    with torch.no_grad():
        first = mixed(layer, x, names, MASKED)
        stack = slots_of(layer)
        writes = stack.writes
        mixed(layer, x, names, MASKED)
        assert slots_of(layer) is stack and stack.writes == writes  # unchanged factors: nothing rewritten
        layer.lora_adapters["b"].B.mul_(2)                         # what an optimizer step does: in place
        after_step = mixed(layer, x, names, MASKED)
        torch.testing.assert_close(after_step, alone(layer, x, names), **TOL)
        assert not torch.allclose(after_step[1], first[1])
        torch.testing.assert_close(after_step[0], first[0], **TOL)  # adapter a's row did not move
        layer.add_adapter("c", _factors(layer, r=2, alpha=2.0), "kaiming")
        with torch.no_grad():
            layer.lora_adapters["c"].B.normal_()
        names = ["c", "a", "b", None]
        torch.testing.assert_close(mixed(layer, x, names, MASKED), alone(layer, x, names), **TOL)
        layer.remove_adapter("b")
        assert stack.writes == writes + 2 and "b" not in stack.slot_of   # b rewritten once, c written once
        torch.testing.assert_close(mixed(layer, x, ["c", "a", None, "a"], MASKED),
                                   alone(layer, x, ["c", "a", None, "a"]), **TOL)


def test_gradients_reach_only_the_rows_adapters():
    layer = layer_with_adapters(nn.Linear(12, 10), {"a": dict(r=2, alpha=4.0), "b": dict(r=3, alpha=3.0)})
    for p in layer.parameters():
        p.requires_grad_(True)
    x = torch.randn(3, 2, 12)
    out = mixed(layer, x, ["a", None, "a"])                       # with autograd: the grouped path
    out.sum().backward()
    assert layer.lora_adapters["a"].B.grad.abs().sum() > 0
    assert layer.lora_adapters["b"].B.grad is None
    expected_grad = torch.autograd.grad(alone(layer, x[[0, 2]], ["a", "a"]).sum(), layer.lora_adapters["a"].A)[0]
    torch.testing.assert_close(layer.lora_adapters["a"].A.grad, expected_grad, rtol=1e-5, atol=1e-6)
