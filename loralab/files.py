"""Writing files and folders the one way loralab writes them: atomically, owned, and one writer at a time.

Every file loralab writes goes through `atomic_write` (or a wrapper of it): the bytes go to a temporary
sibling `.NAME.PID.RANDOM.tmp`, are flushed to disk, and `os.replace` puts them in place, so a reader (or a
crash) sees the old file or the new one, never half of one. Whole outputs (a merged model, a run's result
folder) are built by `atomic_folder` in a temporary sibling folder and swapped in with renames.

Ownership: a folder loralab creates as an output holds a marker file `.loralab-output` naming what it is
("train-run", "merged-model", ...). loralab deletes or replaces a folder only when that marker says it wrote
it — never a folder of photos, a model, or the inputs of the same command.

Locks: `OutputLock(folder)` locks `folder/.loralab.lock` through `filelock`'s descriptor lock (`flock` on
POSIX, `LockFileEx` on Windows: the primitive `filelock.FileLock` uses) and writes its PID there. A second
writer gets one line naming the PID that holds it. The operating system drops the lock when its process
dies, so a lock left by a killed process is simply taken over (and said so).

Nothing here unpickles; JSON and safetensors only.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import stat
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from filelock import lock_descriptor, unlock_descriptor

from loralab.errors import LoraLabError

OWNER_MARKER = ".loralab-output"
LOCK_NAME = ".loralab.lock"
_TMP_SUFFIX = ".tmp"


# --------------------------------------------------------------------------------------------------
# One file
# --------------------------------------------------------------------------------------------------
def temp_sibling(path: Path) -> Path:
    """A temporary name next to `path`: `.NAME.PID.RANDOM.tmp` (the PID lets a later run tell if the
    writer is gone, see `remove_stale_temps`)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{_TMP_SUFFIX}")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Create or replace `path` atomically: `write(tmp)` writes the content to a temporary sibling, which
    is flushed to disk and renamed over `path`. On any error the temporary file is removed and `path` is
    left as it was. Returns `path`."""
    path = Path(path)
    if output_node(path) == "stream":
        return _write_through(path, write)
    make_dirs(path.parent)
    tmp = temp_sibling(path)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        error = os_error(exc)
        if error is not None:
            raise unwritable(path, error) from None
        raise
    return path


def _write_through(path: Path, write: Callable[[Path], None]) -> Path:
    """Write into a character device or a pipe in place (`-o /dev/null`, a FIFO): it cannot be replaced by a
    rename without destroying the node, and a reader sees a stream anyway."""
    try:
        write(path)
    except OSError as exc:
        raise unwritable(path, exc) from None
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """`text` as UTF-8, atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """`data` as the file's bytes, atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """`data` as indented JSON with a final newline, atomically. NaN/Inf are refused (not valid JSON)."""
    return write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def write_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """{name: tensor} as a safetensors file (contiguous CPU copies), atomically."""
    from safetensors.torch import save, save_file

    plain = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    if output_node(path) == "stream":      # save_file renames its own temporary file over the target: give bytes
        return _write_through(Path(path), lambda node: node.write_bytes(save(plain, metadata=metadata)))
    return atomic_write(path, lambda tmp: save_file(plain, str(tmp), metadata=metadata))


def save_figure(figure: Any, path: str | os.PathLike, **savefig_kwargs: Any) -> Path:
    """A matplotlib figure, atomically, in the format the path's suffix names."""
    path = Path(path)
    fmt = path.suffix.lstrip(".") or "png"
    return atomic_write(path, lambda tmp: figure.savefig(tmp, format=fmt, **savefig_kwargs))


