"""Modules renamed by issue 19 (one meaning per module name) keep their old path for one release: the old
path is the new module itself (same objects, monkeypatching one patches the other) and says once, with a
DeprecationWarning, where it went. Delete this file with the aliases in the release after 0.1."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

MOVED = {
    "loralab.benchmarking.latency": "loralab.timing.latency",
    "loralab.benchmarking.memory": "loralab.timing.tensor_memory",
    "loralab.serving.metrics": "loralab.serving.telemetry",
    "loralab.training.metrics": "loralab.training.scores",
    "loralab.budget.memory": "loralab.budget.memory_estimate",
    "loralab.training.runtime": "loralab.training.reproducibility",
    "loralab.surgery.targeting": "loralab.core.targeting",
}


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_path_is_the_new_module_and_warns(old, monkeypatch):
    new = importlib.import_module(MOVED[old])
    monkeypatch.delitem(sys.modules, old, raising=False)
    with pytest.warns(DeprecationWarning, match=rf"^{old} is now {MOVED[old]}; the old name goes in the release after 0\.1$"):
        alias = importlib.import_module(old)
    assert alias is new


def test_old_names_still_import():
    from loralab.benchmarking.memory import TensorMemory
    from loralab.serving.metrics import Metrics
    from loralab.training.metrics import classification_metrics
    from loralab.timing.tensor_memory import TensorMemory as moved_memory
    from loralab.serving.telemetry import Metrics as moved_metrics
    from loralab.training.scores import classification_metrics as moved_scores
    assert (TensorMemory, Metrics, classification_metrics) == (moved_memory, moved_metrics, moved_scores)


def test_old_latency_command_still_runs():
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, "-m", "loralab.benchmarking.latency", "--help"], capture_output=True,
                          text=True, env=env, cwd=root, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m loralab.timing.latency")
