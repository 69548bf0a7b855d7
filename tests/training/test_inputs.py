"""Inputs of a run: the fixed subset drawn for --train-limit and friends."""
from __future__ import annotations

from loralab.training.data import Example
from loralab.training.inputs import fixed_subset


def test_fixed_subset_is_seeded_sorted_and_independent_of_run_seed():
    examples = [Example(text=str(i)) for i in range(100)]
    subset = fixed_subset(examples, 10)
    assert subset == fixed_subset(examples, 10) and len(subset) == 10
    positions = [int(e.text) for e in subset]
    assert positions == sorted(positions) and positions != list(range(10))
    assert fixed_subset(examples, None) == examples and fixed_subset(examples, 500) == examples


