"""`loralab train` on every destructive path of issue 10: nothing lost, nothing run, one line instead of a
traceback. Each test names its case. Tiny random-init BERT, SST-2 slices, runs of a few steps."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.cli.train_runs import fixtures
from tests.cli.train_runs import train_argv as _argv

from loralab import files
from loralab.cli.main import main

REPO = Path(__file__).resolve().parents[2]
GOLDEN_RUN = REPO / "tests" / "golden" / "v0.1" / "run-bert"


def _run(argv, capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line_error(code: int, err: str, *fragments: str) -> None:
    """Exit 2 and exactly one error line (transformers' loading bars aside), no traceback."""
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "it/s]" not in line]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("loralab train: error: "), err
    for fragment in fragments:
        assert fragment in err, err


def _digest(folder: Path) -> dict[str, str]:
    """Every file under `folder` (the lock file aside: it holds no content) -> sha256."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != files.LOCK_NAME}


@pytest.fixture(scope="module")
def finished(inputs, tmp_path_factory):
    """A finished 6-step run (checkpoints at 3 and 6), copied by tests that change it."""
    output = tmp_path_factory.mktemp("runs") / "finished"
    assert main(_argv(inputs, output)) == 0
    return output


@pytest.fixture
def run_copy(finished, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


# -- case 1: --overwrite validates everything first, replaces only train runs ---------------------------
def test_overwrite_with_a_typo_in_the_data_path_keeps_the_old_run(inputs, run_copy, capsys):
    before = _digest(run_copy)
    argv = _argv(inputs, run_copy, "--overwrite")
    argv[argv.index("--train-file") + 1] = str(inputs["train"]) + ".typo"
    code, _, err = _run(argv, capsys)
    _one_line_error(code, err, "train.tsv.typo")
    assert _digest(run_copy) == before
    assert [p.name for p in run_copy.parent.iterdir()] == ["run"]   # no temporary sibling left


def test_overwrite_failing_after_training_started_keeps_the_old_run(inputs, run_copy, capsys):
    before = _digest(run_copy)
    code, _, err = _run(_argv(inputs, run_copy, "--overwrite", "--best-metric", "nope"), capsys)
    _one_line_error(code, err, "unknown best metric 'nope'; choose one of ")
    assert _digest(run_copy) == before and [p.name for p in run_copy.parent.iterdir()] == ["run"]


def test_overwrite_replaces_a_train_run_once_the_new_one_has_a_checkpoint(inputs, run_copy, capsys):
    old_adapter = load_file(run_copy / "adapter" / "adapter_model.safetensors")
    code, out, _ = _run(_argv(inputs, run_copy, "--overwrite", "--r", "4"), capsys)
    assert code == 0
    new_adapter = load_file(run_copy / "adapter" / "adapter_model.safetensors")
    assert next(iter(new_adapter.values())).shape != next(iter(old_adapter.values())).shape
    assert files.owned_kind(run_copy) == "train-run"
    assert [p.name for p in run_copy.parent.iterdir()] == ["run"]


def test_overwrite_refuses_a_model_folder_and_the_commands_own_inputs(inputs, tmp_path, capsys):
    model_copy = tmp_path / "a-model"
    shutil.copytree(inputs["model"], model_copy)
    before = _digest(model_copy)
    code, _, err = _run(_argv(inputs, model_copy, "--overwrite"), capsys)
    _one_line_error(code, err, "not a folder loralab wrote as a train run", "--overwrite replaces only training runs")
    argv = _argv(inputs, model_copy, "--overwrite")
    argv[argv.index("--model") + 1] = str(model_copy)           # --model X --output X --overwrite
    code, _, err = _run(argv, capsys)
    _one_line_error(code, err, "is, holds or lies inside an input of this command")
    code, _, err = _run(_argv(inputs, inputs["model"].parent, "--overwrite"), capsys)   # holds the model
    _one_line_error(code, err, "is, holds or lies inside an input of this command")
    assert _digest(model_copy) == before and inputs["model"].is_dir()


def test_overwrite_recognises_a_run_of_loralab_0_1_by_its_layout(inputs, tmp_path, capsys):
    legacy = tmp_path / "legacy"
    shutil.copytree(GOLDEN_RUN, legacy)
    config = json.loads((legacy / "config.json").read_text())
    config.update(model=str(inputs["model"]), train_file=str(inputs["train"]))
    (legacy / "config.json").write_text(json.dumps(config))
    assert not (legacy / files.OWNER_MARKER).exists()
    code, _, _ = _run(_argv(inputs, legacy, "--overwrite"), capsys)
    assert code == 0 and files.owned_kind(legacy) == "train-run" and (legacy / "metrics.json").is_file()
    assert not (legacy / "final-adapter.safetensors").exists()   # the old run was replaced as a whole


def test_a_run_failing_before_its_first_step_leaves_nothing(inputs, tmp_path, capsys):
    output = tmp_path / "new"
    argv = _argv(inputs, output)
    argv[argv.index("--dev-file") + 1] = str(tmp_path / "missing.tsv")
    code, _, err = _run(argv, capsys)
    _one_line_error(code, err, "missing.tsv")
    assert not output.exists() and list(tmp_path.iterdir()) == []
    code, _, _ = _run(_argv(inputs, output), capsys)   # the fixed command is not blocked by leftovers
    assert code == 0


def test_a_new_run_diverging_before_its_first_checkpoint_leaves_nothing(inputs, tmp_path, capsys):
    output = tmp_path / "run"
    code, _, err = _run(_argv(inputs, output, "--lr", "1e30"), capsys)
    _one_line_error(code, err, "became nan at step 2; training stopped and no sane checkpoint was written yet",
                    "--lr 1e+29")
    assert list(tmp_path.iterdir()) == []


# -- case 3: checkpoints hold no pickles; a planted one never runs ---------------------------------------
def test_a_pickle_planted_as_rng_pt_never_runs_and_resume_says_why(inputs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(GOLDEN_RUN, run)   # a loralab 0.1 run: its checkpoint files are pickles (.pt)
    config = {**json.loads((run / "config.json").read_text()), "model": str(inputs["model"]),
              "train_file": str(inputs["train"]), "dev_file": str(inputs["dev"]), "test_file": None}
    (run / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "code-ran"
    torch.save({"python": fixtures.RunsCode(marker)}, run / "checkpoints" / "step-000009" / "rng.pt")
    code, _, err = _run(["train", "--output", str(run), "--resume"], capsys)
    _one_line_error(code, err, "no usable checkpoint", "rng.pt holds posix.system, not plain tensors; refused to load "
                    "it (nothing in it was run)")
    assert not marker.exists()


# -- case 4: one writer per output folder ----------------------------------------------------------------
SLOW_RUN = """
import json, sys, time
from loralab.training.config import TrainConfig
from loralab.training.run import run_training
from loralab.training.trainer import TrainerCallback

