"""The run folder format: recognising runs (marker, or a loralab 0.1 layout), and its writers and readers."""
from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

from loralab import files
from loralab.training.run_folder import (is_legacy_run, is_train_run, read_metrics, read_task_info, record_resume,
                                         write_metrics)

GOLDEN_RUN = Path(__file__).resolve().parents[1] / "golden" / "v0.1" / "run-bert"


def test_runs_are_recognised_by_marker_or_by_the_exact_0_1_layout(tmp_path):
    legacy = tmp_path / "legacy"
    shutil.copytree(GOLDEN_RUN, legacy)
    assert is_legacy_run(legacy) and is_train_run(legacy)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32}))
    (model / "metrics.json").write_text("{}")
    assert not is_train_run(model)                     # config.json is not a TrainConfig
    no_progress = tmp_path / "config-only"
    no_progress.mkdir()
    shutil.copy(legacy / "config.json", no_progress / "config.json")
    assert not is_train_run(no_progress)               # nothing to resume or keep: not recognised
    files.mark_owned(no_progress, "train-run")
    assert is_train_run(no_progress) and not is_legacy_run(no_progress)


def test_metrics_task_info_and_resume_records_round_trip(tmp_path):
    result = {"best_step": 4, "steps": 6, "dev": {"loss": 0.5, "accuracy": 0.75}, "test": {"accuracy": 0.7},
              "history": [{"step": 3, "split": "train", "loss": 0.9}, {"step": 4, "split": "dev", "loss": 0.5}]}
    write_metrics(tmp_path, result)
    assert read_metrics(tmp_path) == result
    rows = list(csv.DictReader(io.StringIO((tmp_path / "metrics.csv").read_text())))
    assert [(r["step"], r["split"]) for r in rows] == [("3", "train"), ("4", "dev"), ("4", "best-dev"), ("4", "test")]
    assert read_task_info(tmp_path) == {}
    record_resume(tmp_path, 6, {"lr": (0.005, 0.001)})
    record_resume(tmp_path, 9, {"max_steps": (9, 12)})
    records = json.loads((tmp_path / "resumes.json").read_text())
    assert [(r["step"], r["changed"]) for r in records] == [(6, {"lr": [0.005, 0.001]}), (9, {"max_steps": [9, 12]})]


def test_task_file_says_chat_template_for_chat_data_and_flag(tmp_path):
    from loralab.training.config import TrainConfig
    from loralab.training.run_folder import write_task_file

    common = dict(model="m", task="causal-lm", train_file="t.jsonl")
    write_task_file(tmp_path / "a", TrainConfig(**common, read_options={"format": "chat"}))
    write_task_file(tmp_path / "b", TrainConfig(**common, chat_template=True))
    write_task_file(tmp_path / "c", TrainConfig(**common))
    assert [read_task_info(tmp_path / n)["chat_template"] for n in "abc"] == [True, True, False]


def test_task_file_says_chat_template_for_a_messages_file_read_without_format(tmp_path):
    from loralab.training.config import TrainConfig
    from loralab.training.run_folder import write_task_file

    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    write_task_file(tmp_path / "a", TrainConfig(model="m", task="causal-lm", train_file=str(data)))
    assert read_task_info(tmp_path / "a")["chat_template"] is True


def test_a_run_written_before_standardize_targets_resumes_unscaled(tmp_path):
    from loralab.training.config import TrainConfig
    from loralab.training.run_folder import read_config, write_config

    config = TrainConfig(model="m", task="regression", train_file="t.tsv")
    assert config.standardize_targets is True                   # the default of new runs
    write_config(tmp_path, config)
    assert read_config(tmp_path).standardize_targets is True
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["standardize_targets"]                            # a config.json from before the setting
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert read_config(tmp_path).standardize_targets is False   # resumed as it was trained: raw targets
    assert read_config(tmp_path) == TrainConfig(**{**config.to_dict(), "standardize_targets": False})


def test_a_run_written_before_dtype_auto_and_the_warmup_cap_resumes_as_trained(tmp_path):
    from loralab.training.config import TrainConfig
    from loralab.training.run_folder import read_config, write_config

    config = TrainConfig(model="m", train_file="t.tsv")
    assert (config.dtype, config.max_warmup_steps) == ("auto", 10)       # the defaults of new runs
    write_config(tmp_path, config)
    assert (read_config(tmp_path).dtype, read_config(tmp_path).max_warmup_steps) == ("auto", 10)
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["max_warmup_steps"], saved["dtype"]                # a config.json of loralab 0.1 (no dtype field yet)
    (tmp_path / "config.json").write_text(json.dumps(saved))
    old = read_config(tmp_path)
    assert (old.dtype, old.max_warmup_steps) == ("fp32", None)           # fp32, the warm-up by ratio alone
