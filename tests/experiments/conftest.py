"""Shared by the experiment tests: the `needs_glue(TASK)` marker (skip, saying why, where ../shared/data lacks
that GLUE task) and the `read_csv` fixture (a results CSV as a list of rows)."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

# Where loralab's readers look: $LORALAB_SHARED_DATA, else ../shared/data next to the checkout.
SHARED = Path(os.environ.get("LORALAB_SHARED_DATA") or Path(__file__).resolve().parents[2].parent / "shared" / "data")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs_glue(task): skip unless the shared data holds glue/<task>/train.tsv")


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("needs_glue"):
        task = mark.args[0]
        if not (SHARED / "glue" / task / "train.tsv").is_file():
            pytest.skip(f"needs ../shared/data (GLUE {task})")


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def read_csv():
    """read_csv(path) -> the CSV's rows as dicts of strings."""
    return _read_csv
