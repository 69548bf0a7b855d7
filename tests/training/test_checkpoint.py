"""Checkpoints: a run killed with SIGKILL and resumed ends with the same adapter as an uninterrupted run;
a crash while writing never damages the latest checkpoint."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import loralab
from loralab.testing import tiny_model
from loralab.training import checkpoint as ckpt
from loralab.training.checkpoint import LATEST, latest_checkpoint, load_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parents[2]


def _train_command(model_dir: Path, files: dict[str, Path], output: Path, resume: bool = False) -> list[str]:
    command = [sys.executable, "-m", "loralab", "train", "--output", str(output)]
    if resume:
        return command + ["--resume"]
    return command + [
        "--model", str(model_dir), "--train-file", str(files["train"]), "--dev-file", str(files["dev"]),
        "--test-file", str(files["test"]), "--max-length", "32", "--batch-size", "8", "--epochs", "3",
        "--lr", "5e-3", "--dropout", "0.1",  # LoRA dropout draws from the torch RNG: resume must restore it
        "--checkpoint-every", "3", "--eval-every", "6", "--threads", "1", "--no-progress"]


def _run_here(command: list[str], capsys) -> str:
    """Run a `python -m loralab ...` command in this process (saves a slow interpreter start)."""
    from loralab.cli.main import main

    assert main(command[3:]) == 0
    return capsys.readouterr().out


def test_sigkill_then_resume_gives_the_same_adapter(tiny_bert_dir, sst2_files, tmp_path, capsys):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    _run_here(_train_command(tiny_bert_dir, sst2_files, tmp_path / "straight"), capsys)

    killed = tmp_path / "killed"
    slow_env = {**env, "LORALAB_TEST_STEP_SLEEP": "0.4"}
    process = subprocess.Popen(_train_command(tiny_bert_dir, sst2_files, killed), cwd=REPO, env=slow_env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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

    resumed = _run_here(_train_command(tiny_bert_dir, sst2_files, killed, resume=True), capsys)
    assert "resumed from" in resumed and f"(step {killed_at} of 36)" in resumed

    for name in ("adapter/adapter_model.safetensors",):
        a, b = load_file(tmp_path / "straight" / name), load_file(killed / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    last_a = torch.load(latest_checkpoint(tmp_path / "straight" / "checkpoints") / "trainable.pt")
    last_b = torch.load(latest_checkpoint(killed / "checkpoints") / "trainable.pt")
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
    return model, optimizer, scheduler


def test_crash_while_writing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model, optimizer, scheduler = _tiny_state()
    folder = tmp_path / "checkpoints"
    save_checkpoint(folder, model, optimizer, scheduler, {"step": 1})
    saved = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(1.0)

    real_save = torch.save

    def dying_save(obj, path, *args, **kwargs):
        if str(path).endswith("optimizer.pt"):
            raise KeyboardInterrupt("killed mid-write")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(ckpt.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(folder, model, optimizer, scheduler, {"step": 2})
    monkeypatch.setattr(ckpt.torch, "save", real_save)
    assert latest_checkpoint(folder).name == "step-000001"
    assert not (folder / "step-000002").exists() and not list(folder.glob(".tmp-*"))
    state = load_checkpoint(latest_checkpoint(folder), model, optimizer, scheduler)
    assert state == {"step": 1}
    assert all(torch.equal(p, saved[n]) for n, p in model.named_parameters() if p.requires_grad)
    adapter = loralab.read_adapter(latest_checkpoint(folder) / "adapter")
    assert adapter.factors  # the PEFT-layout adapter inside a checkpoint is usable on its own


def test_old_checkpoints_are_pruned_and_stale_temp_folders_removed(tmp_path):
    model, optimizer, scheduler = _tiny_state()
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / ".tmp-left-by-a-kill").mkdir()
    for step in (1, 2, 3):
        save_checkpoint(folder, model, optimizer, scheduler, {"step": step}, keep=2)
    assert sorted(p.name for p in folder.iterdir()) == [LATEST, "step-000002", "step-000003"]
    assert (folder / LATEST).read_text() == "step-000003\n"


def test_resume_refuses_a_checkpoint_of_other_lora_settings(tmp_path):
    model, optimizer, scheduler = _tiny_state()
    save_checkpoint(tmp_path, model, optimizer, scheduler, {"step": 1})
    other = tiny_model("bert")
    loralab.inject(other, loralab.LoraConfig(r=4, modules_to_save=["classifier"]))
    other_opt = torch.optim.AdamW([p for p in other.parameters() if p.requires_grad])
    with pytest.raises(loralab.LoraLabError, match="same LoRA settings"):
        load_checkpoint(latest_checkpoint(tmp_path), other, other_opt,
                        torch.optim.lr_scheduler.LambdaLR(other_opt, lambda s: 1.0))
