"""Sharded training: `torchrun --nproc_per_node=2 -m loralab train --fsdp` (FSDP2, gloo, 2 CPU processes) on a
tiny BERT gives the same losses and adapter as one process with the same global batch, and its checkpoints
resume (a run continued from its checkpoint matches a one-process run continued the same way)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from loralab.training import fsdp

REPO = Path(__file__).resolve().parents[2]


def _args(model_dir: Path, files: dict[str, Path], output: Path, batch_size: int, grad_accum: int,
          *extra: str) -> list[str]:
    return ["train", "--output", str(output), "--model", str(model_dir), "--train-file", str(files["train"]),
            "--dev-file", str(files["dev"]), "--test-file", str(files["test"]), "--max-length", "32",
            "--batch-size", str(batch_size), "--grad-accum", str(grad_accum), "--epochs", "2", "--lr", "5e-3",
            "--eval-every", "5", "--checkpoint-every", "4", "--log-every", "1", "--threads", "1", "--no-progress",
            *extra]


def _torchrun(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "loralab",
               *args]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def test_two_process_fsdp_matches_one_process_and_resumes(tiny_bert_dir, sst2_files, tmp_path):
    from loralab.cli.main import main

    # One process: micro-batches of 4, two per step; two processes: 4 each (as in the DDP test). Both stop
    # at step 10 of the 24 and are resumed to the end from their checkpoints.
    for extra in (("--max-steps", "10"), ("--resume", "--max-steps", "24")):
        assert main(_args(tiny_bert_dir, sst2_files, tmp_path / "single", 4, 2, *extra)) == 0
        result = _torchrun(_args(tiny_bert_dir, sst2_files, tmp_path / "fsdp", 4, 1, "--fsdp", *extra))
    assert "2 process(es)" in result.stdout and result.stdout.count("resumed from") == 1
    assert result.stdout.count("FSDP (gloo, 2 processes) shards") == 1     # rank 0 says it, once

    metrics_a = json.loads((tmp_path / "single" / "metrics.json").read_text())
    metrics_b = json.loads((tmp_path / "fsdp" / "metrics.json").read_text())
    assert metrics_a["steps"] == metrics_b["steps"] == 24 and metrics_b["world_size"] == 2
    train_a = [r["loss"] for r in metrics_a["history"] if r["split"] == "train"]
    train_b = [r["loss"] for r in metrics_b["history"] if r["split"] == "train"]
    assert len(train_a) == 24 and train_a == pytest.approx(train_b, abs=1e-5)
    assert metrics_a["test"]["loss"] == pytest.approx(metrics_b["test"]["loss"], abs=1e-5)
    a = load_file(tmp_path / "single" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "fsdp" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and len(a) > 4
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)


def test_a_model_without_transformer_blocks_cannot_be_sharded():
    from loralab.errors import LoraLabError

    with pytest.raises(LoraLabError, match="names no transformer blocks.*drop --fsdp"):
        fsdp._blocks(torch.nn.Sequential(torch.nn.Linear(2, 2)))
