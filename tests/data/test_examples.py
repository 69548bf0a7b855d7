"""Example: where an example came from, and grouping causal LM references by prompt."""
from __future__ import annotations

import pytest

from loralab.data.examples import Example, group_references
from loralab.errors import LoraLabError


def test_where_and_group_references_in_first_seen_order():
    examples = [Example("mr b", target="b1"), Example("mr a", target="a1"), Example("mr b", target="b2")]
    assert group_references(examples) == [("mr b", ["b1", "b2"]), ("mr a", ["a1"])]
    assert Example("x", source="train.tsv", line=7).where == "train.tsv:7"
    with pytest.raises(LoraLabError, match=r"dev.txt:3: example has no target"):
        group_references([Example("mr", source="dev.txt", line=3)])
