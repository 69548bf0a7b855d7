"""Regression targets standardised by `loralab train` (loralab.data.labels.LabelMap's target scaling): the
scaling saved in the adapter's labels.json, and eval, predict and serve answering in the labels' units, i.e.
model_output * std + mean; adapter folders written before the scaling (no target_mean/target_std) load as the
identity."""
from __future__ import annotations

import io
import json
import math
import statistics

import pytest
import torch

from tests.cli.train_runs import fixtures

from loralab.cli.main import main

WORDS = ["good", "bad", "fine", "awful", "great", "poor"]
SCORE = {"good": 4.0, "bad": 1.0, "fine": 3.0, "awful": 0.0, "great": 5.0, "poor": 1.5}
TEXTS = [f"{a} and {b}" for a in WORDS for b in WORDS]
LABELS = [(SCORE[t.split()[0]] + SCORE[t.split()[2]]) / 2 for t in TEXTS]


def _write(path, texts, labels):
    path.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in zip(texts, labels)), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny BERT trained for regression on labels from 0 to 5 (mean 2.5), default flags but a short run."""
    folder = tmp_path_factory.mktemp("regression")
    model = fixtures.write_tiny_bert(folder / "bert")
    train = _write(folder / "train.tsv", TEXTS, LABELS)
    assert main(["train", "--model", str(model), "--task", "regression", "--train-file", str(train), "--dev-file",
                 str(train), "--max-length", "16", "--batch-size", "6", "--max-steps", "12", "--eval-every", "6",
                 "--lr", "1e-2", "--threads", "1", "--no-progress", "--output", str(folder / "run")]) == 0
    return folder


def _raw_outputs(adapter, texts):
    """The adapted model's own outputs (standardised units), through loralab.from_pretrained."""
    from transformers import AutoTokenizer

    import loralab

    model = loralab.from_pretrained(adapter)
    tokenizer = AutoTokenizer.from_pretrained(json.loads((adapter / "loralab-task.json").read_text())["model"])
    with torch.inference_mode():
        return model(**tokenizer(texts, padding=True, return_tensors="pt")).logits[:, 0].tolist()


def test_train_saves_the_training_labels_mean_and_std_exactly(run):
    saved = json.loads((run / "run" / "adapter" / "labels.json").read_text())
    assert saved == {"kind": "regression", "names": [], "target_mean": statistics.fmean(LABELS),
                     "target_std": statistics.pstdev(LABELS)}
    assert saved["target_mean"] == pytest.approx(29 / 12)
    assert json.loads((run / "run" / "config.json").read_text())["standardize_targets"] is True


def test_predict_eval_and_serve_answer_in_the_labels_units(run, monkeypatch, capsys, tmp_path):
    adapter = run / "run" / "adapter"
    mean, std = statistics.fmean(LABELS), statistics.pstdev(LABELS)
    expected = [o * std + mean for o in _raw_outputs(adapter, TEXTS)]
    assert statistics.fmean(expected) == pytest.approx(mean, abs=1.0)   # original units, not around 0

    capsys.readouterr()
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(TEXTS) + "\n"))
    assert main(["predict", "--adapter", str(adapter), "--threads", "1", "--no-progress"]) == 0
    assert [float(v) for v in capsys.readouterr().out.splitlines()] == pytest.approx(expected, rel=1e-5, abs=1e-5)

    assert main(["eval", "--adapter", str(adapter), "--file", str(run / "train.tsv"), "--threads", "1",
                 "--no-progress", "-o", str(tmp_path / "m.json")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())["metrics"]
    mse = statistics.fmean((p - y) ** 2 for p, y in zip(expected, LABELS))
    assert metrics["mse"] == pytest.approx(mse, rel=1e-4)                        # original units
    assert metrics["loss"] == pytest.approx(mse / std ** 2, rel=1e-4)            # the standardised objective
    assert metrics["pearson"] == pytest.approx(statistics.correlation(expected, LABELS), abs=1e-5)

    from tests.serving.conftest import RunningServer, free_port
    from tests.serving.over_http import client

    from loralab.serving.settings import ServeSettings
    from loralab.testing import one_thread

    with one_thread():
        server = RunningServer(ServeSettings(port=free_port(), adapters={"reg": adapter}))
        try:
            with client(server) as c:
                answer = c.post("/v1/classify", json={"model": "reg", "input": TEXTS[:5]}).json()
        finally:
            server.stop()
    assert [item["value"] for item in answer["data"]] == pytest.approx(expected[:5], rel=1e-5, abs=1e-5)


def test_an_adapter_folder_without_the_scaling_answers_raw_outputs(run, monkeypatch, capsys, tmp_path):
    import shutil

    old = tmp_path / "old-adapter"
    shutil.copytree(run / "run" / "adapter", old)
    (old / "labels.json").write_text('{"kind": "regression", "names": []}')    # loralab 0.1's labels.json
    raw = _raw_outputs(old, TEXTS[:4])
    capsys.readouterr()
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(TEXTS[:4]) + "\n"))
    assert main(["predict", "--adapter", str(old), "--threads", "1", "--no-progress"]) == 0
    assert [float(v) for v in capsys.readouterr().out.splitlines()] == pytest.approx(raw, rel=1e-5, abs=1e-5)


def test_a_constant_label_file_is_one_line_and_no_standardize_targets_trains_it(run, capsys):
    train = _write(run / "constant.tsv", TEXTS[:12], [2.5] * 12)
    argv = ["train", "--model", str(run / "bert"), "--task", "regression", "--train-file", str(train),
            "--max-length", "16", "--batch-size", "6", "--max-steps", "2", "--threads", "1", "--no-progress"]
    capsys.readouterr()
    assert main([*argv, "--output", str(run / "constant")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        "constant.tsv: every regression label is 2.5 (standard deviation 0), so there is nothing to learn; check "
        "--label-column, or pass --no-standardize-targets to train on the labels as they are")
    assert not (run / "constant").exists()
    assert main([*argv, "--no-standardize-targets", "--output", str(run / "constant-raw")]) == 0
    saved = json.loads((run / "constant-raw" / "adapter" / "labels.json").read_text())
    assert saved == {"kind": "regression", "names": []} and math.isfinite(
        json.loads((run / "constant-raw" / "metrics.json").read_text())["steps"])
