"""Tracking: a TensorBoard event file with the run's scalars (read back with TensorBoard's own reader and
compared with metrics.json), nothing written without --report-to, offline W&B through a stand-in module,
one-line errors for trackers that are not installed, rank 0 only, and a reporter registered from here."""
from __future__ import annotations

import importlib.machinery
import json
import sys
import types
from pathlib import Path

import pytest

from loralab.errors import LoraLabError
from loralab.training.config import TrainConfig
from loralab.training.run import run_training
from loralab.training.tracking import REPORTERS, Reporter, Tracking, check_available, register_reporter


def _config(tiny_bert_dir, sst2_files, **overrides) -> TrainConfig:
    return TrainConfig(**{"model": str(tiny_bert_dir), "train_file": str(sst2_files["train"]),
                          "dev_file": str(sst2_files["dev"]), "test_file": str(sst2_files["test"]), "max_length": 32,
                          "batch_size": 16, "max_steps": 6, "log_every": 2, "eval_every": 3, "lr": 5e-3,
                          "checkpoint_every": 0, "progress": False, **overrides})


@pytest.fixture
def fake_wandb(monkeypatch):
    """A stand-in `wandb` module recording what loralab sends it."""
    calls: dict = {"log": []}

    class Run:
        def log(self, values, step):
            calls["log"].append((step, dict(values)))

        def finish(self):
            calls["finished"] = True

    def init(**kwargs):
        calls["init"] = kwargs
        return Run()

    module = types.ModuleType("wandb")
    module.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    module.init = init
    monkeypatch.setitem(sys.modules, "wandb", module)
    return calls


def test_tensorboard_events_hold_the_runs_scalars_and_config(tiny_bert_dir, sst2_files, tmp_path, fake_wandb):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    output = tmp_path / "run"
    config = _config(tiny_bert_dir, sst2_files, report_to=["tensorboard", "wandb"])
    result = run_training(config, output, log=lambda message: None)
    logs = EventAccumulator(str(output / "logs" / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    logs.Reload()
    tags = set(logs.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", "train/examples_per_s", "dev/accuracy", "dev/loss",
            "test/accuracy", "test/loss"} <= tags
    train_rows = [row for row in result["history"] if row["split"] == "train"]
    dev_rows = [row for row in result["history"] if row["split"] == "dev"]
    assert [e.step for e in logs.Scalars("train/loss")] == [2, 4, 6] == [row["step"] for row in train_rows]
    for tag, key in (("train/loss", "loss"), ("train/lr", "lr"), ("train/grad_norm", "grad_norm")):
        assert [e.value for e in logs.Scalars(tag)] == pytest.approx([row[key] for row in train_rows], rel=1e-6)
    assert [(e.step, e.value) for e in logs.Scalars("dev/accuracy")] == \
        [(row["step"], pytest.approx(row["accuracy"])) for row in dev_rows]
    assert logs.Scalars("test/accuracy")[0].value == pytest.approx(result["test"]["accuracy"])
    assert logs.Scalars("test/accuracy")[0].step == 6
    config_text = logs.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "report_to: [tensorboard, wandb]" in config_text and "max_steps: 6" in config_text
    assert json.loads((output / "config.json").read_text())["report_to"] == ["tensorboard", "wandb"]
    # the same points reached W&B, offline, in the run's folder
    assert fake_wandb["init"]["mode"] == "offline" and fake_wandb["init"]["dir"] == str(output / "logs" / "wandb")
    assert fake_wandb["init"]["config"]["max_steps"] == 6 and fake_wandb["finished"]
    assert [step for step, values in fake_wandb["log"] if "train/loss" in values] == [2, 4, 6]


def test_nothing_is_logged_without_report_to(tiny_bert_dir, sst2_files, tmp_path):
    output = tmp_path / "quiet"
    run_training(_config(tiny_bert_dir, sst2_files, max_steps=2, report_to="none"), output, log=lambda m: None)
    assert not (output / "logs").exists()
    assert json.loads((output / "config.json").read_text())["report_to"] == []


def test_trackers_that_are_missing_or_unknown_are_one_line():
    if importlib.util.find_spec("mlflow") is None:
        with pytest.raises(LoraLabError, match="^--report-to mlflow needs the mlflow package, which is not "
                                               "installed: pip install mlflow"):
            check_available(["mlflow"])
    with pytest.raises(LoraLabError, match="unknown tracker 'comet'; choose one of mlflow, tensorboard, wandb"):
        TrainConfig(data="sst2", report_to=["comet"])


class _Stub:
    """What Tracking reads of a trainer: dist.is_main, state, output_dir."""

    def __init__(self, folder: Path, is_main: bool, step: int = 0):
        self.dist = types.SimpleNamespace(is_main=is_main)
        self.state = {"step": step}
        self.output_dir = folder


def test_a_registered_reporter_gets_records_once_the_folder_is_final_and_only_on_rank_0(tmp_path):
    received = []

    with REPORTERS.scoped():
        @register_reporter("memory")
        class Memory(Reporter):
            def open(self):
                received.append(("open", self.folder.relative_to(tmp_path).as_posix(), self.run_name,
                                 self.start_step))

            def log_scalars(self, step, values, walltime):
                received.append((step, values))

        committed = [False]
        tracking = Tracking(TrainConfig(data="sst2", report_to=["memory"]), ready=lambda: committed[0],
                            run_name="r1")
        trainer = _Stub(tmp_path / "r1", is_main=True, step=4)     # resumed at step 4
        tracking.on_train_begin(trainer)
        tracking.on_log(trainer, {"step": 5, "loss": 0.5, "lr": 1e-3, "grad_norm": 2.0, "examples_per_s": 9.0})
        assert received == []                                     # the run folder is not committed yet
        committed[0] = True
        tracking.on_evaluate(trainer, 6, {"accuracy": 0.75})
        tracking.finish(trainer, {"test": {"accuracy": 0.5}})
        assert received == [("open", "r1/logs/memory", "r1", 5),
                            (5, {"train/loss": 0.5, "train/lr": 1e-3, "train/grad_norm": 2.0,
                                 "train/examples_per_s": 9.0}),
                            (6, {"dev/accuracy": 0.75}), (4, {"test/accuracy": 0.5})]

        received.clear()
        follower = Tracking(TrainConfig(data="sst2", report_to=["memory"]))
        other_rank = _Stub(tmp_path / "r2", is_main=False)
        follower.on_train_begin(other_rank)
        follower.on_log(other_rank, {"step": 1, "loss": 1.0})
        follower.finish(other_rank, {"test": {"accuracy": 1.0}})
        assert received == [] and not (tmp_path / "r2").exists()
    assert "memory" not in REPORTERS
