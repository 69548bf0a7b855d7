"""`loralab experiment data-size --quick`: the grid (sizes, seeds, steps), exact trainable counts, the
seed statistics and the paper's Table 16 as quoted."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from loralab.experiments import run_experiment
from loralab.experiments.data_size import (MAX_STEPS, MIN_STEPS, PAPER_TABLE16, QUICK_MAX_STEPS, QUICK_MIN_STEPS,
                                           steps_for)

pytestmark = pytest.mark.needs_shared_data("glue/SST-2/train.tsv")
D, LAYERS, HEAD = 32, 2, 32 * 2 + 2


def test_steps_rule():
    assert [steps_for(n) for n in (100, 1000, 3200, 8000, 67349)] == [MIN_STEPS, MIN_STEPS, 200, 500, MAX_STEPS]
    assert [steps_for(n, quick=True) for n in (32, 96, 1000)] == [QUICK_MIN_STEPS, 6, QUICK_MAX_STEPS]


def test_default_grid_epochs_count_the_short_last_batch(tmp_path: Path):
    from loralab.experiments.data_size import data_size_specs

    specs = data_size_specs(False, None, None, tmp_path, runs=["lora-n100", "lora-n1000", "lora-nall"])
    epochs = {s.name: (s.info["steps"], s.info["epochs"]) for s in specs}
    # 100 sentences: 7 batches an epoch (6 of 16, 1 of 4); 1,000: 63; all 67,349: 4,210
    assert epochs == {"lora-n100": (200, 28.57), "lora-n100-seed1": (200, 28.57), "lora-n100-seed2": (200, 28.57),
                      "lora-n1000": (200, 3.17), "lora-n1000-seed1": (200, 3.17), "lora-n1000-seed2": (200, 3.17),
                      "lora-nall": (1500, 0.36)}


def test_paper_table16_as_quoted():
    assert PAPER_TABLE16["lora"] == (63.8, 85.6, 89.2, 91.7)
    assert PAPER_TABLE16["full"] == (60.2, 85.8, 88.9, 89.5)
    assert PAPER_TABLE16["PrefixEmbed"] == (37.6, 75.2, 79.5, 88.6)
    assert PAPER_TABLE16["PrefixLayer"] == (48.3, 82.5, 85.9, 89.6)


def test_data_size_quick(tmp_path: Path, read_csv):
    out = tmp_path / "data-size"
    run_experiment("data-size", out=out, quick=True, log=lambda message: None)
    data = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert len(list((out / "figures").glob("*.png"))) == 1
    runs = read_csv(out / "runs.csv")
    # 4 methods × (2 seeds at 32 examples + 1 at 96), size-major order
    assert [r["run"] for r in runs[:6]] == ["lora-n32", "lora-n32-seed1", "full-n32", "full-n32-seed1",
                                            "prefix-n32", "prefix-n32-seed1"]
    assert len(runs) == 4 * 3
    summary = read_csv(out / "results.csv")
    assert [(r["method"], r["size_label"], int(r["seeds"]), int(r["steps"])) for r in summary] == [
        (m, "32", 2, 4) for m in ("lora", "full", "prefix", "houlsby")] + [
        (m, "96", 1, 6) for m in ("lora", "full", "prefix", "houlsby")]
    for row in summary:
        batches_per_epoch = -(-int(row["size_label"]) // 16)        # the last batch of an epoch may be short
        assert float(row["epochs"]) == pytest.approx(int(row["steps"]) / batches_per_epoch, abs=0.01)
        values = [float(r["dev_accuracy"]) for r in runs if r["run"].split("-seed")[0] == row["run"]]
        assert float(row["dev_accuracy_median"]) == pytest.approx(statistics.median(values))
        assert float(row["dev_accuracy_min"]) == min(values) and float(row["dev_accuracy_max"]) == max(values)
    trainable = {r["method"]: int(r["trainable_params"]) for r in summary}
    assert trainable["lora"] == LAYERS * 2 * 2 * D * 8 + HEAD
    assert trainable["prefix"] == LAYERS * 2 * 16 * D + HEAD
    assert trainable["houlsby"] == LAYERS * 2 * (2 * D * 8 + 8 + D) + HEAD
    wide = read_csv(out / "by_size.csv")
    assert [r["method"] for r in wide] == ["lora", "full", "prefix", "houlsby"]
    for row in wide:   # the pivot holds the medians, in %
        for size in ("32", "96"):
            median = next(float(s["dev_accuracy_median"]) for s in summary
                          if s["method"] == row["method"] and s["size_label"] == size)
            assert float(row[size]) == pytest.approx(100 * median, abs=0.006)
    paper = read_csv(out / "paper_table16.csv")
    assert float(paper[-1]["392,702"]) == 91.7
    assert data["meta"]["min_steps"] == QUICK_MIN_STEPS and data["meta"]["skipped_runs"] == []
    assert data["meta"]["train_seconds_total"] > 0
    assert data["meta"]["cpu_seconds_total"] == 0   # quick runs train in-process: no child CPU time to read
