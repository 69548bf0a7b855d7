"""Claiming a run's output folder: checked before any work, locked for one writer, and changed only when
the new run has something worth keeping.

`RunOutput.open` decides, from what is on disk and before anything is written, how the run will write:

    new       the folder is missing or empty. The run is built in a temporary sibling
              `.NAME.PID.RANDOM.tmp` and renamed to NAME when its first checkpoint is complete. A run that
              fails before then leaves nothing behind (a killed one leaves the sibling, which the next
              command in that folder's parent deletes, its PID being gone).
    replace   --overwrite of a folder loralab wrote as a train run (its marker, or the exact layout of a
              loralab 0.1 run): built the same way, and the old run is untouched until the new run's first
              checkpoint is complete; then the old folder is renamed aside, the new one renamed in, and the
              old one deleted. A new run that fails earlier leaves the old run as it was.
    resume    --resume of a train run: the run continues in place.
    in place  (Python API only, `in_place_ok=True`) the folder exists and holds other files, none named
              like a run's (an experiment keeps its own config and log there): the run writes into it
              directly; if it fails before its first checkpoint, the files it added are removed again.

Anything else is refused with one line: a file, a folder loralab did not write as a train run (a model
folder, photos), or a folder that is, holds or lies inside one of the command's inputs.

One writer: `files.OutputLock` on NAME is taken before anything is written (a NAME that did not exist is
created to hold the lock, and removed again if the run fails before committing). At the commit, the new
folder is locked first, so the lock passes to the renamed folder without a gap. Temporary files left in
NAME by a killed writer are deleted once the lock is held.
"""
from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable
from pathlib import Path

from loralab import files
from loralab.errors import LoraLabError
from loralab.training.checkpoint import remove_leftovers
from loralab.training.run_folder import (ADAPTER_DIR, CHECKPOINTS_DIR, RUN_ENTRIES, RUN_KIND, has_progress,
                                         is_train_run, write_config)
from loralab.training.trainer import Trainer, TrainerCallback


class RunOutput:
    """Rank 0's claim on a run folder (other ranks get `follower`, which writes nothing).
    `path` is where the run writes now: the temporary sibling until `commit`, then the folder itself."""

    def __init__(self, target: Path, mode: str, lock: files.OutputLock | None, created: bool,
                 protect: tuple[Path, ...] = ()):
        self.target, self.mode, self.lock, self.created, self.protect = target, mode, lock, created, protect
        self.scratch: Path | None = None
        self.added: list[str] = []
        self.committed = mode in ("resume", "follower")

    @property
    def path(self) -> Path:
        return self.scratch if self.scratch is not None and not self.committed else self.target

    @classmethod
    def follower(cls, target: str | Path) -> "RunOutput":
        return cls(Path(target), "follower", None, False)

    @classmethod
    def open(cls, target: str | Path, resume: bool = False, overwrite: bool = False,
             inputs: tuple[Path, ...] = (), in_place_ok: bool = True,
             log: Callable[[str], None] = print) -> "RunOutput":
        """Check the folder, then lock it; raises LoraLabError (one line) before writing anything."""
        target = Path(target)
        mode = _decide_mode(target, resume, overwrite, inputs, in_place_ok)
        files.check_writable_dir(target)
        existed = target.exists()
        lock = files.OutputLock(target).acquire()
        if lock.stale_pid:
            log(f"{target}: took over the lock of PID {lock.stale_pid}, which is gone")
        output = cls(target, mode, lock, created=not existed, protect=inputs)
        output._remove_leftovers()
        return output

    def _remove_leftovers(self) -> None:
        files.remove_stale_temps(self.target.parent)
        if self.mode in ("resume", "in place"):
            for folder in (self.target, self.target / ADAPTER_DIR):
                files.remove_stale_temps(folder, locked=True)
            remove_leftovers(self.target / CHECKPOINTS_DIR)

    def begin(self, config) -> None:
        """Start writing: the marker and config.json go to the temporary sibling (new, replace) or into
        the folder (in place); a resume writes nothing here."""
        if self.mode in ("new", "replace"):
            self.scratch = files.temp_sibling(self.target)
            files.make_dirs(self.scratch)
            files.mark_owned(self.scratch, RUN_KIND)
            write_config(self.scratch, config)
        elif self.mode == "in place":
            self.added = [name for name in (*RUN_ENTRIES, files.OWNER_MARKER) if not (self.target / name).exists()]
            files.mark_owned(self.target, RUN_KIND)
            write_config(self.target, config)

    def commit(self) -> None:
        """Make the run the folder's content (idempotent): rename the temporary sibling into place."""
        if self.committed:
            return
        if self.scratch is not None:
            new_lock = files.OutputLock(self.scratch).acquire()
            if self.mode == "replace" and files.owned_kind(self.target) != RUN_KIND:
                files.mark_owned(self.target, RUN_KIND)  # a loralab 0.1 run, recognised by its layout
            try:
                files.swap_in(self.scratch, self.target, (RUN_KIND,), self.protect)
            except BaseException as exc:
                new_lock.release()
                if isinstance(exc, OSError):
                    raise files.unwritable(self.target, exc) from None
                raise
            self.lock.release()
            self.lock = new_lock
        self.committed = True

    def close(self, failed: bool) -> None:
        """Release the folder; a run that failed before committing takes back everything it wrote."""
        if self.mode == "follower":
            return
        if failed and not self.committed:
            self._discard()
        if self.lock is not None:
            self.lock.release()
        if self.created and files.is_empty_dir(self.target):
            with contextlib.suppress(OSError):
                (self.target / files.LOCK_NAME).unlink(missing_ok=True)
                self.target.rmdir()

    def _discard(self) -> None:
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
        for name in self.added:
            path = self.target / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def __enter__(self) -> "RunOutput":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failed=exc_type is not None)


