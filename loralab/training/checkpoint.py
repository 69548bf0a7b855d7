"""Resumable training checkpoints in safetensors + JSON, written so that a crash at any moment leaves the
last complete one intact, and read back with a fall-back to an older one when the newest is damaged.

Layout under a run's `checkpoints/` folder:

    checkpoints/
      LATEST                   one line: the name of the newest complete checkpoint ("step-000120")
      step-000120/
        .loralab-output        {"kind": "checkpoint"} (loralab.files.mark_owned)
        adapter/               the adapter in PEFT layout (LoRA runs), usable on its own
        trainable.safetensors  every parameter that requires grad, by name (exact values)
        optimizer.safetensors  optimizer state tensors;  optimizer.json: param groups and scalars
        scheduler.json         the learning-rate scheduler's state
        rng.safetensors        torch (CPU, CUDA) and NumPy generator states;  rng.json: Python's, NumPy's scalars
        state.json             step, epoch, position in the epoch's batches, best metric, history, and the
                               sanity record (max |w| of the trainable tensors; see loralab.training.trainer)

A checkpoint is built in a temporary sibling folder (loralab.files.atomic_folder), renamed to `step-N`, and
only then does LATEST move to it (an atomic replace of a one-line file). A kill at any moment leaves LATEST
naming a complete checkpoint; temporary leftovers are removed by the next run. After LATEST moves, older
checkpoints are deleted except the `keep` newest and those the trainer names in `also_keep` (the last sane
one, and the best one on dev, whose trainable.safetensors are the best adapter's tensors).

Reading (`usable_checkpoint`): LATEST's checkpoint is read whole into memory before anything is applied;
if a file is missing, truncated or corrupt, the previous kept checkpoint is tried, and so on, each
fall-back said in one line. A checkpoint whose weights were not sane (state.json's `sane: false`, or a
trainable value that is NaN/Inf) is never resumed from, however it got there (a run that diverged before
its first sane checkpoint, one that ended or was killed with blown-up but finite weights): the older ones
are tried, and the caller says which were skipped (`Checkpoint.skipped_insane`, `NoSaneCheckpoint`).
Checkpoints of loralab 0.1 (trainable.pt, optimizer.pt, scheduler.pt, rng.pt, best.pt) are read with
torch.load(weights_only=True) (loralab.training.state_files.load_legacy_pt).
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from loralab import files
from loralab.errors import LoraLabError
from loralab.formats.peft import save_adapter
from loralab.training.state_files import (UnreadableState, capture_rng, check_optimizer_state, load_legacy_pt,
                                          optimizer_files, optimizer_state, restore_rng, rng_files, rng_state)

LATEST = "LATEST"
CHECKPOINT_KIND = "checkpoint"
TRAINABLE = "trainable.safetensors"
STATE = "state.json"
LEGACY_BEST = "best.pt"


@dataclass
class Checkpoint:
    """A checkpoint read whole into memory (nothing applied yet). rng None: not restored."""

    path: Path
    trainable: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any] | None
    state: dict[str, Any]
    skipped_insane: tuple[str, ...] = ()   # newer checkpoints passed over because their weights were not sane


class NoSaneCheckpoint(LoraLabError):
    """Every readable checkpoint in a folder holds weights that were not sane; `names` lists them, newest first."""

    def __init__(self, folder: Path, names: list[str]):
        self.folder, self.names = folder, tuple(names)
        super().__init__(f"no checkpoint in {folder} has sane weights ({', '.join(names)} did not); start the run "
                         "again with --overwrite and a lower --lr")


def step_name(step: int) -> str:
    return f"step-{step:06d}"


def step_of(name: str) -> int | None:
    """The step of a checkpoint folder name, None for other names."""
    number = name[len("step-"):] if name.startswith("step-") else ""
    return int(number) if number.isdigit() else None


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


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------
def write_measured_json(path: Path, data: Any) -> Path:
    """JSON of measured values (histories, metrics), atomically. Unlike files.write_json it lets a
    diverged metric through as NaN/Infinity (Python's json reads them back) instead of failing the save."""
    return files.write_text(path, json.dumps(data, indent=2) + "\n")


def save_checkpoint(folder: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    state: dict[str, Any], keep: int = 2, write_adapter: bool = True,
                    also_keep: Iterable[str] = ()) -> Path:
    """Write a checkpoint for `state["step"]` under `folder` and point LATEST at it. Returns its path.

    model: the unwrapped (non-DDP) model. state: JSON-serialisable trainer state; must hold "step".
    keep: how many of the newest complete checkpoints to keep, at least 1; `also_keep`: names kept too.
    """
    folder = Path(folder)
    name = step_name(int(state["step"]))
    with files.atomic_folder(folder / name, CHECKPOINT_KIND, replace=True) as scratch:
        if write_adapter:
            save_adapter(model, scratch / "adapter")
        files.write_safetensors(scratch / TRAINABLE, trainable_state(model))
        _write_pair(scratch, "optimizer", *optimizer_files(optimizer.state_dict()))
        files.write_json(scratch / "scheduler.json", scheduler.state_dict())
        _write_pair(scratch, "rng", *rng_files(capture_rng()))
        write_measured_json(scratch / STATE, state)
    files.write_text(folder / LATEST, name + "\n")
    _prune(folder, name, keep, set(also_keep))
    return folder / name


def _write_pair(folder: Path, stem: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    files.write_safetensors(folder / f"{stem}.safetensors", tensors)
    files.write_json(folder / f"{stem}.json", meta)


def _prune(folder: Path, newest: str, keep: int, also_keep: set[str]) -> None:
    """Delete checkpoints beyond the `keep` newest up to `newest`, except `also_keep`; checkpoints of a
    later step than `newest` belong to an abandoned continuation (a rewound run) and go too."""
    current = step_of(newest)
    complete = sorted((step_of(p.name), p) for p in folder.iterdir()
                      if p.is_dir() and step_of(p.name) is not None)
    kept = [p for step, p in complete if step <= current][-max(1, keep):]
    for step, path in complete:
        if path not in kept and path.name not in also_keep and path.name != newest:
            shutil.rmtree(path, ignore_errors=True)


def remove_leftovers(folder: str | Path) -> list[Path]:
    """Temporary files and folders of killed writers in a checkpoints folder whose run holds the output
    lock: `.*.tmp` of any age, and the `.tmp-*` folders of loralab 0.1."""
    folder = Path(folder)
    removed = files.remove_stale_temps(folder, locked=True)
    for stale in folder.glob(".tmp-*") if folder.is_dir() else ():
        shutil.rmtree(stale, ignore_errors=True)
        removed.append(stale)
    return removed


def rewind(folder: str | Path, name: str) -> list[str]:
    """Point LATEST at checkpoint `name` and delete the checkpoints after it. Returns the deleted names."""
    folder = Path(folder)
    target = step_of(name)
    later = sorted(p for p in folder.iterdir() if p.is_dir() and (step_of(p.name) or -1) > target)
    files.write_text(folder / LATEST, name + "\n")
    for path in later:
        shutil.rmtree(path, ignore_errors=True)
    return [p.name for p in later]


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------
def latest_checkpoint(folder: str | Path) -> Path | None:
    """The checkpoint LATEST names, or None when there is none yet."""
    pointer = Path(folder) / LATEST
    if not pointer.is_file():
        return None
    path = Path(folder) / pointer.read_text(encoding="utf-8").strip()
    if not (path / STATE).is_file():
        raise LoraLabError(f"{pointer} names {path.name}, which is missing or incomplete; "
                           "delete the checkpoints folder to start over")
    return path


def read_checkpoint(path: str | Path, restore_rng: bool = True) -> Checkpoint:
    """Read every file of a checkpoint (either format) into memory; UnreadableState names what is wrong."""
    path = Path(path)
    if not path.is_dir():
        raise UnreadableState(f"{path.name} is missing")
    if (path / TRAINABLE).exists() or not (path / "trainable.pt").exists():
        trainable = _read_safetensors(path / TRAINABLE)
        optimizer = optimizer_state(_read_safetensors(path / "optimizer.safetensors"), _read_json(path / "optimizer.json"))
        scheduler = _read_json(path / "scheduler.json")
        rng = rng_state(_read_safetensors(path / "rng.safetensors"), _read_json(path / "rng.json")) \
            if restore_rng else None
    else:
        trainable = load_legacy_pt(path / "trainable.pt")
        optimizer = load_legacy_pt(path / "optimizer.pt")
        scheduler = load_legacy_pt(path / "scheduler.pt")
        rng = load_legacy_pt(path / "rng.pt", numpy_arrays=True) if restore_rng else None
    state = _read_json(path / STATE)
    _check_shapes(trainable, optimizer, scheduler, rng, state)
    return Checkpoint(path, trainable, optimizer, scheduler, rng, state)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise UnreadableState(f"{path.name} is missing") from None
    except Exception as exc:  # SafetensorError, OSError on a truncated file
        raise UnreadableState(f"{path.name} is truncated or corrupt ({exc})") from None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UnreadableState(f"{path.name} is missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnreadableState(f"{path.name} is truncated or corrupt ({exc})") from None


def _check_shapes(trainable: Any, optimizer: Any, scheduler: Any, rng: Any, state: Any) -> None:
    """The structure every reader below relies on; a damaged file fails here, before anything is applied."""
    if not (isinstance(trainable, dict) and all(isinstance(v, torch.Tensor) for v in trainable.values())):
        raise UnreadableState("the trainable tensors file holds something else")
    if not (isinstance(optimizer, dict) and {"state", "param_groups"} <= set(optimizer)):
        raise UnreadableState("the optimizer state is incomplete")
    if not (isinstance(scheduler, dict) and "last_epoch" in scheduler):
        raise UnreadableState("the scheduler state is incomplete")
    if rng is not None and not (isinstance(rng, dict) and {"python", "numpy", "torch"} <= set(rng)
                                and isinstance(rng["torch"], torch.Tensor) and rng["torch"].dtype == torch.uint8):
        raise UnreadableState("the random generator state is incomplete")
    if not (isinstance(state, dict) and isinstance(state.get("step"), int)):
        raise UnreadableState("state.json holds no step")


def apply_checkpoint(checkpoint: Checkpoint, model: nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: Any) -> dict[str, Any]:
    """Put a read checkpoint into model trainables, optimizer, scheduler and RNGs; returns the trainer state."""
    load_trainable_state(model, checkpoint.trainable, str(checkpoint.path))
    params = [p for group in optimizer.param_groups for p in group["params"]]
    check_optimizer_state(checkpoint.optimizer, params)
    try:
        optimizer.load_state_dict(checkpoint.optimizer)
    except ValueError as exc:
        raise LoraLabError(f"{checkpoint.path}: the optimizer state does not fit this run ({exc}); resume "
                           "with the same model and LoRA settings") from None
    scheduler.load_state_dict(checkpoint.scheduler)
    if checkpoint.rng is not None:
        restore_rng(checkpoint.rng)
    return checkpoint.state


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    restore_rng: bool = True) -> dict[str, Any]:
    """Read and apply one checkpoint; returns the trainer state."""
    return apply_checkpoint(read_checkpoint(path, restore_rng), model, optimizer, scheduler)


def weights_sane(checkpoint: Checkpoint) -> bool:
    """Whether a checkpoint's weights may be resumed from: its state.json does not record `sane: false`
    (loralab.training.trainer's test, made when it was written) and every trainable value is finite (which
    also covers checkpoints that carry no record, those of loralab 0.1)."""
    return checkpoint.state.get("sane") is not False and all(bool(torch.isfinite(t).all())
                                                             for t in checkpoint.trainable.values())


def usable_checkpoint(folder: str | Path, log: Callable[[str], None] = print) -> Checkpoint | None:
    """The newest readable checkpoint whose weights were sane: LATEST's, else the older ones in turn (an
    unreadable one said in one line each; insane ones listed in the result's `skipped_insane`).
    None when the folder holds no checkpoint; NoSaneCheckpoint when the readable ones all hold insane
    weights; LoraLabError when it holds only unreadable ones."""
    folder = Path(folder)
    candidates = _candidates(folder)
    if not candidates:
        return None
    problems, insane = [], []
    for i, path in enumerate(candidates):
        try:
            checkpoint = read_checkpoint(path)
        except UnreadableState as exc:
            problems.append(f"{path.name}: {exc}")
            following = f"falling back to {candidates[i + 1].name}" if i + 1 < len(candidates) else "none left"
            log(f"checkpoint {path} cannot be used ({exc}); {following}")
            continue
        if not weights_sane(checkpoint):
            insane.append(path.name)
            continue
        checkpoint.skipped_insane = tuple(insane)
        return checkpoint
    if insane:
        raise NoSaneCheckpoint(folder, insane)
    raise LoraLabError(f"no usable checkpoint in {folder} ({'; '.join(problems)}); start the run again with "
                       "--overwrite, or copy a good checkpoint back")


def _candidates(folder: Path) -> list[Path]:
    """Checkpoints to try, newest first: LATEST's, then the older complete-looking ones."""
    if not folder.is_dir():
        return []
    steps = sorted(((step_of(p.name), p) for p in folder.iterdir() if p.is_dir() and step_of(p.name) is not None),
                   reverse=True)
    pointer = folder / LATEST
    named = pointer.read_text(encoding="utf-8", errors="replace").strip() if pointer.is_file() else ""
    if step_of(named) is None:
        return [p for _, p in steps]
    newest = step_of(named)
    return [folder / named] + [p for step, p in steps if step < newest]


def load_best(folder: str | Path, best_step: int | None) -> dict[str, torch.Tensor] | None:
    """The best adapter's trainable tensors: those of the checkpoint at `best_step` (kept from pruning),
    else a loralab 0.1 run's best.pt; None when neither is there."""
    folder = Path(folder)
    if best_step is not None:
        path = folder / step_name(best_step)
        try:
            if (path / TRAINABLE).is_file():
                return _read_safetensors(path / TRAINABLE)
            if (path / "trainable.pt").is_file():
                return load_legacy_pt(path / "trainable.pt")
        except UnreadableState:
            pass
    if (folder / LEGACY_BEST).is_file():
        return load_legacy_pt(folder / LEGACY_BEST)
    return None