def remove_stale_temps(folder: str | os.PathLike, locked: bool = False) -> list[Path]:
    """Delete temporary files and folders (`.*.PID.*.tmp`) in `folder` whose writing process is gone.
    Returns what was removed. A temp file of a live process is left alone.

    locked=True: the caller holds `folder`'s OutputLock (or that of a folder above it), so no other process
    writes here and every temporary name `.*.tmp` is stale, including those of older loralab versions
    that carry no PID (`.LATEST.x7f3k2.tmp`)."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        pid = _temp_owner(entry.name)
        if locked:
            if not (entry.name.startswith(".") and entry.name.endswith(_TMP_SUFFIX)) or pid == os.getpid():
                continue
        elif pid is None or _pid_alive(pid):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
        removed.append(entry)
    return removed


def _temp_owner(name: str) -> int | None:
    """The PID in a temporary name `.NAME.PID.RANDOM.tmp`, else None."""
    if not (name.startswith(".") and name.endswith(_TMP_SUFFIX)):
        return None
    parts = name[: -len(_TMP_SUFFIX)].split(".")
    if len(parts) < 4 or not parts[-2].isdigit():
        return None
    return int(parts[-2])


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name == "nt":         # os.kill(pid, 0) terminates the process there; assume alive (nothing is removed)
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:        # exists, owned by someone else
        return True
    return True


# --------------------------------------------------------------------------------------------------
# Errors for outputs that cannot be written
# --------------------------------------------------------------------------------------------------
_WRITE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.ENOTDIR, errno.EEXIST,
                 errno.EISDIR, errno.ENOENT, errno.EDQUOT, errno.ENAMETOOLONG, errno.EFBIG}
# A full disk (or quota): the output location is fine, there is just no room; said in these words.
DISK_FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}


class Unwritable(LoraLabError):
    """An output that could not be written (one line: the path, the reason, the fix). `errno` says why, so a
    caller that knows what stayed intact (a checkpoint, the previous output) can say so."""

    def __init__(self, message: str, path: str | os.PathLike, errno_: int):
        super().__init__(message)
        self.path, self.errno = path, errno_

    @property
    def disk_full(self) -> bool:
        return self.errno in DISK_FULL


def unwritable(path: str | os.PathLike, exc: OSError, kept: str = "") -> OSError | LoraLabError:
    """The user-facing error (Unwritable) for an OSError while writing `path`: one line naming the path, the
    reason and the fix; `kept` says what stays intact (a full disk). Errors that are not about the output
    itself (e.g. EIO) are returned unchanged."""
    if exc.errno not in _WRITE_ERRNOS:
        return exc
    if exc.errno in DISK_FULL:
        return Unwritable(f"{DISK_FULL[exc.errno]} while writing {path}; {kept + '; ' if kept else ''}free some "
                          "space or choose an output on another disk", path, exc.errno)
    reason = exc.strerror or str(exc)
    return Unwritable(f"cannot write {path}: {reason}; choose a writable output location", path, exc.errno)


def os_error(exc: BaseException) -> OSError | None:
    """`exc` as the OSError it is or carries, else None. safetensors reports a failed write (a full disk) as a
    SafetensorError whose text ends in "(os error 28)"; it becomes OSError(28, "No space left on device"),
    which `unwritable` turns into one line."""
    if isinstance(exc, OSError):
        return exc
    from safetensors import SafetensorError

    found = re.search(r"\(os error (\d+)\)", str(exc)) if isinstance(exc, SafetensorError) else None
    return OSError(int(found.group(1)), os.strerror(int(found.group(1)))) if found else None


def make_dirs(folder: str | os.PathLike) -> Path:
    """mkdir -p with a one-line error for paths that cannot hold a folder (/proc/x, a file, read-only)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise LoraLabError(f"{folder} exists and is not a folder; choose another output location") from None
    except OSError as exc:
        raise unwritable(folder, exc) from None
    return folder


