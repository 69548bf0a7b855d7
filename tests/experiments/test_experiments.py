"""The experiments' --quick modes end to end: files written, rows and columns as expected, exact trainable
counts, sane numbers, and resume (finished runs are read back, not retrained).

The quick model is a 2-layer random BERT (hidden d=32) with MiniLM's tokenizer, trained on 200 SST-2
sentences; it learns little, so the metric checks are ranges, the parameter counts are exact.
"""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import pytest
import torch

from loralab.errors import LoraLabError
from loralab.experiments import EXPERIMENTS, run_experiment
from loralab.experiments.common import RunSpec, is_finished, run_grid, saved_parameter_counts

pytestmark = pytest.mark.needs_shared_data("glue/SST-2/train.tsv")   # tests/conftest.py: skip here, fail in CI
D, LAYERS, HEAD = 32, 2, 32 * 2 + 2  # quick model: hidden size, layers, classifier values (2 labels)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def quiet(message: str) -> None:
    pass


def check_outputs(out: Path, figures: int) -> dict:
    for name in ("results.csv", "results.json", "results.md", "report.html"):
        assert (out / name).is_file(), name
    pngs = sorted((out / "figures").glob("*.png"))
    assert len(pngs) == figures
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == figures  # self-contained
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no scratch files
    return json.loads((out / "results.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("experiments")


@pytest.fixture(scope="module")
def rank_out(root: Path) -> Path:
    run_experiment("rank", out=root / "rank", quick=True, log=quiet)
    return root / "rank"


def test_registry_names():
    assert set(EXPERIMENTS) == {"rank", "targets", "methods", "amplification", "data-size", "intrinsic-dim",
                                "lr-sweep", "forgetting", "variants", "intruders"}
    with pytest.raises(LoraLabError, match="unknown experiment"):
        run_experiment("ranks", quick=True)


def test_rank_quick(rank_out: Path):
    data = check_outputs(rank_out, figures=2)
    rows = read_csv(rank_out / "results.csv")
    assert [int(r["r"]) for r in rows] == [1, 2, 4, 8, 16]
    for row in rows:
        r = int(row["r"])
        # LoRA on Wq, Wv: 2 matrices per layer, A (r×d) + B (d×r) each.
        assert int(row["adapter_params"]) == LAYERS * 2 * 2 * D * r
        assert int(row["trainable_params"]) == LAYERS * 2 * 2 * D * r + HEAD
        assert 0.0 <= float(row["dev_accuracy"]) <= 1.0
        assert math.isfinite(float(row["dev_loss"])) and float(row["dev_loss"]) > 0
        assert int(row["steps"]) == math.ceil(200 / 16)
        assert float(row["seconds_per_step"]) > 0
        assert (rank_out / "runs" / row["run"] / "adapter").is_dir()
    sub = read_csv(rank_out / "subspace.csv")
    assert len(sub) == LAYERS * 2  # query and value of each layer
    for row in sub:
        assert (int(row["r1"]), int(row["r2"]), int(row["dim"])) == (8, 16, D)
        for key in ("phi(1,1)", "phi(1,8)", "mean phi", "phi(1,1) random"):
            assert 0.0 <= float(row[key]) <= 1.0 + 1e-6
        # φ(1, 8) of random subspaces ≈ max(1, 8)/d: the baseline is the textbook value.
        assert float(row["phi(1,8) random"]) == pytest.approx(8 / D, abs=0.08)
    assert (rank_out / "analysis" / "report.html").is_file()
    assert data["meta"]["metric"] == "accuracy" and data["meta"]["skipped_runs"] == []


def test_rank_resume_skips_finished_runs(rank_out: Path):
    mtimes = {p: p.stat().st_mtime_ns for p in (rank_out / "runs").glob("*/metrics.json")}
    (rank_out / "runs" / "r2" / "metrics.json").unlink()  # as if the run had been killed before the end
    logs: list[str] = []
    run_experiment("rank", out=rank_out, quick=True, log=logs.append)
    data = json.loads((rank_out / "results.json").read_text(encoding="utf-8"))
    assert data["meta"]["skipped_runs"] == ["r1", "r4", "r8", "r16"]
    assert sum("finished before" in line for line in logs) == 4
    for path, mtime in mtimes.items():
        if path.parent.name != "r2":
            assert path.stat().st_mtime_ns == mtime  # not rewritten
    assert is_finished(rank_out / "runs" / "r2")


def test_amplification_reuses_rank_runs(root: Path, rank_out: Path):
    from loralab.cli.main import main

    out = root / "amplification"  # next to root/"rank", where it looks for the rank runs
    assert main(["experiment", "amplification", "--quick", "--output", str(out)]) == 0
    data = check_outputs(out, figures=1)
    assert data["meta"]["reused_runs"] == ["r1", "r2", "r4", "r8", "r16"]  # nothing retrained
    rows = read_csv(out / "results.csv")
    assert {(int(r["r"]), r["matrix"]) for r in rows} == {(r, m) for r in (1, 2, 4, 8, 16) for m in ("query", "value")}
    modules = read_csv(out / "amplification_modules.csv")
    assert len(modules) == 5 * LAYERS * 2
    for row in modules:
        r = int(row["r"])
        w, proj_w, proj_delta = float(row["w_fro"]), float(row["proj_w_top"]), float(row["proj_delta"])
        # W's own top-r directions capture the most of W; nothing exceeds ‖W‖_F.
        assert 0 <= proj_delta <= proj_w + 1e-5 <= w + 2e-5
        assert float(row["amplification"]) == pytest.approx(float(row["delta_fro"]) / proj_delta, rel=1e-4)


def test_targets_quick(root: Path):
    out = root / "targets"
    run_experiment("targets", out=out, quick=True, log=quiet)
    check_outputs(out, figures=1)
    rows = read_csv(out / "results.csv")
    assert [r["targets"] for r in rows] == ["Wq", "Wk", "Wv", "Wo", "Wq,Wk", "Wq,Wv", "Wq,Wk,Wv,Wo"]
    assert [int(r["r"]) for r in rows] == [8, 8, 8, 8, 4, 4, 2]
    # One budget: 2·L·d·r·(matrix types) = 16·L·d for every row.
    assert {int(r["adapter_params"]) for r in rows} == {16 * LAYERS * D}
    assert {int(r["trainable_params"]) for r in rows} == {16 * LAYERS * D + HEAD}
    config = json.loads((out / "runs" / "Wq-Wk-Wv-Wo" / "config.json").read_text(encoding="utf-8"))
    assert config["lora"]["targets"] == ["query", "key", "value", "attention.output.dense"]


def test_methods_quick(root: Path):
    out = root / "methods"
    run_experiment("methods", out=out, quick=True, log=quiet)
    data = check_outputs(out, figures=4)
    rows = read_csv(out / "results.csv")
    from loralab.baselines import count_all
    from loralab.experiments.common import quick_model_dir
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(quick_model_dir(root / "_quick-model"), num_labels=2)
    biases = sum(p.numel() for n, p in model.named_parameters() if n.endswith("bias") and "classifier" not in n)
    expected = {"lora": LAYERS * 2 * 2 * D * 8 + HEAD,
                "full": count_all(model),
                "bitfit": biases + HEAD,
                "houlsby": LAYERS * 2 * (2 * D * 8 + 8 + D) + HEAD,   # 2 adapters/block: d→8→d with biases
                "prefix": LAYERS * 2 * 16 * D + HEAD}                 # keys and values, 16 positions
    names = [r["method"] for r in rows]
    assert names == ["lora", "full", "bitfit", "houlsby", "prefix"]
    for row in rows:
        assert int(row["trainable_params"]) == expected[row["method"]], row["method"]
        # Each run is its own process, so its peak RSS is its own: a torch process holds well over 100 MiB.
        assert 100 < float(row["peak_rss_mb"]) < 8000
        assert float(row["seconds_per_step"]) > 0
        assert 0.0 <= float(row["dev_accuracy"]) <= 1.0
    by = {r["method"]: int(r["trainable_params"]) for r in rows}
    assert by["bitfit"] < by["lora"] < by["full"]
    assert float(rows[1]["params_vs_lora"]) == pytest.approx(by["full"] / by["lora"])
    latency = read_csv(out / "latency.csv")
    assert {r["config"] for r in latency} == {"base", "houlsby", "lora_unmerged", "lora_merged"}
    assert all(float(r["median_ms"]) > 0 for r in latency)
    assert data["meta"]["methods"] == names


def test_run_grid_rejects_duplicate_names(tmp_path: Path):
    from loralab.training.config import TrainConfig

    config = TrainConfig(data="sst2")
    with pytest.raises(LoraLabError, match="unique"):
        run_grid([RunSpec("a", config), RunSpec("a", config)], tmp_path)
    with pytest.raises(LoraLabError, match="letters"):
        RunSpec("a/b", config)


def test_saved_parameter_counts(tmp_path: Path):
    import torch
    from safetensors.torch import save_file

    save_file({"base.q.lora_A.weight": torch.zeros(4, 32), "base.q.lora_B.weight": torch.zeros(32, 4),
               "classifier.weight": torch.zeros(2, 32)}, str(tmp_path / "adapter_model.safetensors"))
    assert saved_parameter_counts(tmp_path) == (4 * 32 * 2 + 64, 4 * 32 * 2)
    with pytest.raises(LoraLabError, match="no .safetensors"):
        saved_parameter_counts(tmp_path / "missing")


def test_rank_with_seeds_and_a_subset_of_runs(root: Path):
    import statistics

    from safetensors.torch import load_file

    out = root / "rank-seeds"
    run_experiment("rank", out=out, quick=True, seeds=2, runs=["r1", "r4"], log=quiet)
    rows = read_csv(out / "results.csv")
    assert [(r["run"], int(r["r"]), int(r["seed"])) for r in rows] == [
        ("r1", 1, 0), ("r1-seed1", 1, 1), ("r4", 4, 0), ("r4-seed1", 4, 1)]
    configs = [json.loads((out / "runs" / r["run"] / "config.json").read_text(encoding="utf-8")) for r in rows]
    assert [c["seed"] for c in configs] == [0, 1, 0, 1]
    a = load_file(str(next((out / "runs" / "r1").glob("adapter/*.safetensors"))))
    b = load_file(str(next((out / "runs" / "r1-seed1").glob("adapter/*.safetensors"))))
    assert any(not torch.equal(a[k], b[k]) for k in a)   # another seed, another initialisation
    seeds = read_csv(out / "seeds.csv")
    assert [(r["run"], int(r["seeds"])) for r in seeds] == [("r1", 2), ("r4", 2)]
    for row in seeds:
        values = [float(r["dev_accuracy"]) for r in rows if int(r["r"]) == int(row["r"])]
        assert float(row["dev_accuracy_median"]) == pytest.approx(statistics.median(values))
        assert float(row["dev_accuracy_std"]) == pytest.approx(statistics.stdev(values))
    assert not (out / "subspace.csv").exists()   # r=8 and r=16 were not in this grid: no φ


def test_options_an_experiment_lacks_are_errors(root: Path):
    with pytest.raises(LoraLabError, match="does not take --seeds"):
        run_experiment("amplification", out=root / "x", quick=True, seeds=2)
    with pytest.raises(LoraLabError, match="does not take --forgetting-dir, --scales; remove them"):
        run_experiment("forgetting", out=root / "x", quick=True, scales=[0.5], forgetting_dir=root / "f")
    with pytest.raises(LoraLabError, match="unknown run"):
        run_experiment("targets", out=root / "y", quick=True, runs=["Wz"])


def test_seed_summary_and_spread():
    from loralab.experiments.common import RunResult, seed_summary, spread

    assert spread([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "std": 1.0}
    assert spread([5.0])["std"] == 0.0 and math.isnan(spread([math.nan])["median"])

    def result(name, base, seed, acc):
        return RunResult(name, Path(name), {"r": 1, "seed": seed, "base_run": base}, {"accuracy": acc}, {}, 10,
                         1.0, 0.1, 5, 4, None, False)

    rows = seed_summary([result("a", "a", 0, 0.5), result("a-seed1", "a", 1, 0.7), result("a-seed2", "a", 2, 0.9),
                         result("b", "b", 0, 0.6)], "accuracy")
    assert [(r["run"], r["seeds"], r["dev_accuracy_median"]) for r in rows] == [("a", 3, 0.7), ("b", 1, 0.6)]
    assert rows[0]["dev_accuracy_by_seed"] == "0.5000 / 0.7000 / 0.9000" and "seed" not in rows[0]


def test_a_rank_folder_written_before_the_markers_still_resumes(rank_out: Path):
    from loralab.files import OWNER_MARKER, owned_kind

    (rank_out / OWNER_MARKER).unlink()       # as loralab wrote it before it marked experiment folders
    logs: list[str] = []
    run_experiment("rank", out=rank_out, quick=True, log=logs.append)
    assert sum("finished before" in line for line in logs) == 5       # recognised by its layout, nothing retrained
    assert owned_kind(rank_out) == "experiment-report"
