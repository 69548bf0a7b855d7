"""Claiming a run folder: which folders a run may write, replace or resume; the commit at the first checkpoint
and the lock passing with it; what a failed run takes back."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from loralab import files
from loralab.errors import LoraLabError
from loralab.training.config import TrainConfig
from loralab.training.run_output import RunOutput

GOLDEN_RUN = Path(__file__).resolve().parents[1] / "golden" / "v0.1" / "run-bert"
CONFIG = TrainConfig(data="sst2")


def _finished_run(folder: Path) -> Path:
    folder.mkdir()
    files.mark_owned(folder, "train-run")
    files.write_json(folder / "config.json", CONFIG.to_dict())
    files.write_json(folder / "metrics.json", {"steps": 1})
    return folder


def _open(target, **kwargs) -> RunOutput:
    return RunOutput.open(target, log=lambda message: None, **kwargs)


def _mode(target, **kwargs) -> str:
    output = _open(target, **kwargs)
    output.close(failed=True)
    return output.mode


def test_modes_from_what_is_on_disk(tmp_path):
    assert _mode(tmp_path / "missing") == "new"
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / files.LOCK_NAME).write_text("")          # a lock file alone is no content
    assert _mode(empty) == "new"
    run = _finished_run(tmp_path / "run")
    with pytest.raises(LoraLabError, match="already holds a training run; pass --resume to continue it, --overwrite"):
        _mode(run)
    assert _mode(run, overwrite=True) == "replace"
    assert _mode(run, resume=True) == "resume"
    legacy = tmp_path / "legacy"
    shutil.copytree(GOLDEN_RUN, legacy)
    assert _mode(legacy, overwrite=True) == "replace"      # loralab 0.1: recognised by its layout
    experiment = tmp_path / "experiment"
    experiment.mkdir()
    (experiment / "experiment-config.json").write_text("{}")
    assert _mode(experiment) == "in place"
    with pytest.raises(LoraLabError, match="is not empty; pass --resume"):
        _mode(experiment, in_place_ok=False)


@pytest.mark.parametrize("setup, kwargs, message", [
    ("model", {"overwrite": True}, "not a folder loralab wrote as a train run"),
    ("model", {}, r"is not empty \(it holds config.json\)"),
    ("merged", {"overwrite": True}, "is a loralab merged-model folder"),
    ("model", {"resume": True}, "holds no loralab run to resume"),
    ("file", {}, "exists and is not a folder"),
])
def test_refusals_are_one_line_and_touch_nothing(tmp_path, setup, kwargs, message):
    target = tmp_path / "target"
    if setup == "file":
        target.write_text("x")
    else:
        target.mkdir()
        (target / "config.json").write_text(json.dumps({"model_type": "bert"}))   # a model folder, say
        if setup == "merged":
            files.mark_owned(target, "merged-model")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(LoraLabError, match=message):
        _open(target, **kwargs)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_commit_swaps_the_new_run_in_and_the_lock_goes_with_it(tmp_path):
    old = _finished_run(tmp_path / "run")
    output = _open(old, overwrite=True)
    output.begin(CONFIG)
    assert output.path != old and output.path.parent == tmp_path and (old / "metrics.json").is_file()
    (output.path / "checkpoints").mkdir()
    output.commit()
    assert output.path == old and not (old / "metrics.json").exists() and (old / "checkpoints").is_dir()
    with pytest.raises(LoraLabError, match="is in use by PID"):
        files.OutputLock(old).acquire()
    output.close(failed=False)
    files.OutputLock(old).acquire().release()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_run_failing_before_its_commit_takes_back_what_it_wrote(tmp_path):
    new = _open(tmp_path / "new")
    new.begin(CONFIG)
    new.close(failed=True)
    old = _finished_run(tmp_path / "old")
    replace = _open(old, overwrite=True)
    replace.begin(CONFIG)
    replace.close(failed=True)
    experiment = tmp_path / "experiment"
    experiment.mkdir()
    (experiment / "train.log").write_text("log")
    in_place = _open(experiment)
    in_place.begin(CONFIG)
    (experiment / "adapter").mkdir()
    in_place.close(failed=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiment", "old"]     # "new" is gone
    assert (old / "metrics.json").is_file() and files.owned_kind(old) == "train-run"
    assert sorted(p.name for p in experiment.iterdir()) == [files.LOCK_NAME, "train.log"]
