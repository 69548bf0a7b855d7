"""`loralab experiment lr-sweep --quick`: one run per (method, rate), the best rate is the argmax."""
from __future__ import annotations

from pathlib import Path

import pytest

from loralab.experiments import run_experiment
from loralab.experiments.lr_sweep import LEARNING_RATES

pytestmark = pytest.mark.needs_shared_data("glue/SST-2/train.tsv")


def test_lr_sweep_quick(tmp_path: Path, read_csv):
    out = tmp_path / "lr-sweep"
    run_experiment("lr-sweep", out=out, quick=True, log=lambda message: None)
    rows = read_csv(out / "results.csv")
    expected = [(m, lr) for m, (_, quick) in LEARNING_RATES.items() for lr in quick]
    assert [(r["method"], float(r["lr"])) for r in rows] == expected
    assert all(r["run"] == f"{r['method']}-lr{float(r['lr']):g}" for r in rows)
    best = read_csv(out / "best_lr.csv")
    for row in best:
        mine = [r for r in rows if r["method"] == row["method"]]
        top = max(float(r["dev_accuracy"]) for r in mine)
        assert float(row["dev_accuracy"]) == top
        assert float(row["best_lr"]) == next(float(r["lr"]) for r in mine if float(r["dev_accuracy"]) == top)
    assert not (out / "seeds.csv").exists()   # one seed: no seed table
