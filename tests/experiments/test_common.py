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


def test_grid_runs_take_the_experiments_recipe_unless_set_or_keeping_trains_defaults(tmp_path, monkeypatch):
    from loralab.experiments import common
    from loralab.training.config import TrainConfig

    seen = []
    monkeypatch.setattr(common, "is_finished", lambda folder: True)
    monkeypatch.setattr(common, "read_result", lambda spec, folder, skipped:
                        seen.append((spec.name, spec.config.dtype, spec.config.max_warmup_steps)))
    specs = [common.RunSpec("a", TrainConfig(data="sst2")),
             common.RunSpec("b", TrainConfig(data="sst2", dtype="bf16", max_warmup_steps=5)),
             common.RunSpec("c", TrainConfig(data="sst2"), train_defaults=True)]
    common.run_grid(specs, tmp_path, log=lambda message: None)
    assert seen == [("a", "fp32", None), ("b", "bf16", 5), ("c", "auto", 10)]
    seen.clear()
    with common.grid_runtime(dtype="auto"):                  # --dtype auto on the command
        common.run_grid(specs, tmp_path, log=lambda message: None)
    assert seen == [("a", "auto", None), ("b", "auto", 5), ("c", "auto", 10)]