def _decide_mode(target: Path, resume: bool, overwrite: bool, inputs: tuple[Path, ...], in_place_ok: bool) -> str:
    """new / replace / resume / in place, or one LoraLabError line saying why the folder is refused."""
    files.check_output_location(target, inputs)   # the output policy every command shares: links, inputs
    if resume:
        if not target.is_dir():
            raise LoraLabError(f"{target} does not exist; --resume continues a run in the folder --output names")
        if not (is_train_run(target) and has_progress(target)):
            raise LoraLabError(f"{target} holds no loralab run to resume (config.json with checkpoints/LATEST); "
                               "start a run there without --resume")
        return "resume"
    if not target.exists() or files.is_empty_dir(target):
        return "new"
    if is_train_run(target) and (has_progress(target) or not in_place_ok):
        if not overwrite:
            raise LoraLabError(f"{target} already holds a training run; pass --resume to continue it, "
                               "--overwrite to replace it, or choose another --output")
        return "replace"
    owned = files.owned_kind(target)
    if overwrite:
        what = f"a loralab {owned} folder" if owned else "not a folder loralab wrote as a train run (no " \
                                                          f"{files.OWNER_MARKER} marker)"
        raise LoraLabError(f"{target} is {what}; --overwrite replaces only training runs. Choose another "
                           "--output, or remove it yourself")
    clashes = [name for name in RUN_ENTRIES if (target / name).exists()]
    if in_place_ok and owned in (None, RUN_KIND) and (owned == RUN_KIND or not clashes):
        return "in place"
    raise LoraLabError(f"output folder {target} is not empty" + (f" (it holds {', '.join(clashes)})" if clashes else "")
                       + "; pass --resume to continue a run there, --overwrite to replace a run, or choose "
                       "another --output")


class CommitAtFirstCheckpoint(TrainerCallback):
    """Commits the run's output when its first checkpoint is complete, and moves the trainer there."""

    def __init__(self, output: RunOutput):
        self.output = output

    def on_checkpoint(self, trainer: Trainer, path: Path) -> None:
        if not self.output.committed:
            self.output.commit()
            trainer.output_dir = self.output.path