def check_writable_dir(folder: str | os.PathLike) -> Path:
    """Fail early, before any work, if `folder` cannot be created or written (probe file, then removed)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise LoraLabError(f"{folder} exists and is not a folder; choose another output location")
    probe_parent = folder if folder.exists() else _nearest_existing(folder)
    if not probe_parent.is_dir():
        raise LoraLabError(f"cannot create {folder}: {probe_parent} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=probe_parent, prefix=f".loralab-probe.{os.getpid()}.", suffix=_TMP_SUFFIX)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise unwritable(folder, exc) from None
    return folder


def _nearest_existing(path: Path) -> Path:
    for parent in [path, *path.parents]:
        if parent.exists():
            return parent
    return Path(".")


# --------------------------------------------------------------------------------------------------
# The output policy: what a command's output may name
# --------------------------------------------------------------------------------------------------
# Files whose presence makes a folder a model (config.json plus one of these) or an adapter.
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_ADAPTER_CONFIG = "adapter_config.json"


def output_node(path: str | os.PathLike) -> str:
    """What `path` is as a place to write: "missing", "file" (a regular file, replaced atomically) or "stream"
    (a character device such as /dev/null or a terminal, or a pipe — also behind a symbolic link such as
    /dev/stdout —, written through in place, never replaced). Anything else raises one line: a symbolic link
    to anything but a stream (loralab never replaces a link nor writes through it to a file), a folder,
    a block device or a socket."""
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        if path.is_symlink():          # dangling, or a loop
            raise LoraLabError(f"{path} is a symbolic link to {os.readlink(path)}, which cannot be opened; "
                               "loralab does not replace links. Give the real path, or choose another output "
                               "location") from None
        if isinstance(exc, FileNotFoundError):
            return "missing"
        if isinstance(exc, NotADirectoryError):       # a file where a folder above `path` should be
            blocking = next(p for p in path.parents if p.exists())
            raise LoraLabError(f"{blocking} exists and is not a folder; choose another output location") from None
        raise unwritable(path, exc) from None
    if stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode):
        return "stream"
    if path.is_symlink():
        raise LoraLabError(f"{path} is a symbolic link to {os.readlink(path)}; loralab does not replace links "
                           "or write through them. Give the real path, or choose another output location")
    if stat.S_ISREG(st.st_mode):
        return "file"
    what = "a folder" if stat.S_ISDIR(st.st_mode) else "a block device" if stat.S_ISBLK(st.st_mode) else "a socket"
    raise LoraLabError(f"{path} is {what}; loralab writes only regular files, character devices (/dev/null) and "
                       "pipes. Choose another output location")


def check_output_file(path: str | os.PathLike, inputs: Sequence[str | os.PathLike] = ()) -> Path:
    """The output policy for one file a command writes (`-o FILE`), checked before any work. Returns `path`.

    A regular file is created or replaced atomically; a character device or a pipe (/dev/null, a FIFO,
    /dev/stdout) is written through in place; anything else is refused with one line: a symbolic link to a
    file or folder (never replaced), a folder, a block device, one of the command's `inputs` (same path or
    same inode: a hard link counts) or a file inside one, a file inside a model or adapter folder."""
    path = Path(path)
    if output_node(path) == "stream":    # written through: nothing on disk is replaced or truncated
        return path
    check_not_input(path, inputs, holds=False)
    _check_outside_models(path.parent, path)
    check_writable_dir(path.parent)
    return path


def check_output_folder(folder: str | os.PathLike, kind: str, inputs: Sequence[str | os.PathLike] = (),
                        overwrite: bool = False, reuse: bool = False,
                        recognise: Callable[[Path], bool] | None = None) -> Path:
    """The output policy for a folder a command writes (a merged model, a report, a lesson page), checked
    before any work. Returns `folder`; raises one line otherwise.

    Missing or empty: fine. Marked by loralab as `kind` (`mark_owned`), or unmarked but recognised by
    `recognise` (the layout an older loralab wrote): reused in place when `reuse` (a resumable grid, a report
    rewritten), else replaced only with `overwrite`. Anything else — a symbolic link, a file, a folder
    without the marker (photos, a model), another kind — is refused, whatever the flags. Never one of the
    command's `inputs` (path or inode), never holding or inside one, never inside a model or adapter folder."""
    folder = Path(folder)
    check_output_location(folder, inputs)
    check_writable_dir(folder)
    if not folder.exists() or is_empty_dir(folder):
        return folder
    if owned_kind(folder) == kind or (owned_kind(folder) is None and recognise is not None and recognise(folder)):
        if reuse or overwrite:
            return folder
        raise LoraLabError(f"{folder} already exists; pass --overwrite to replace it, or choose another output "
                           "location")
    check_replaceable(folder, (kind,), tuple(Path(p) for p in inputs))
    return folder


def claim_output_folder(folder: str | os.PathLike, kind: str, inputs: Sequence[str | os.PathLike] = (),
                        recognise: Callable[[Path], bool] | None = None) -> Path:
    """For a folder written in place and re-used by the next run (a report, a resumable experiment grid):
    `check_output_folder(..., reuse=True)`, then create it and mark it as `kind`. Returns `folder`."""
    folder = check_output_folder(folder, kind, inputs, reuse=True, recognise=recognise)
    make_dirs(folder)
    if owned_kind(folder) != kind:
        mark_owned(folder, kind)
    return folder


