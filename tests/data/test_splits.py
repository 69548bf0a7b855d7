"""Fixed subsets and the stratified split: the same on every machine, independent of the run's seed."""
from __future__ import annotations

from collections import Counter

import pytest

from loralab.data.examples import Example
from loralab.data.splits import fixed_subset, split_key, stratified_split
from loralab.errors import LoraLabError


def test_stratified_split_rule_counts_and_order_independence():
    examples = [Example(f"text {i}", label="a" if i % 3 else "b", line=i + 1) for i in range(95)]
    splits = stratified_split(examples, (80, 10, 10), seed=0)
    # 63 "a": dev = test = round(6.3) = 6; 32 "b": dev = test = round(3.2) = 3.
    assert {k: Counter(e.label for e in v) for k, v in splits.items()} == {
        "train": {"a": 51, "b": 26}, "dev": {"a": 6, "b": 3}, "test": {"a": 6, "b": 3}}
    assert [e.line for e in splits["dev"]] == sorted(e.line for e in splits["dev"])  # file order kept
    reordered = stratified_split(list(reversed(examples)), (80, 10, 10), seed=0)
    assert {e.text for e in reordered["test"]} == {e.text for e in splits["test"]}
    other_seed = stratified_split(examples, (80, 10, 10), seed=1)
    assert {e.text for e in other_seed["test"]} != {e.text for e in splits["test"]}
    with pytest.raises(LoraLabError, match="adding up to 100"):
        stratified_split(examples, (80, 10, 5))


def test_split_key_is_sha256_of_seed_and_text():
    # Pinned: docs/data.md states the rule as the hex SHA-256 of f"{seed}:{text}".
    assert split_key("text", 0) == "e632109b442b2df9989e0d420efc3e9f51b03866582bdab8eece0be21430b585"
    assert split_key("", 0) == "ba768b331fd86cec803be04e56ab2b3d4c0e98ef4ee4fcd4e72ad7cce61a1d1f"
    with pytest.raises(LoraLabError, match="needs a label on every example"):
        stratified_split([Example("a", label="x"), Example("b")])


def test_fixed_subset_is_seeded_sorted_and_independent_of_run_seed():
    examples = [Example(text=str(i)) for i in range(100)]
    subset = fixed_subset(examples, 10)
    assert subset == fixed_subset(examples, 10) and len(subset) == 10
    positions = [int(e.text) for e in subset]
    assert positions == sorted(positions) and positions != list(range(10))
    assert fixed_subset(examples, None) == examples and fixed_subset(examples, 500) == examples
