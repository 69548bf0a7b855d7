"""loralab.experiments.common: the parts every experiment shares (grid_meta, select_runs), without training."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from loralab.errors import LoraLabError
from loralab.experiments.common import RunResult, RunSpec, grid_meta, select_runs


def result(name: str, skipped: bool) -> RunResult:
    return RunResult(name, Path(name), {}, {}, {}, 1, 1.0, 1.0, 10, 8, None, skipped)


def test_grid_meta_records_the_first_runs_settings_the_extras_and_the_reused_runs():
    config = SimpleNamespace(model="tiny", data="sst2", train_file=None, train_limit=200, epochs=2.0, lr=1e-3)
    specs = [RunSpec("r1", config), RunSpec("r8", SimpleNamespace(model="other", data="x"))]
    meta = grid_meta(True, specs, [result("r1", True), result("r8", False)], ["train_limit", "lr"],
                     metric="accuracy", seeds=1)
    assert meta == {"quick": True, "model": "tiny", "data": "sst2", "train_limit": 200, "lr": 1e-3,
                    "metric": "accuracy", "seeds": 1, "skipped_runs": ["r1"]}
    assert list(meta)[-1] == "skipped_runs"


def test_select_runs_keeps_the_grid_order_and_names_an_unknown_run():
    specs = [RunSpec(name, None) for name in ("r1", "r4", "r8")]
    assert [s.name for s in select_runs(specs, ["r8", "r1"])] == ["r1", "r8"]
    with pytest.raises(LoraLabError, match=r"^unknown run of this experiment 'r2'; choose one of r1, r4, r8$"):
        select_runs(specs, ["r1", "r2"])
