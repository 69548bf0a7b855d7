"""The per-row strategy interface: the cost model picks each built-in strategy in its regime, the
process's constants (and their override), and a strategy registered from this file (scoped)."""
import math

import pytest
import torch
from torch import nn

import loralab
from loralab.core.rows import (GATHERED, GROUPED, MASKED, MASKED_MAX_WORK, ROW_STRATEGIES, RowCosts, RowPlan,
                               RowStrategy, Work, choose_strategy, register_row_strategy, row_costs)
from loralab.errors import LoraLabError
from loralab.testing import fill_adapter, one_thread, tiny_inputs, tiny_model
from tests.core.test_rows import TOL, alone, layer_with_adapters, mixed


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def eight_adapters() -> nn.Module:
    """The measured layer: 576→576, 8 adapters of rank 8 (R = 64)."""
    return layer_with_adapters(nn.Linear(576, 576), {f"a{i}": dict(r=8, alpha=16.0) for i in range(8)})


def test_cost_model_picks_each_builtin_in_its_regime():
    layer = eight_adapters()
    used = list(layer.lora_adapters)
    # N·R = 32·12·64 = MASKED_MAX_WORK exactly: masked (ties go to masked); one more token per row: grouped
    assert 32 * 12 * 64 == MASKED_MAX_WORK
    assert choose_strategy(layer, torch.zeros(32, 12, 576), used) == MASKED
    assert choose_strategy(layer, torch.zeros(32, 13, 576), used) == GROUPED
    assert choose_strategy(layer, torch.zeros(32, 1, 576), used[:1]) == GROUPED      # one adapter: no mask
    # gathered: never on the measured CPU (infinite cost); chosen where a platform's constants make it cheapest
    assert math.isinf(RowCosts().gathered)
    gather_friendly = RowCosts(grouped=MASKED_MAX_WORK, gathered=1_000)
    assert choose_strategy(layer, torch.zeros(32, 1, 576), used, gather_friendly) == GATHERED   # N·R = 2,048
    assert choose_strategy(layer, torch.zeros(1, 1, 576), used[:2], gather_friendly) == MASKED  # N·R = 16


def test_the_constants_are_read_once_per_process(monkeypatch):
    row_costs.cache_clear()
    try:
        monkeypatch.setenv("LORALAB_MASKED_MAX_WORK", "100")
        assert row_costs() == RowCosts(grouped=100)
        monkeypatch.setenv("LORALAB_MASKED_MAX_WORK", "5")
        assert row_costs() == RowCosts(grouped=100)                       # cached: the first reading holds
        layer = eight_adapters()
        assert choose_strategy(layer, torch.zeros(1, 2, 576), list(layer.lora_adapters)) == GROUPED   # 128 > 100
        row_costs.cache_clear()
        monkeypatch.setenv("LORALAB_MASKED_MAX_WORK", "lots")
        with pytest.raises(LoraLabError, match="LORALAB_MASKED_MAX_WORK must be a whole number .* got 'lots'"):
            row_costs()
    finally:
        row_costs.cache_clear()
    monkeypatch.delenv("LORALAB_MASKED_MAX_WORK")
    assert row_costs() == RowCosts(grouped=MASKED_MAX_WORK)


class Loop(RowStrategy):
    """Each row through its adapter alone: slow, obviously right, and counts its calls."""
    name = "loop"
    calls = 0

    def cost(self, work: Work, costs: RowCosts) -> float:
        return 0.0

    def apply(self, layer, plan, x, out, used, repeat):
        type(self).calls += 1
        rows = []
        for i, name in enumerate(plan.row_names(repeat)):
            row = out[i:i + 1]
            if name in used:
                f = layer.lora_adapters[name]
                row = f.variant.forward(layer, f, x[i:i + 1], row.clone())
            rows.append(row)
        return torch.cat(rows)


def test_a_strategy_registered_from_a_test_file():
    layer = layer_with_adapters(nn.Linear(12, 10), {"a": dict(r=2, alpha=4.0), "b": dict(r=3, alpha=2.0)})
    names = ["a", None, "b", "a"]
    x = torch.randn(4, 3, 12)
    with ROW_STRATEGIES.scoped():
        register_row_strategy(Loop)
        with pytest.raises(ValueError, match="per-row strategy 'loop' is already registered"):
            register_row_strategy(Loop)
        with torch.no_grad():
            Loop.calls = 0
            torch.testing.assert_close(mixed(layer, x, names, "loop"), alone(layer, x, names), **TOL)   # forced
            assert Loop.calls == 1
            assert choose_strategy(layer, x, ["a", "b"]) == "loop"                         # cheapest: chosen
            torch.testing.assert_close(mixed(layer, x, names), alone(layer, x, names), **TOL)
            assert Loop.calls == 2
        model = loralab.inject(tiny_model("llama"), loralab.LoraConfig(r=2), adapter="a")
        loralab.inject(model, loralab.LoraConfig(r=3), adapter="b")
        fill_adapter(model, "a", seed=1)
        fill_adapter(model, "b", seed=2)
        ids = tiny_inputs(model, batch=2, seq=3)["input_ids"]
        with torch.no_grad(), loralab.per_row_adapters(model, ["a", "b"], strategy="loop"):
            model(input_ids=ids)
        assert Loop.calls > 2
    assert "loop" not in ROW_STRATEGIES
    with pytest.raises(ValueError, match="unknown per-row strategy 'loop'; choose one of gathered, grouped, masked"):
        RowPlan(["a"], "loop")