class Slow(TrainerCallback):
    def on_step_end(self, trainer, step, loss):
        print(f"step {step}", flush=True)
        time.sleep(0.5)

run_training(TrainConfig.from_dict(json.loads(sys.argv[1])), sys.argv[2], callbacks=[Slow()], log=lambda m: None)
"""


def test_a_second_writer_is_refused_while_a_run_is_running(inputs, tmp_path, capsys):
    from loralab.training.config import TrainConfig

    output = tmp_path / "busy"
    config = TrainConfig(model=str(inputs["model"]), train_file=str(inputs["train"]), dev_file=str(inputs["dev"]),
                         max_length=32, batch_size=8, max_steps=10, eval_every=5, checkpoint_every=2, lr=5e-3,
                         threads=1, progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    job = subprocess.Popen([sys.executable, "-c", SLOW_RUN, json.dumps(config.to_dict()), str(output)],
                           env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert job.stdout.readline().strip() == "step 1"
        for extra in (["--resume"], ["--overwrite"]):
            argv = ["train", "--output", str(output), *extra] if extra == ["--resume"] else _argv(inputs, output, *extra)
            deadline = time.time() + 60
            while extra == ["--resume"] and not (output / "checkpoints" / "LATEST").is_file() and time.time() < deadline:
                time.sleep(0.05)   # --resume needs the committed run; --overwrite is refused either way
            code, _, err = _run(argv, capsys)
            _one_line_error(code, err, f"is in use by PID {job.pid}")
        rest = job.communicate(timeout=120)[0]
    finally:
        job.kill()
    assert job.returncode == 0 and rest.split()[-1] == "10"   # the running job was unharmed
    assert json.loads((output / "metrics.json").read_text())["steps"] == 10


# -- case 5: unwritable outputs --------------------------------------------------------------------------
def test_unwritable_outputs_are_one_line(inputs, tmp_path, capsys, monkeypatch):
    code, _, err = _run(_argv(inputs, Path("/proc/loralab-x")), capsys)
    _one_line_error(code, err, "cannot write /proc/loralab-x")
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    code, _, err = _run(_argv(inputs, a_file), capsys)
    _one_line_error(code, err, f"{a_file} exists and is not a folder")
    assert a_file.read_text() == "not a folder"

    def read_only(*args, **kwargs):   # root ignores permission bits: inject what a read-only mount says
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(files.tempfile, "mkstemp", read_only)
    code, _, err = _run(_argv(inputs, tmp_path / "ro"), capsys)
    _one_line_error(code, err, "cannot write", "Read-only file system; choose a writable output location")
    assert not (tmp_path / "ro").exists()


def test_an_output_becoming_read_only_mid_run_stops_with_a_usable_checkpoint(inputs, tmp_path, capsys, monkeypatch):
    output = tmp_path / "run"
    real_write = files.atomic_write

    def read_only_after_step_3(path, write):
        if "step-000006" in str(path):
            raise files.unwritable(path, OSError(errno.EROFS, "Read-only file system"))
        return real_write(path, write)

    monkeypatch.setattr(files, "atomic_write", read_only_after_step_3)
    code, _, err = _run(_argv(inputs, output), capsys)
    _one_line_error(code, err, "could not write the checkpoint step-000006 at step 6", "Read-only file system",
                    f"its last complete checkpoint {output / 'checkpoints' / 'step-000003'} is intact",
                    f"`loralab train --output {output} --resume`")
    assert (output / "checkpoints" / "LATEST").read_text() == "step-000003\n"
    monkeypatch.setattr(files, "atomic_write", real_write)
    code, out, _ = _run(["train", "--output", str(output), "--resume"], capsys)
    assert code == 0 and "(step 3 of 6)" in out


# -- case 6: --epochs inf; a damaged latest checkpoint ---------------------------------------------------
@pytest.mark.parametrize("value", ["inf", "nan", "-1"])
def test_epochs_that_are_not_a_positive_number_are_one_line(inputs, tmp_path, capsys, value):
    argv = _argv(inputs, tmp_path / "run", "--epochs", value)
    argv.remove("--max-steps")
    argv.remove("6")
    code, _, err = _run(argv, capsys)
    _one_line_error(code, err, "epochs must be a positive number of passes over the training data")
    assert not (tmp_path / "run").exists()


def test_a_truncated_optimizer_state_falls_back_to_the_previous_checkpoint(run_copy, finished, capsys):
    optimizer_file = run_copy / "checkpoints" / "step-000006" / "optimizer.safetensors"
    optimizer_file.write_bytes(optimizer_file.read_bytes()[:64])
    code, out, _ = _run(["train", "--output", str(run_copy), "--resume"], capsys)
    assert code == 0
    assert "step-000006 cannot be used (optimizer.safetensors is truncated or corrupt" in out
    assert "resuming from the older checkpoint step-000003; removed the unusable step-000006" in out
    assert "(step 3 of 6)" in out
    expected = load_file(finished / "checkpoints" / "step-000006" / "trainable.safetensors")
    got = load_file(run_copy / "checkpoints" / "step-000006" / "trainable.safetensors")
    assert all(torch.equal(expected[k], got[k]) for k in expected)   # the same steps again, the same weights


# -- case 7: what --resume may change, recorded ----------------------------------------------------------
def test_resume_applies_allowed_flags_refuses_others_and_records_changes(inputs, run_copy, capsys):
    code, out, _ = _run(_argv(inputs, run_copy, "--resume"), capsys)   # the original command again: no change
    assert code == 0 and "resume changes" not in out and not (run_copy / "resumes.json").exists()
    code, _, err = _run(["train", "--output", str(run_copy), "--resume", "--seed", "3"], capsys)
    _one_line_error(code, err, "--seed cannot change when resuming (the run has 0, given 3)")
    code, _, err = _run(["train", "--output", str(run_copy), "--resume", "--r", "4"], capsys)
    _one_line_error(code, err, "--r (lora.r) cannot change when resuming (the run has 8, given 4)")
    code, _, err = _run(["train", "--output", str(run_copy), "--resume", "--overwrite"], capsys)
    _one_line_error(code, err, "give one of them")
    (run_copy / "checkpoints" / ".LATEST.x7f3k2a9.tmp").write_text("step-000003")   # case 10: stray temps
    (run_copy / "checkpoints" / ".tmp-left-by-loralab-0.1").mkdir()
    (run_copy / ".metrics.json.a1b2c3d4.tmp").write_text("{")
    code, out, _ = _run(["train", "--output", str(run_copy), "--resume", "--lr", "1e-3", "--max-steps", "9"], capsys)
    assert code == 0
    assert "resume changes max_steps 6 -> 9, lr 0.005 -> 0.001 (recorded in resumes.json)" in out
    assert "run length changed from 6 to 9 optimizer steps" in out
    records = json.loads((run_copy / "resumes.json").read_text())
    assert [r["changed"] for r in records] == [{"lr": [0.005, 0.001], "max_steps": [6, 9]}] and records[0]["step"] == 6
    config = json.loads((run_copy / "config.json").read_text())
    assert config["lr"] == 0.001 and config["max_steps"] == 9
    assert json.loads((run_copy / "metrics.json").read_text())["steps"] == 9
    leftovers = [p.name for p in run_copy.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".tmp-")]
    assert leftovers == []


# -- case 9: Ctrl-C / SIGTERM ----------------------------------------------------------------------------
def test_sigint_stops_at_a_step_boundary_with_a_checkpoint_and_says_how_to_resume(inputs, tmp_path, capsys):
    import signal

    from loralab.training.config import TrainConfig
    from loralab.training.run import run_training
    from loralab.training.trainer import TrainerCallback, TrainingInterrupted

    class CtrlC(TrainerCallback):
        def on_step_end(self, trainer, step, loss):
            if step == 2:
                os.kill(os.getpid(), signal.SIGINT)   # delivered to the handler run_training installed

    output = tmp_path / "run"
    config = TrainConfig(model=str(inputs["model"]), train_file=str(inputs["train"]), dev_file=str(inputs["dev"]),
                         max_length=32, batch_size=8, max_steps=6, eval_every=3, checkpoint_every=3, lr=5e-3,
                         threads=1, progress=False)
    # what the process had before (a shell's background job starts with SIGINT ignored, not the default)
    handler_before = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted) as caught:
        run_training(config, output, callbacks=[CtrlC()], log=lambda message: None)
    assert caught.value.exit_status == 130
    assert str(caught.value) == (f"stopped by SIGINT at step 2 of 6; the checkpoint {output / 'checkpoints' / 'step-000002'}"
                                 f" is saved. Continue with `loralab train --output {output} --resume`")
    assert signal.getsignal(signal.SIGINT) is handler_before   # handlers restored
    assert (output / "checkpoints" / "LATEST").read_text() == "step-000002\n"
    code, out, _ = _run(["train", "--output", str(output), "--resume"], capsys)
    assert code == 0 and "(step 2 of 6)" in out


# -- issue 18: diverged checkpoints are never resumed from; data errors name the flag --------------------
def _error_line(code: int, err: str) -> str:
    """The one error line (exit 2), without the `loralab train: error: ` prefix."""
    _one_line_error(code, err)
    line = next(line for line in err.splitlines() if line.startswith("loralab train: error: "))
    return line[len("loralab train: error: "):]


def _mark_insane(run: Path, *names: str) -> None:
    """What a diverged run leaves: checkpoints whose state.json records sane: false."""
    for name in names:
        path = run / "checkpoints" / name / "state.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "sane": False}))


def test_resume_passes_over_a_checkpoint_marked_not_sane_and_says_which(run_copy, finished, capsys):
    _mark_insane(run_copy, "step-000006")
    code, out, _ = _run(["train", "--output", str(run_copy), "--resume"], capsys)
    assert code == 0
    assert ("resuming from step-000003, the last checkpoint whose weights were sane; step-000006 was not and is "
            "removed\n") in out
    assert "(step 3 of 6)" in out
    state = json.loads((run_copy / "checkpoints" / "step-000006" / "state.json").read_text())
    assert state["sane"] is True     # trained again from step 3
    expected = load_file(finished / "checkpoints" / "step-000006" / "trainable.safetensors")
    got = load_file(run_copy / "checkpoints" / "step-000006" / "trainable.safetensors")
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_resume_with_no_sane_checkpoint_is_one_line_suggesting_a_lower_lr(run_copy, capsys):
    _mark_insane(run_copy, "step-000003", "step-000006")
    before = _digest(run_copy)
    code, _, err = _run(["train", "--output", str(run_copy), "--resume"], capsys)
    assert _error_line(code, err) == (
        f"no checkpoint in {run_copy / 'checkpoints'} has sane weights: step-000003 and step-000006 were not "
        "(weights not finite or above 1000x their start), so there is nothing to resume from. Start over with a "
        f"lower learning rate: `loralab train --output {run_copy} --overwrite --lr 0.0005`")
    assert _digest(run_copy) == before


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    return fixtures.write_tiny_causal(tmp_path_factory.mktemp("gpt2") / "gpt2")


def _small_argv(model: Path, data: Path, output: Path, *extra: str) -> list[str]:
    return ["train", "--model", str(model), "--train-file", str(data), "--max-steps", "2", "--batch-size", "4",
            "--threads", "1", "--no-progress", "--output", str(output), *extra]


def test_causal_lm_jsonl_trains_on_its_prompt_and_target_columns(tiny_gpt2, tmp_path, capsys):
    data = tmp_path / "lm.jsonl"
    rows = [line.split("||") for line in fixtures.e2e_lines(8)]
    data.write_text("".join(json.dumps({"prompt": mr, "target": text}) + "\n" for mr, text in rows))
    code, out, err = _run(_small_argv(tiny_gpt2, data, tmp_path / "run", "--task", "causal-lm", "--text-column",
                                   "prompt", "--target-column", "target"), capsys)
    assert code == 0, err
    assert "data: train 8 examples; task causal-lm" in out and (tmp_path / "run" / "adapter").is_dir()
    code, _, err = _run(_small_argv(tiny_gpt2, data, tmp_path / "no-target", "--task", "causal-lm", "--text-column",
                                 "prompt"), capsys)
    assert _error_line(code, err) == (f"{data}:1: the example has a prompt but no target text for the causal LM to "
                                      "learn; name the target column with --target-column (the prompt's with "
                                      "--text-column)")
    code, _, err = _run(_small_argv(tiny_gpt2, data, tmp_path / "no-task", "--text-column", "prompt",
                                 "--target-column", "target"), capsys)
    assert _error_line(code, err) == ("--target-column names the completion a causal LM learns, but the task is "
                                      "classification; add --task causal-lm, or drop --target-column and name the "
                                      "label with --label-column")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lm.jsonl", "run"]


@pytest.mark.parametrize("case", ["nan-label", "no-assistant", "chat-classifier"])
def test_data_errors_are_one_line_naming_the_row_and_the_fix(inputs, tiny_gpt2, tmp_path, capsys, case):
    data = tmp_path / "data.jsonl"
    if case == "nan-label":
        data.write_text('{"sentence": "fine", "label": 1.5}\n{"sentence": "awful", "label": NaN}\n')
        argv = _small_argv(inputs["model"], data, tmp_path / "run", "--task", "regression")
        expected = f"{data}:2: column 'label' (the label) is nan, not a finite number; fix or remove this row"
    elif case == "no-assistant":
        data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
        argv = _small_argv(tiny_gpt2, data, tmp_path / "run", "--format", "chat", "--task", "causal-lm")
        expected = (f"{data}:1: the conversation has no assistant turn (or only empty ones), so nothing would be "
                    "learned from it; add an assistant message, or remove the row")
    else:
        data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                                 {"role": "assistant", "content": "hello"}]}) + "\n")
        argv = _small_argv(inputs["model"], data, tmp_path / "run", "--format", "chat", "--task", "classification")
        expected = (f"{data}:1: chat data (messages) trains a causal LM, but the task is classification; use --task "
                    "causal-lm, or for classification give a TSV/CSV/JSONL file with --text-column and --label-column")
    code, _, err = _run(argv, capsys)
    assert _error_line(code, err) == expected
    assert not (tmp_path / "run").exists()
