"""Resumable training checkpoints, written so that a crash at any moment leaves the last good one intact.

Layout under a run's `checkpoints/` folder:

    checkpoints/
      LATEST                 one line: the name of the newest complete checkpoint ("step-000120")
      step-000120/
        adapter/             the adapter in PEFT layout (loralab.save_adapter), usable on its own
        trainable.pt         {parameter name: tensor} of every parameter that requires grad (exact values)
        optimizer.pt         optimizer.state_dict()
        scheduler.pt         lr scheduler state_dict()
        rng.pt               Python, NumPy and torch (CPU and CUDA) generator states
        state.json           step, epoch, position in the epoch's batches, best metric, history

A checkpoint is built in a `.tmp-*` folder next to the others, renamed to `step-N` (one atomic rename),
and only then is LATEST replaced (an atomic os.replace of a one-line file). A kill during any of these
leaves LATEST naming the previous complete checkpoint; leftover `.tmp-*` folders are removed on the next
save. Older checkpoints beyond `keep` are deleted after LATEST moves.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from loralab.errors import LoraLabError

LATEST = "LATEST"


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` via a temp file in the same folder and os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save to a temp file in the same folder, then os.replace."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def rng_state() -> dict[str, Any]:
    """Every generator the training loop may draw from (dropout, LoRA dropout, shuffles)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """{name: detached CPU copy} of the parameters that require grad."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Copy saved trainable tensors into the model; the trainable sets must match exactly."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(params) != set(tensors):
        missing, extra = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
        raise LoraLabError(f"{source}: checkpoint does not match this run's trainable parameters "
                           f"(missing {missing[:3]}, unexpected {extra[:3]}); resume with the same model and "
                           "LoRA settings, or start a new output folder")
    with torch.no_grad():
        for name, param in params.items():
            if param.shape != tensors[name].shape:
                raise LoraLabError(f"{source}: {name} has shape {tuple(tensors[name].shape)}, the model "
                                   f"{tuple(param.shape)}; resume with the same LoRA settings")
            param.copy_(tensors[name])


def _step_name(step: int) -> str:
    return f"step-{step:06d}"


def save_checkpoint(folder: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, state: dict[str, Any], keep: int = 2,
                    write_adapter: bool = True) -> Path:
    """Write a checkpoint for `state["step"]` under `folder` and point LATEST at it. Returns its path.

    model: the unwrapped (non-DDP) model. state: JSON-serialisable trainer state; must hold "step".
    keep: how many complete checkpoints to keep (the newest ones), at least 1.
    """
    from loralab.formats.peft import save_adapter

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".tmp-*"):  # left by a run killed mid-write
        shutil.rmtree(stale, ignore_errors=True)
    name = _step_name(int(state["step"]))
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=".tmp-"))
    try:
        if write_adapter:
            save_adapter(model, tmp / "adapter")
        torch.save(trainable_state(model), tmp / "trainable.pt")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
        final = folder / name
        if final.exists():  # the same step saved again (e.g. after a resume): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(folder / LATEST, name + "\n")
    complete = sorted(p for p in folder.glob("step-*") if p.is_dir())
    for old in complete[:-max(1, keep)]:
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The checkpoint LATEST names, or None when there is none yet."""
    pointer = Path(folder) / LATEST
    if not pointer.is_file():
        return None
    path = Path(folder) / pointer.read_text(encoding="utf-8").strip()
    if not (path / "state.json").is_file():
        raise LoraLabError(f"{pointer} names {path.name}, which is missing or incomplete; "
                           "delete the checkpoints folder to start over")
    return path


def load_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, restore_rng: bool = True) -> dict[str, Any]:
    """Restore model trainables, optimizer, scheduler and RNG states from `path`; returns the trainer state."""
    path = Path(path)
    load_trainable_state(model, torch.load(path / "trainable.pt", weights_only=True), str(path))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    if restore_rng:
        set_rng_state(torch.load(path / "rng.pt", weights_only=False))
    return json.loads((path / "state.json").read_text(encoding="utf-8"))