def check_cache_folder(folder: str | os.PathLike, inputs: Sequence[str | os.PathLike] = ()) -> Path:
    """The output policy for a cache folder (`learn --cache`, where trained runs are kept for reuse): not a
    symbolic link nor a file, not one of the command's `inputs`, and neither a model or adapter folder nor
    inside one. What goes inside is written by the runs' own rules (a run never replaces a non-run)."""
    folder = Path(folder)
    check_output_location(folder, inputs)
    _check_outside_models(folder, folder)
    check_writable_dir(folder)
    return folder


def check_output_location(folder: str | os.PathLike, inputs: Sequence[str | os.PathLike] = ()) -> Path:
    """The rules every output folder shares (train's run folders too): not a symbolic link (never replaced,
    never written through), not an existing non-folder, not one of the command's inputs nor holding or
    inside one, not inside a model or adapter folder."""
    folder = Path(folder)
    if folder.is_symlink():
        raise LoraLabError(f"{folder} is a symbolic link to {os.readlink(folder)}; loralab does not replace links "
                           "or write through them. Give the real path, or choose another output location")
    if folder.exists() and not folder.is_dir():
        raise LoraLabError(f"{folder} exists and is not a folder; choose another output location")
    check_not_input(folder, inputs)
    _check_outside_models(folder.parent, folder)
    return folder


def is_model_folder(folder: str | os.PathLike) -> bool:
    """A transformers model folder (config.json with its weights) or an adapter folder (adapter_config.json)."""
    folder = Path(folder)
    return (folder / _ADAPTER_CONFIG).is_file() or (
        (folder / "config.json").is_file() and any((folder / name).is_file() for name in _WEIGHTS))


def _check_outside_models(start: Path, output: Path) -> None:
    """Raise if `start` or a folder above it is a model or adapter folder: loralab writes nothing into one."""
    for folder in (start.absolute(), *start.absolute().parents):
        if folder.is_dir() and is_model_folder(folder):
            raise LoraLabError(f"output {output} is or lies inside the model or adapter folder {folder}; loralab does "
                               "not write into those. Choose another output location")


# --------------------------------------------------------------------------------------------------
# Owned output folders
# --------------------------------------------------------------------------------------------------
def mark_owned(folder: str | os.PathLike, kind: str) -> None:
    """Record in `folder` that loralab wrote it, as an output of the given kind."""
    write_json(Path(folder) / OWNER_MARKER, {"kind": kind})


