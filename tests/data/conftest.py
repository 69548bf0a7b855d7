"""Fixtures for the data tests: writing small data files."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture
def write_file(tmp_path) -> Callable[..., Path]:
    """write_file(name, text, encoding="utf-8") -> the path of `text` written under tmp_path."""
    def write(name: str, text: str, encoding: str = "utf-8") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode(encoding))
        return path

    return write
