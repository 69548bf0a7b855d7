"""`loralab experiment lr-sweep --quick`: one run per (configuration, rate), the best rate is the argmax, and
each LoRA configuration's best rate over full fine-tuning's is reported with its bound."""
from __future__ import annotations

from pathlib import Path

import pytest

from loralab.experiments import run_experiment
from loralab.experiments.lr_sweep import CONFIGS, LEARNING_RATES, PAPER_RATIO, QUICK_CONFIGS, ratio_rows

pytestmark = pytest.mark.needs_shared_data("glue/SST-2/train.tsv")


def test_lr_sweep_quick(tmp_path: Path, read_csv):
    out = tmp_path / "lr-sweep"
    run_experiment("lr-sweep", out=out, quick=True, log=lambda message: None)
    rows = read_csv(out / "results.csv")
    expected = [(c, CONFIGS[c][0], lr) for c in QUICK_CONFIGS for lr in LEARNING_RATES[CONFIGS[c][0]][1]]
    assert [(r["config"], r["method"], float(r["lr"])) for r in rows] == expected
    assert all(r["run"] == f"{r['config']}-lr{float(r['lr']):g}" for r in rows)
    assert [(r["r"], r["targets"]) for r in rows[::2]] == [("8", "Wq,Wv"), ("1", "Wq,Wv"), ("8", "all-linear"),
                                                          ("", "every weight")]
    params = {r["config"]: int(r["trainable_params"]) for r in rows}
    assert params["lora-r1"] < params["lora"] < params["lora-all-r8"] < params["full"]
    best = read_csv(out / "best_lr.csv")
    assert [row["config"] for row in best] == list(QUICK_CONFIGS)
    for row in best:
        mine = [r for r in rows if r["config"] == row["config"]]
        top = max(float(r["dev_accuracy"]) for r in mine)
        assert float(row["dev_accuracy"]) == top
        assert float(row["best_lr"]) == next(float(r["lr"]) for r in mine if float(r["dev_accuracy"]) == top)
    ratios = read_csv(out / "lr_ratio.csv")
    full_best = float(best[-1]["best_lr"])
    assert [r["config"] for r in ratios] == list(QUICK_CONFIGS[:-1])
    for ratio, row in zip(ratios, best):
        assert float(ratio["ratio"]) == pytest.approx(float(row["best_lr"]) / full_best)
        assert float(ratio["paper_ratio"]) == PAPER_RATIO and ratio["bound"] in ("=", ">=", "<=", "?")
    assert not (out / "seeds.csv").exists()   # one seed: no seed table


def test_ratio_bounds_say_which_side_an_edge_optimum_leaves_open():
    grid = {"lora": [1e-4, 1e-3, 1e-2], "full": [1e-5, 1e-4, 1e-3]}

    def ratio(lora_lr, full_lr):
        best = [{"config": "lora", "method": "lora", "r": 8, "targets": "Wq,Wv", "best_lr": lora_lr},
                {"config": "full", "method": "full", "r": None, "targets": "every weight", "best_lr": full_lr}]
        (row,) = ratio_rows(best, grid)
        return row["ratio"], row["bound"]

    assert ratio(1e-3, 1e-4) == (pytest.approx(10.0), "=")
    assert ratio(1e-2, 1e-4)[1] == ">="        # LoRA's optimum may lie above its grid
    assert ratio(1e-3, 1e-5)[1] == ">="        # full fine-tuning's may lie below its grid
    assert ratio(1e-4, 1e-4)[1] == "<="
    assert ratio(1e-2, 1e-3)[1] == "?"
    assert ratio_rows([{"config": "lora", "method": "lora", "best_lr": 1e-3}], grid) == []
