"""Data parallel training: `torchrun --nproc_per_node=2 -m loralab train` (gloo, 2 CPU processes) on a tiny
BERT gives the same adapter as one process with the same global batch, and synchronises only LoRA."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from loralab.training import distributed

REPO = Path(__file__).resolve().parents[2]


def _args(model_dir: Path, files: dict[str, Path], output: Path, batch_size: int, grad_accum: int) -> list[str]:
    return ["train", "--output", str(output), "--model", str(model_dir), "--train-file", str(files["train"]),
            "--dev-file", str(files["dev"]), "--test-file", str(files["test"]), "--max-length", "32",
            "--batch-size", str(batch_size), "--grad-accum", str(grad_accum), "--epochs", "2", "--lr", "5e-3",
            "--eval-every", "6", "--checkpoint-every", "0", "--threads", "1", "--no-progress"]


def test_two_process_ddp_matches_single_process_with_the_same_global_batch(tiny_bert_dir, sst2_files, tmp_path,
                                                                           capsys):
    from loralab.cli.main import main

    # One process: micro-batches of 4, two per step. Two processes: 4 each, one micro-batch per step. The
    # sampler gives rank r the global batches r, r+2, ..., so both see the same 8 examples per step.
    assert main(_args(tiny_bert_dir, sst2_files, tmp_path / "single", 4, 2)) == 0
    single_out = capsys.readouterr().out
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "loralab", *_args(tiny_bert_dir, sst2_files, tmp_path / "ddp", 4, 1)]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]

    assert "1 process(es)" in single_out and "2 process(es)" in result.stdout
    # Only rank 0 prints (one summary line) and DDP reduces exactly the trainable tensors.
    assert result.stdout.count("trainable params:") == 1
    assert "exactly the trainable ones" in result.stdout and "gloo, 2 processes" in result.stdout

    a = load_file(tmp_path / "single" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "ddp" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and len(a) > 4
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)
    metrics_a = json.loads((tmp_path / "single" / "metrics.json").read_text())
    metrics_b = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics_a["steps"] == metrics_b["steps"] == 24  # 96 examples / global batch 8 * 2 epochs
    assert metrics_b["world_size"] == 2
    assert metrics_a["test"]["accuracy"] == metrics_b["test"]["accuracy"]
    assert metrics_a["test"]["loss"] == pytest.approx(metrics_b["test"]["loss"], abs=1e-5)
    train_a = [r["loss"] for r in metrics_a["history"] if r["split"] == "train"]
    train_b = [r["loss"] for r in metrics_b["history"] if r["split"] == "train"]
    assert train_a == pytest.approx(train_b, abs=1e-5)
    # Rank 0 alone wrote the folder: no stray files from rank 1.
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == \
        [".loralab-output", ".loralab.lock", "adapter", "checkpoints", "config.json", "metrics.csv", "metrics.json",
         "training.png"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_single_process_setup_needs_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = distributed.setup()
    assert not info.enabled and info.is_main and info.device.type == "cpu"
    model = torch.nn.Linear(2, 2)
    assert distributed.wrap(model, info) is model and distributed.synchronised_parameters(model) == []


def test_incomplete_torchrun_environment_is_a_clear_error(monkeypatch):
    from loralab.errors import LoraLabError

    monkeypatch.setenv("WORLD_SIZE", "2")
    for key in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(LoraLabError, match="launch with torchrun"):
        distributed.setup()