def owned_kind(folder: str | os.PathLike) -> str | None:
    """The kind recorded by `mark_owned`, or None when loralab's marker is missing or unreadable."""
    try:
        data = json.loads((Path(folder) / OWNER_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data.get("kind") if isinstance(data, dict) else None


def is_empty_dir(folder: Path) -> bool:
    """A folder with nothing in it but, possibly, loralab's lock file (which holds no content)."""
    return folder.is_dir() and all(entry.name == LOCK_NAME for entry in folder.iterdir())


def check_replaceable(folder: str | os.PathLike, kinds: tuple[str, ...], protect: tuple[Path, ...] = ()) -> None:
    """Raise unless `folder` may be replaced by a new output: it is missing, empty, or marked by loralab
    as one of `kinds`; and it is none of the `protect` paths (the command's inputs), nor inside or
    around one of them."""
    folder = Path(folder)
    check_not_input(folder, protect)
    if not folder.exists() or is_empty_dir(folder):
        return
    if folder.is_symlink() or not folder.is_dir():
        raise LoraLabError(f"{folder} exists and is not a folder loralab wrote; not replacing it. "
                           "Choose another output location or remove it yourself")
    kind = owned_kind(folder)
    if kind not in kinds:
        what = f"a loralab {kind} folder" if kind else "not a folder loralab wrote (no .loralab-output marker)"
        raise LoraLabError(f"{folder} is {what}; not replacing it. Choose another output location or remove "
                           "it yourself")


def check_not_input(output: str | os.PathLike, protect: Sequence[str | os.PathLike], holds: bool = True) -> None:
    """Raise if `output` is one of the `protect` paths (the command's inputs), lies inside one, or (when
    `holds`, for a folder) holds one: writing it could destroy what the command reads. Compared by resolved
    path and by (st_dev, st_ino), so a hard link, a bind mount or a second path to the same place counts."""
    output = Path(output)
    resolved = output.resolve()
    above_output = _identities(output)
    for other in protect:
        if not os.path.lexists(other):        # a builtin model name, a hub id: nothing on disk to destroy
            continue
        other_resolved = Path(other).resolve()
        inside = resolved == other_resolved or resolved.is_relative_to(other_resolved)
        inside = inside or _identity(other) in above_output
        holding = holds and (other_resolved.is_relative_to(resolved) or _identity(output) in _identities(other))
        if inside or holding:
            raise LoraLabError(f"output {output} is, holds or lies inside an input of this command ({other_resolved}); "
                               "choose another output location")


def _identity(path: str | os.PathLike) -> tuple[int, int] | None:
    """(st_dev, st_ino) of what `path` names (links followed), None when it does not exist."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _identities(path: str | os.PathLike) -> set[tuple[int, int]]:
    """The identities of `path` and of every existing folder above it."""
    resolved = Path(path).resolve()
    found = {_identity(p) for p in (resolved, *resolved.parents)}
    found.discard(None)
    return found


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike, kind: str, replace: bool = False,
                  protect: tuple[Path, ...] = ()) -> Iterator[Path]:
    """Build a whole output folder and swap it in: yields a fresh temporary sibling folder to fill; on
    success it is marked as `kind` and renamed to `target`. An existing `target` is replaced only with
    `replace=True` and only if `check_replaceable` allows it (checked before and after the build).
    On any error the temporary folder is removed and `target` is untouched."""
    target = Path(target)
    check_output_folder(target, kind, protect, overwrite=replace)
    make_dirs(target.parent)
    remove_stale_temps(target.parent)
    scratch = temp_sibling(target)
    try:
        scratch.mkdir()
    except OSError as exc:
        raise unwritable(target, exc) from None
    try:
        yield scratch
        mark_owned(scratch, kind)
        swap_in(scratch, target, (kind,), protect)
    except BaseException as exc:
        shutil.rmtree(scratch, ignore_errors=True)
        error = os_error(exc)       # e.g. transformers' save_pretrained: safetensors' own error for a full disk
        if error is None and isinstance(exc, Unwritable) and exc.disk_full:    # a file inside, named by its temp path
            error = OSError(exc.errno, os.strerror(exc.errno))
        if error is not None:
            kept = "the previous output is untouched" if target.exists() else "nothing was left half-written"
            raise unwritable(target, error, kept) from None
        raise


def swap_in(new: Path, target: Path, kinds: tuple[str, ...], protect: tuple[Path, ...] = ()) -> None:
    """Rename the finished folder `new` to `target`; an old `target` (checked replaceable) is first renamed
    aside and deleted only after the new one is in place."""
    if not target.exists():
        os.replace(new, target)
        return
    check_replaceable(target, kinds, protect)
    old = temp_sibling(target)
    os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(old, target)       # put the old output back
        raise
    shutil.rmtree(old, ignore_errors=True)


def remove_owned(folder: str | os.PathLike, kinds: tuple[str, ...], protect: tuple[Path, ...] = ()) -> None:
    """Delete an output folder loralab wrote (checked with `check_replaceable`); a missing one is fine."""
    folder = Path(folder)
    check_replaceable(folder, kinds, protect)
    if folder.exists():
        shutil.rmtree(folder)


# --------------------------------------------------------------------------------------------------
# One writer per output folder
# --------------------------------------------------------------------------------------------------
class OutputLock:
    """An advisory lock on an output folder, held for as long as a command writes there.

        with OutputLock(run_dir):
            ...train and write checkpoints...

    Raises LoraLabError("... is in use by PID N ...") when another live process holds it. A lock file
    left by a process that died (SIGKILL, power loss) is not held by anyone and is taken over; `stale_pid`
    tells whose it was, so callers can say so."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.stale_pid: int | None = None
        self._fd: int | None = None

    def acquire(self) -> "OutputLock":
        make_dirs(self.folder)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise unwritable(self.path, exc) from None
        if not lock_descriptor(fd, blocking=False):
            holder = _read_pid(fd)
            os.close(fd)
            who = f"PID {holder}" if holder else "another process"
            raise LoraLabError(f"{self.folder} is in use by {who} (another loralab command is writing there); "
                               "wait for it to finish, or choose another output location") from None
        previous = _read_pid(fd)
        if previous and previous != os.getpid():     # a clean release empties the file: its holder died
            self.stale_pid = previous
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)        # os.pwrite/pread are POSIX only
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        unlock_descriptor(self._fd)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 32).decode("ascii", "replace").strip()
    except OSError:         # on Windows the holder's lock covers the byte the PID starts at
        return None
    return int(text) if text.isdigit() else None
