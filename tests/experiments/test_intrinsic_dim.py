"""`loralab experiment intrinsic-dim --quick` and its public helpers: trained values are exactly d, d90 is
read off the table, the spectrum of full fine-tuning's ΔW is that of W_ft − W0 recomputed here, and
`subspace_run` trains (then reuses) one subspace."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from loralab.experiments import run_experiment
from loralab.experiments.intrinsic_dim import QUICK_DIMS, d90, fastfood_projection, subspace_run

pytestmark = pytest.mark.needs_shared_data("glue/MRPC/train.tsv")
D, LAYERS, HEAD = 32, 2, 32 * 2 + 2


def test_d90_definition():
    metrics = {10: 0.50, 100: 0.70, 1000: 0.80, 3000: 0.79}
    assert d90(metrics, reference=0.85) == 1000              # target 0.9 · 0.85 = 0.765
    assert d90(metrics, reference=0.70 / 0.9) == 100          # reaching the target exactly counts
    assert d90(metrics, reference=0.99) is None
    assert d90(metrics, reference=0.85, floor=0.3) == 1000   # 0.3 + 0.9 · 0.55 = 0.795
    assert d90(metrics, reference=0.85, floor=0.6) is None   # 0.6 + 0.9 · 0.25 = 0.825


def test_public_projection_is_the_fastfood_one():
    P = fastfood_projection(1000, 10, seed=0)
    assert P(torch.zeros(10)).shape == (1000,)
    assert torch.allclose(P.dense().norm(dim=0), torch.ones(10), atol=0.05)   # 1000 of 1008 rows kept


@pytest.fixture(scope="module")
def quick_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("intrinsic") / "intrinsic-dim"
    run_experiment("intrinsic-dim", out=out, quick=True, log=lambda message: None)
    return out


def test_intrinsic_dim_quick_table(quick_out: Path, read_csv):
    rows = read_csv(quick_out / "results.csv")
    assert [r["run"] for r in rows] == ["full", "lora-r1"] + [f"d{d}" for d in QUICK_DIMS]
    by = {r["run"]: r for r in rows}
    for d in QUICK_DIMS:
        assert int(by[f"d{d}"]["trained_values"]) == d                   # z alone: the head is in the subspace
    assert int(by["lora-r1"]["trained_values"]) == LAYERS * 2 * 2 * D * 1 + HEAD
    full = float(by["full"]["dev_accuracy"])
    for row in rows:
        assert float(row["percent_of_full"]) == pytest.approx(100 * float(row["dev_accuracy"]) / full, rel=1e-6)
    summary = json.loads((quick_out / "results.json").read_text(encoding="utf-8"))["meta"]["summary"]
    metrics = {d: float(by[f"d{d}"]["dev_accuracy"]) for d in QUICK_DIMS}
    assert summary["d90"] == d90(metrics, full)
    assert summary["d90_above_majority"] == d90(metrics, full, summary["majority_baseline"])
    assert 0.5 <= summary["majority_baseline"] <= 1.0
    assert summary["lora_r1_lora_values"] == LAYERS * 2 * 2 * D
    assert len(list((quick_out / "figures").glob("*.png"))) == 2


def test_update_spectrum_is_that_of_the_weight_difference(quick_out: Path, read_csv):
    from safetensors.torch import load_file

    spectrum = read_csv(quick_out / "update_spectrum.csv")
    # per layer q, k, v, attention output, intermediate, output; plus the pooler. No embeddings, no head.
    assert len(spectrum) == LAYERS * 6 + 1
    assert not any("embeddings" in r["matrix"] or "classifier" in r["matrix"] for r in spectrum)
    tuned = load_file(str(quick_out / "runs" / "full" / "adapter" / "trainable.safetensors"))
    base = load_file(str(quick_out.parent / "_quick-model" / "model.safetensors"))
    row = next(r for r in spectrum if r["matrix"] == "encoder.layer.1.attention.self.value.weight")
    delta = tuned["bert.encoder.layer.1.attention.self.value.weight"].double() - base[row["matrix"]].double()
    sigma = torch.linalg.svdvals(delta)
    assert float(row["delta_fro"]) == pytest.approx(float(delta.norm()), rel=1e-6)
    assert float(row["stable_rank"]) == pytest.approx(float((sigma ** 2).sum() / sigma[0] ** 2), rel=1e-6)
    energy = (sigma ** 2).cumsum(0) / (sigma ** 2).sum()
    assert int(row["rank_90"]) == int((energy < 0.9).sum()) + 1
    for r in spectrum:
        assert 1 <= int(r["rank_50"]) <= int(r["rank_90"]) <= int(r["full_rank"])
        assert 1.0 <= float(r["effective_rank"]) <= int(r["full_rank"]) + 1e-9


def test_subspace_run_trains_then_reuses(tmp_path: Path):
    first = subspace_run(8, quick=True, out=tmp_path, steps=5, log=lambda message: None)
    assert (first.d, first.trainable_params, first.metric_name) == (8, 8, "accuracy")
    assert 0.0 <= first.metric <= 1.0 and first.seconds_per_step > 0
    assert json.loads((first.folder / "metrics.json").read_text(encoding="utf-8"))["steps"] == 5
    logs: list[str] = []
    again = subspace_run(8, quick=True, out=tmp_path, steps=5, log=logs.append)
    assert again.metric == first.metric and any("finished before" in line for line in logs)
    assert subspace_run(2, quick=True, steps=2, log=lambda message: None).folder is None   # temporary, removed


def test_step_time_table(quick_out: Path, read_csv):
    rows = read_csv(quick_out / "step_time.csv")
    assert [r["method"] for r in rows] == ["full", "lora r=1"] + [f"intrinsic d={d}" for d in QUICK_DIMS]
    trained = {r["method"]: int(r["trained_values"]) for r in rows}
    assert trained["lora r=1"] == LAYERS * 2 * 2 * D + HEAD
    assert all(trained[f"intrinsic d={d}"] == d for d in QUICK_DIMS)
    assert float(rows[0]["cpu_vs_first"]) == 1.0
    assert all(float(r["cpu_ms_per_step"]) > 0 for r in rows)


def test_learning_rate_keeps_the_step_in_parameter_space_constant():
    from loralab.experiments.intrinsic_dim import subspace_lr

    assert subspace_lr(300) == 0.1 and subspace_lr(1200) == 0.05 and subspace_lr(3) == 1.0
    for d in (10, 100, 10_000):   # lr·√d, the size of one Adam step in θ-space, is the same for every d
        assert subspace_lr(d) * d ** 0.5 == pytest.approx(0.1 * 300 ** 0.5, rel=2e-3)


def test_max_steps_sets_every_runs_steps_and_only_intrinsic_dim_takes_it(tmp_path: Path):
    from loralab.errors import LoraLabError
    from loralab.experiments.intrinsic_dim import intrinsic_specs

    default = intrinsic_specs(False, None, None, tmp_path / "default", dims=[10])
    assert [s.config.max_steps for s in default] == [300, 300, 300]   # MRPC: 161 steps per epoch, at least 300
    short = intrinsic_specs(False, None, None, tmp_path / "short", dims=[10, 100], steps=7)
    assert [(s.name, s.config.max_steps, s.config.eval_every) for s in short] == [
        ("full", 7, 7), ("lora-r1", 7, 7), ("d10", 7, 7), ("d100", 7, 7)]
    with pytest.raises(LoraLabError, match="positive"):
        intrinsic_specs(False, None, None, tmp_path / "bad", dims=[10], steps=0)
    with pytest.raises(LoraLabError, match="does not take --max-steps"):
        run_experiment("rank", out=tmp_path / "rank", quick=True, max_steps=5)
