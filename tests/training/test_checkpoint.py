"""Checkpoints: safetensors + JSON only; a run killed with SIGKILL and resumed ends with the same adapter as an
uninterrupted run; a crash while writing never damages the latest checkpoint; a damaged one falls back to the
previous; a planted pickle is never run."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import loralab
from loralab import files
from loralab.testing import tiny_model
from loralab.training.checkpoint import (LATEST, NoSaneCheckpoint, latest_checkpoint, load_checkpoint,
                                         read_checkpoint, remove_leftovers, save_checkpoint, usable_checkpoint)
from loralab.training.config import TrainConfig
from loralab.training.state_files import UnreadableState

REPO = Path(__file__).resolve().parents[2]
GOLDEN_RUN = REPO / "tests" / "golden" / "v0.1" / "run-bert"

# A run built through the Python API with a callback that sleeps after every step, so the test can kill it
# part way (the trainer itself has no test hooks).
SLOW_RUN = """
import json, sys, time
from loralab.training.config import TrainConfig
from loralab.training.run import run_training
from loralab.training.trainer import TrainerCallback

class Slow(TrainerCallback):
    def on_step_end(self, trainer, step, loss):
        time.sleep(0.4)

run_training(TrainConfig.from_dict(json.loads(sys.argv[1])), sys.argv[2], callbacks=[Slow()])
"""


def _config(model_dir: Path, files_: dict[str, Path]) -> TrainConfig:
    return TrainConfig(model=str(model_dir), train_file=str(files_["train"]), dev_file=str(files_["dev"]),
                       test_file=str(files_["test"]), max_length=32, batch_size=8, epochs=3, lr=5e-3,
                       lora={"r": 8, "alpha": 16.0, "dropout": 0.1},  # LoRA dropout: resume must restore the RNG
                       checkpoint_every=3, eval_every=6, threads=1, progress=False)


def test_sigkill_then_resume_gives_the_same_adapter(tiny_bert_dir, sst2_files, tmp_path, capsys):
    from loralab.cli.main import main
    from loralab.training.run import run_training

    config = _config(tiny_bert_dir, sst2_files)
    run_training(config, tmp_path / "straight", log=lambda message: None)

    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-c", SLOW_RUN, json.dumps(config.to_dict()), str(killed)],
                               cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    pointer = killed / "checkpoints" / LATEST
    try:
        while time.time() < deadline:
            # Kill after the step-12 checkpoint: past two evaluations, with 24 of 36 steps still to go.
            if pointer.is_file() and pointer.read_text().strip() >= "step-000012":
                break
            assert process.poll() is None, "the run ended before it could be killed"
            time.sleep(0.05)
        else:
            pytest.fail("no checkpoint appeared in time")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (killed / "metrics.json").exists()
    killed_at = int(pointer.read_text().strip().split("-")[1])
    assert 12 <= killed_at < 36

    assert main(["train", "--output", str(killed), "--resume"]) == 0
    resumed = capsys.readouterr().out
    assert "resumed from" in resumed and f"(step {killed_at} of 36)" in resumed
    assert f"took over the lock of PID {process.pid}" in resumed   # the killed run's lock is stale

    a, b = (load_file(run / "adapter" / "adapter_model.safetensors") for run in (tmp_path / "straight", killed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    last_a, last_b = (load_file(latest_checkpoint(run / "checkpoints") / "trainable.safetensors")
                      for run in (tmp_path / "straight", killed))
    assert all(torch.equal(last_a[k], last_b[k]) for k in last_a)
    metrics_a = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    metrics_b = json.loads((killed / "metrics.json").read_text())
    assert metrics_a["test"] == metrics_b["test"] and metrics_a["best_step"] == metrics_b["best_step"]
    assert [r for r in metrics_a["history"] if r["split"] == "dev"] == \
        [r for r in metrics_b["history"] if r["split"] == "dev"]


def _tiny_state():
    model = tiny_model("bert")
    loralab.inject(model, loralab.LoraConfig(r=2, modules_to_save=["classifier"]))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    model(**{"input_ids": torch.tensor([[1, 2, 3]])}).logits.sum().backward()
    optimizer.step()   # an optimizer state with tensors in it
    scheduler.step()
    return model, optimizer, scheduler


def test_checkpoints_hold_only_safetensors_and_json(tmp_path):
    model, optimizer, scheduler = _tiny_state()
    path = save_checkpoint(tmp_path, model, optimizer, scheduler, {"step": 1})
    written = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
    assert written == {".loralab-output", "adapter/adapter_config.json", "adapter/adapter_model.safetensors",
                       "adapter/README.md",   # the model card, like PEFT's
                       "trainable.safetensors", "optimizer.safetensors", "optimizer.json", "scheduler.json",
                       "rng.safetensors", "rng.json", "state.json"}
    restored = read_checkpoint(path)
    original = optimizer.state_dict()
    assert restored.optimizer["param_groups"] == original["param_groups"]   # betas back as a tuple
    for index, entry in original["state"].items():
        assert all(torch.equal(entry[k], restored.optimizer["state"][index][k]) for k in entry)
    assert restored.scheduler == scheduler.state_dict()


def test_crash_while_writing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model, optimizer, scheduler = _tiny_state()
    folder = tmp_path / "checkpoints"
    save_checkpoint(folder, model, optimizer, scheduler, {"step": 1})
    saved = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(1.0)

    real_write = files.write_safetensors

    def dying_write(path, tensors, metadata=None):
        if Path(path).name == "optimizer.safetensors":
            raise KeyboardInterrupt("killed mid-write")
        return real_write(path, tensors, metadata)

    monkeypatch.setattr(files, "write_safetensors", dying_write)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(folder, model, optimizer, scheduler, {"step": 2})
    monkeypatch.setattr(files, "write_safetensors", real_write)
    assert latest_checkpoint(folder).name == "step-000001"
    assert sorted(p.name for p in folder.iterdir()) == [LATEST, "step-000001"]
    state = load_checkpoint(latest_checkpoint(folder), model, optimizer, scheduler)
    assert state == {"step": 1}
    assert all(torch.equal(p, saved[n]) for n, p in model.named_parameters() if p.requires_grad)
    adapter = loralab.read_adapter(latest_checkpoint(folder) / "adapter")
    assert adapter.factors  # the PEFT-layout adapter inside a checkpoint is usable on its own


def test_old_checkpoints_are_pruned_and_leftovers_of_killed_writers_removed(tmp_path):
    model, optimizer, scheduler = _tiny_state()
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / ".tmp-left-by-loralab-0.1").mkdir()          # 0.1's temporary checkpoint folder
    (folder / ".LATEST.x7f3k2a9.tmp").write_text("step")   # 0.1's temporary LATEST (no PID in the name)
    (folder / f".step-000009.{2 ** 22 + 7}.abcd1234.tmp").mkdir()   # a PID that does not exist
    removed = remove_leftovers(folder)
    assert len(removed) == 3 and not list(folder.iterdir())
    for step in (1, 2, 3, 4):
        save_checkpoint(folder, model, optimizer, scheduler, {"step": step}, keep=2, also_keep={"step-000001"})
    assert sorted(p.name for p in folder.iterdir()) == [LATEST, "step-000001", "step-000003", "step-000004"]
    assert (folder / LATEST).read_text() == "step-000004\n"


def test_resume_refuses_a_checkpoint_of_other_lora_settings(tmp_path):
    model, optimizer, scheduler = _tiny_state()
    save_checkpoint(tmp_path, model, optimizer, scheduler, {"step": 1})
    other = tiny_model("bert")
    loralab.inject(other, loralab.LoraConfig(r=4, modules_to_save=["classifier"]))
    other_opt = torch.optim.AdamW([p for p in other.parameters() if p.requires_grad])
    with pytest.raises(loralab.LoraLabError, match="same LoRA settings"):
        load_checkpoint(latest_checkpoint(tmp_path), other, other_opt,
                        torch.optim.lr_scheduler.LambdaLR(other_opt, lambda s: 1.0))


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    model, optimizer, scheduler = _tiny_state()
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, model, optimizer, scheduler, {"step": step}, keep=3)
    optimizer_file = tmp_path / "step-000003" / "optimizer.safetensors"
    optimizer_file.write_bytes(optimizer_file.read_bytes()[:100])        # truncated
    (tmp_path / "step-000002" / "state.json").write_text('{"step": ')   # cut off mid-write
    said = []
    checkpoint = usable_checkpoint(tmp_path, said.append)
    assert checkpoint.path.name == "step-000001" and checkpoint.state == {"step": 1}
    assert len(said) == 2
    assert said[0].startswith(f"checkpoint {tmp_path / 'step-000003'} cannot be used (optimizer.safetensors is "
                              "truncated or corrupt (") and said[0].endswith("); falling back to step-000002")
    assert said[1].startswith(f"checkpoint {tmp_path / 'step-000002'} cannot be used (state.json is truncated or "
                              "corrupt (") and said[1].endswith("); falling back to step-000001")
    (tmp_path / "step-000001" / "rng.json").unlink()
    with pytest.raises(loralab.LoraLabError, match=r"no usable checkpoint in .*step-000001: rng.json is missing\); "
                                                   r"start the run again with --overwrite"):
        usable_checkpoint(tmp_path, said.append)


def test_checkpoints_whose_weights_were_not_sane_are_never_resumed_from(tmp_path):
    """However they got there (sane: false recorded, or NaN in the tensors without a record), the newest
    sane checkpoint is the one resumed from, and the skipped ones are named."""
    model, optimizer, scheduler = _tiny_state()
    for step, sane in ((2, True), (4, True), (6, False), (8, None)):
        if step == 8:   # no record, as loralab 0.1 wrote them, but a NaN in the weights
            with torch.no_grad():
                next(p for p in model.parameters() if p.requires_grad).fill_(float("nan"))
        state = {"step": step} if sane is None else {"step": step, "sane": sane}
        save_checkpoint(tmp_path, model, optimizer, scheduler, state, keep=4)
    said = []
    checkpoint = usable_checkpoint(tmp_path, said.append)
    assert checkpoint.path.name == "step-000004" and checkpoint.state == {"step": 4, "sane": True}
    assert checkpoint.skipped_insane == ("step-000008", "step-000006") and said == []
    assert (tmp_path / LATEST).read_text() == "step-000008\n"    # reading changes nothing on disk

    for name in ("step-000002", "step-000004"):
        state = json.loads((tmp_path / name / "state.json").read_text())
        (tmp_path / name / "state.json").write_text(json.dumps({**state, "sane": False}))
    with pytest.raises(NoSaneCheckpoint) as caught:
        usable_checkpoint(tmp_path, said.append)
    assert caught.value.names == ("step-000008", "step-000006", "step-000004", "step-000002")
    assert str(caught.value) == (f"no checkpoint in {tmp_path} has sane weights (step-000008, step-000006, "
                                 "step-000004, step-000002 did not); start the run again with --overwrite and a "
                                 "lower --lr")


@pytest.mark.parametrize("name", ["rng.pt", "optimizer.pt", "trainable.pt", "scheduler.pt"])
def test_a_pickle_planted_in_an_old_checkpoint_is_never_run(tmp_path, name, runs_code):
    checkpoint = tmp_path / "step-000009"
    shutil.copytree(GOLDEN_RUN / "checkpoints" / "step-000009", checkpoint)
    marker = tmp_path / "code-ran"
    torch.save({"python": runs_code(marker)}, checkpoint / name)
    with pytest.raises(UnreadableState, match=f"{name} holds posix.system, not plain tensors; refused to load it"):
        read_checkpoint(checkpoint)
    assert not marker.exists()


def test_old_checkpoint_with_numpy_rng_state_is_read_without_unpickling_code(tmp_path):
    checkpoint = read_checkpoint(GOLDEN_RUN / "checkpoints" / "step-000009")
    assert checkpoint.state["step"] == 9 and checkpoint.rng["numpy"][0] == "MT19937"
    assert checkpoint.rng["numpy"][1].shape == (624,) and checkpoint.rng["torch"].dtype == torch.uint8
