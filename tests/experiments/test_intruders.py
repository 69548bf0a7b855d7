"""`loralab experiment intruders` in quick mode: intruder counts equal to `analyze`'s computation, the mitigation
table's arithmetic, a run without intruders copied across scales, and the forgetting runs read, never written."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from loralab.analysis.base import base_weights, load_base_model
from loralab.analysis.deltas import load_deltas
from loralab.analysis.intruders import adapter_intruders
from loralab.experiments import run_experiment
from loralab.experiments.intruders import SCALES, THRESHOLD, K

needs_data = pytest.mark.needs_shared_data("glue/SST-2/train.tsv", "glue/SST-2/dev.tsv", "glue/MRPC/dev.tsv")

RUNS = ["lora-qv-r2", "full"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """(root, results.json, log lines) of a quick run on two of the forgetting grid's runs, trained beside it."""
    root = tmp_path_factory.mktemp("intruders")
    lines: list[str] = []
    run_experiment("intruders", out=root / "intruders", quick=True, runs=RUNS, log=lines.append)
    results = json.loads((root / "intruders" / "results.json").read_text(encoding="utf-8"))
    return root, results, lines


@needs_data
def test_counts_match_the_analysis_of_each_adapter(quick):
    root, results, _ = quick
    rows = {row["run"]: row for row in results["tables"]["intruders"]["rows"]}
    assert list(rows) == RUNS
    assert (results["meta"]["k"], results["meta"]["threshold"], results["meta"]["scales"]) == (K, THRESHOLD,
                                                                                              list(SCALES))
    lora = rows["lora-qv-r2"]
    assert lora["matrices"] == 4                         # 2 layers × (query, value) of the tiny model
    deltas, _ = load_deltas(root / "forgetting" / "runs" / "lora-qv-r2" / "adapter")
    base = load_base_model(results["meta"]["model"])
    expected = adapter_intruders(deltas, base_weights(base, [d.module for d in deltas]))
    assert lora["intruders"] == sum(m.count for m in expected) > 0       # merged weights, as analyze counts them
    assert lora["intruders_Wq_Wv"] == lora["intruders"]
    where = results["tables"]["intruder_matrices"]["rows"]
    assert len(where) == sum(row["matrices_with_intruders"] for row in rows.values())
    assert sorted(w["matrix"] for w in where if w["run"] == "lora-qv-r2") == sorted(m.name for m in expected if m.count)
    full = rows["full"]
    assert full["matrices"] == 13                        # 2 × (q, k, v, o, FFN in, FFN out) + the pooler
    assert 0 <= full["intruders_Wq_Wv"] <= full["intruders"] <= full["matrices"] * K


@needs_data
def test_mitigation_rows_per_scale(quick):
    _, results, _ = quick
    rows = results["tables"]["mitigation"]["rows"]
    assert [(row["run"], row["scale"]) for row in rows] == [(run, s) for run in RUNS for s in SCALES]
    before = results["meta"]["auc_before"]
    runs = {row["run"]: row for row in results["tables"]["intruders"]["rows"]}
    for run in RUNS:
        mine = {row["scale"]: row for row in rows if row["run"] == run}
        one = mine[1.0]
        # merged at scale 1: the run's own model (the dev split scored again; at most one example may flip)
        assert abs(one["dev_accuracy"] - runs[run]["dev_accuracy_run"]) <= 1 / results["meta"]["dev_limit"] + 1e-9
        for row in mine.values():
            assert row["forgetting"] == pytest.approx(before - row["auc_after"], abs=1e-12)
            assert row["d_forgetting"] == pytest.approx(row["forgetting"] - one["forgetting"], abs=1e-12)
            assert row["d_dev_accuracy"] == pytest.approx(row["dev_accuracy"] - one["dev_accuracy"], abs=1e-12)
        if runs[run]["intruders"] == 0:                   # nothing to scale: scale 1's numbers, copied
            assert [row["source"] for row in mine.values()] == ["merged", "copied", "copied"]
            assert all(row["auc_after"] == one["auc_after"] for row in mine.values())
        else:                                             # no forgetting.json in these runs: all measured
            assert [row["source"] for row in mine.values()] == ["merged"] * len(SCALES)
    summary = results["tables"]["mitigation_summary"]["rows"]
    assert [(row["run"], row["scale"], row["seeds"]) for row in summary] == [(r, s, 1) for r in RUNS for s in SCALES]


@needs_data
def test_rerun_from_another_folder_reads_the_forgetting_runs_without_writing(quick, tmp_path):
    root, results, lines = quick
    assert any("training in" in line for line in lines)          # the missing forgetting runs were trained
    source = root / "forgetting"
    before = {p: p.stat().st_mtime_ns for p in source.rglob("*")}
    out = tmp_path / "again"
    command = [sys.executable, "-m", "loralab", "experiment", "intruders", "--quick", "--runs", ",".join(RUNS),
               "--forgetting-dir", str(source), "-o", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "finished before" in done.stdout and "training in" not in done.stdout
    assert {p: p.stat().st_mtime_ns for p in source.rglob("*")} == before          # nothing written there
    again = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert again["tables"]["mitigation"]["rows"] == results["tables"]["mitigation"]["rows"]
    assert (out / "figures" / "mitigation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a re-run into the same folder reads each run's numbers back from measured/
    lines = []
    run_experiment("intruders", out=out, quick=True, runs=RUNS, forgetting_dir=source, log=lines.append)
    assert not any(" ×" in line for line in lines)
    assert sorted(p.name for p in (out / "measured").iterdir()) == sorted(f"{run}.json" for run in RUNS)


@needs_data
def test_scale_one_reads_the_forgetting_experiments_numbers(quick, tmp_path):
    """A run the forgetting experiment probed (forgetting.json): scale 1 is its own dev score and AUC after."""
    root, results, _ = quick
    source = tmp_path / "forgetting"
    shutil.copytree(root / "forgetting", source)
    (source / "runs" / "lora-qv-r2" / "forgetting.json").write_text(json.dumps(
        {"auc_after": 0.5, "probe": "mrpc dev", "pairs": results["meta"]["probe_pairs"]}))
    report = run_experiment("intruders", out=tmp_path / "out", quick=True, runs=["lora-qv-r2"], forgetting_dir=source,
                            scales=[0.0], log=lambda message: None)
    intruders, mitigation = report.tables[0].rows, report.tables[1].rows
    assert [(row["scale"], row["source"]) for row in mitigation] == [(1.0, "run"), (0.0, "merged")]
    assert mitigation[0]["auc_after"] == 0.5 and mitigation[0]["dev_accuracy"] == intruders[0]["dev_accuracy_run"]
    assert mitigation[0]["forgetting"] == report.meta["auc_before"] - 0.5
    assert report.meta["scales"] == [1.0, 0.0]


@pytest.mark.parametrize("scales, message", [
    ("1.5", "--scales must be in [0, 1] (0 removes the intruder directions, 1 keeps them), got 1.5"),
    ("-0.1", "--scales must be in [0, 1] (0 removes the intruder directions, 1 keeps them), got -0.1"),
])
def test_bad_scales_exit_2_with_one_line(tmp_path, scales, message):
    command = [sys.executable, "-m", "loralab", "experiment", "intruders", "--quick", f"--scales={scales}",
               "-o", str(tmp_path / "out")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"loralab experiment: error: {message}"]
    assert not (tmp_path / "out").exists() and not (tmp_path / "forgetting").exists()
