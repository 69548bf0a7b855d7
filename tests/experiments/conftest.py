"""Shared by the experiment tests: the `read_csv` fixture (a results CSV as a list of rows). The shared data
they read is declared with the `needs_shared_data(...)` marker of tests/conftest.py (skipped here where it is
missing, a failure under CI=true)."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def read_csv():
    """read_csv(path) -> the CSV's rows as dicts of strings."""
    return _read_csv
