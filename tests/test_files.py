"""loralab.files: atomic writes, owned folders, output locks."""
from __future__ import annotations

import errno
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import filelock
import pytest
import torch
from safetensors.torch import load_file

from loralab import LoraLabError, files


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    path = tmp_path / "a" / "x.json"
    files.write_json(path, {"v": 1})
    files.write_json(path, {"v": 2})
    assert json.loads(path.read_text()) == {"v": 2}
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.json"]


def test_failed_write_keeps_the_old_file_and_removes_the_temp(tmp_path):
    path = files.write_text(tmp_path / "x.txt", "old")

    def boom(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk went away")

    with pytest.raises(RuntimeError):
        files.atomic_write(path, boom)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_oserror_while_writing_is_one_clear_line(tmp_path):
    def refuse(tmp):
        raise OSError(errno.EROFS, "Read-only file system")

    with pytest.raises(LoraLabError, match="cannot write .*Read-only file system; choose a writable"):
        files.atomic_write(tmp_path / "x", refuse)
    with pytest.raises(LoraLabError, match="cannot write /proc/loralab-x"):
        files.write_text("/proc/loralab-x/y.txt", "z")
    (tmp_path / "file").write_text("")
    with pytest.raises(LoraLabError, match="is not a folder"):
        files.check_writable_dir(tmp_path / "file")
    with pytest.raises(LoraLabError, match="cannot"):
        files.check_writable_dir("/proc/loralab-x")
    assert files.check_writable_dir(tmp_path / "new" / "deep") == tmp_path / "new" / "deep"
    assert not (tmp_path / "new").exists()


def test_write_json_refuses_nan(tmp_path):
    with pytest.raises(ValueError):
        files.write_json(tmp_path / "x.json", {"loss": float("nan")})
    assert not list(tmp_path.iterdir())


def test_safetensors_round_trip(tmp_path):
    t = torch.arange(6.0).reshape(2, 3).t()          # not contiguous
    files.write_safetensors(tmp_path / "t.safetensors", {"t": t}, {"k": "v"})
    assert torch.equal(load_file(str(tmp_path / "t.safetensors"))["t"], t)


def test_stale_temps_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = tmp_path / f".LATEST.{dead}.abcd1234.tmp"
    live = tmp_path / f".LATEST.{os.getpid()}.abcd1234.tmp"
    other = tmp_path / ".hidden.tmp"
    for p in (stale, live, other):
        p.write_text("")
    assert files.remove_stale_temps(tmp_path) == [stale]
    assert live.exists() and other.exists()


def test_atomic_folder_replaces_only_what_loralab_wrote(tmp_path):
    out = tmp_path / "merged"
    with files.atomic_folder(out, "merged-model") as scratch:
        (scratch / "model.txt").write_text("one")
    assert files.owned_kind(out) == "merged-model"
    with pytest.raises(LoraLabError, match="already exists; pass --overwrite"):
        with files.atomic_folder(out, "merged-model"):
            pass
    with files.atomic_folder(out, "merged-model", replace=True) as scratch:
        (scratch / "model.txt").write_text("two")
    assert (out / "model.txt").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]

    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "cat.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(LoraLabError, match="not a folder loralab wrote"):
        with files.atomic_folder(photos, "merged-model", replace=True):
            pass
    assert (photos / "cat.jpg").exists()
    train_run = tmp_path / "run"
    train_run.mkdir()
    files.mark_owned(train_run, "train-run")
    with pytest.raises(LoraLabError, match="is a loralab train-run folder"):
        files.remove_owned(train_run, ("merged-model",))


def test_atomic_folder_refuses_the_commands_own_inputs(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    files.mark_owned(adapter, "merged-model")
    for out in (adapter, tmp_path, adapter / "inside"):
        with pytest.raises(LoraLabError, match="an input of this command"):
            with files.atomic_folder(out, "merged-model", replace=True, protect=(adapter,)):
                pass
    assert adapter.is_dir()


def test_failed_build_leaves_the_old_folder(tmp_path):
    out = tmp_path / "merged"
    with files.atomic_folder(out, "merged-model") as scratch:
        (scratch / "model.txt").write_text("one")
    with pytest.raises(RuntimeError):
        with files.atomic_folder(out, "merged-model", replace=True) as scratch:
            (scratch / "model.txt").write_text("half")
            raise RuntimeError("killed")
    assert (out / "model.txt").read_text() == "one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]


def test_lock_names_the_holder_and_takes_over_stale_locks(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", f"""
import sys, time
from loralab.files import OutputLock
lock = OutputLock({str(tmp_path)!r}).acquire()
print('held', flush=True)
time.sleep(60)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LoraLabError, match=f"in use by PID {holder.pid}"):
            files.OutputLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    with files.OutputLock(tmp_path) as lock:        # the kernel released the dead holder's flock
        assert lock.stale_pid == holder.pid
        assert (tmp_path / files.LOCK_NAME).read_text().strip() == str(os.getpid())


def test_lock_contends_with_filelock_on_the_same_file(tmp_path):
    with filelock.FileLock(tmp_path / files.LOCK_NAME, blocking=False):
        with pytest.raises(LoraLabError, match=f"^{re.escape(str(tmp_path))} is in use by another process "):
            files.OutputLock(tmp_path).acquire()
    with files.OutputLock(tmp_path) as lock:
        assert lock.stale_pid is None
        with pytest.raises(LoraLabError, match=f"in use by PID {os.getpid()} "):
            files.OutputLock(tmp_path).acquire()       # one writer, even within one process
    assert (tmp_path / files.LOCK_NAME).read_text() == ""     # a clean release leaves no holder behind


def test_a_pid_left_in_a_free_lock_is_a_stale_holder(tmp_path):
    (tmp_path / files.LOCK_NAME).write_text("999999999\n")    # a holder that never released (killed)
    with files.OutputLock(tmp_path) as lock:
        assert lock.stale_pid == 999999999


# --------------------------------------------------------------------------------------------------
# The output policy: what a command's output may name
# --------------------------------------------------------------------------------------------------
def _node(path) -> tuple[int, int, int, int]:
    """What identifies a node on disk: its type and mode, inode, device and (for devices) st_rdev."""
    st = os.lstat(path)
    return st.st_mode, st.st_ino, st.st_dev, st.st_rdev


def test_dev_null_is_written_through_never_replaced():
    before = _node("/dev/null")
    assert files.check_output_file("/dev/null") == Path("/dev/null")
    files.write_text("/dev/null", "predictions\n")
    files.write_json("/dev/null", {"accuracy": 1.0})
    assert _node("/dev/null") == before and stat.S_ISCHR(before[0])


def test_a_pipe_is_written_through_never_replaced(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    before = _node(fifo)
    reader = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)     # a reader, so the writer's open does not block
    try:
        files.check_output_file(fifo)
        files.write_text(fifo, "one line\n")
        assert os.read(reader, 100) == b"one line\n"
    finally:
        os.close(reader)
    assert _node(fifo) == before and stat.S_ISFIFO(before[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo"]


def test_safetensors_into_a_pipe_are_written_through_never_replaced(tmp_path):
    import torch
    from safetensors.torch import load

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    before = _node(fifo)
    reader = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    try:
        files.write_safetensors(fifo, {"w": torch.arange(6.0).reshape(2, 3)}, {"k": "v"})
        assert torch.equal(load(os.read(reader, 4096))["w"], torch.arange(6.0).reshape(2, 3))
    finally:
        os.close(reader)
    assert _node(fifo) == before and sorted(p.name for p in tmp_path.iterdir()) == ["fifo"]


def test_a_file_where_a_folder_should_be_is_named(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(LoraLabError) as info:
        files.write_text(tmp_path / "file" / "sub" / "out.txt", "y")
    assert str(info.value) == f"{tmp_path / 'file'} exists and is not a folder; choose another output location"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
def test_a_full_device_is_one_line_and_stays_a_device():
    before = _node("/dev/full")
    with pytest.raises(LoraLabError) as info:
        files.write_text("/dev/full", "x" * 10000)
    assert "/dev/full" in str(info.value) and "no space left on device" in str(info.value).lower()
    assert "\n" not in str(info.value)
    assert _node("/dev/full") == before and stat.S_ISCHR(before[0])


def test_a_symbolic_link_is_never_replaced(tmp_path):
    target = tmp_path / "target.json"
    target.write_text("mine")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "nothing")
    loop = tmp_path / "loop.json"
    loop.symlink_to(loop)
    for path in (link, dangling, loop):
        with pytest.raises(LoraLabError, match=f"^{path} is a symbolic link to .*; loralab does not replace links"):
            files.check_output_file(path)
        with pytest.raises(LoraLabError, match="is a symbolic link"):
            files.write_text(path, "new")
    assert os.readlink(link) == str(target) and target.read_text() == "mine"
    assert not (tmp_path / "nothing").exists()
    folder_link = tmp_path / "model-link"
    folder_link.symlink_to(tmp_path)
    for check in (lambda: files.check_output_folder(folder_link, "merged-model", overwrite=True),
                  lambda: files.check_cache_folder(folder_link),
                  lambda: files.check_output_location(folder_link)):
        with pytest.raises(LoraLabError, match=f"^{folder_link} is a symbolic link to {tmp_path}; loralab does not"):
            check()
    assert folder_link.is_symlink()


def test_a_link_to_a_device_or_pipe_is_written_through_and_kept(tmp_path):
    null_link = tmp_path / "out"
    null_link.symlink_to("/dev/null")      # as /dev/stdout is a link to /proc/self/fd/1
    files.check_output_file(null_link)
    files.write_text(null_link, "x\n")
    assert os.readlink(null_link) == "/dev/null" and stat.S_ISCHR(os.lstat("/dev/null").st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_folders_block_devices_and_sockets_are_not_output_files(tmp_path):
    with pytest.raises(LoraLabError, match=f"^{tmp_path} is a folder; loralab writes only regular files"):
        files.check_output_file(tmp_path)
    try:
        os.mknod(tmp_path / "block", 0o600 | stat.S_IFBLK, os.makedev(7, 250))   # creating a node opens nothing
    except PermissionError:
        pytest.skip("creating a block device node needs root")
    with pytest.raises(LoraLabError, match="is a block device; loralab writes only regular files"):
        files.check_output_file(tmp_path / "block")
    with pytest.raises(LoraLabError, match="is a block device"):
        files.write_text(tmp_path / "block", "x")
    assert stat.S_ISBLK(os.lstat(tmp_path / "block").st_mode)


def test_an_output_file_is_never_an_input_by_path_or_inode(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    data = tmp_path / "dev.tsv"
    data.write_text("text\tlabel\n")
    os.link(data, tmp_path / "hard.tsv")
    inputs = (adapter, data)
    for output in (data, tmp_path / "hard.tsv", adapter / "adapter_config.json", adapter / "new.json",
                   tmp_path / "sub" / ".." / "dev.tsv"):
        with pytest.raises(LoraLabError, match="is, holds or lies inside an input of this command"):
            files.check_output_file(output, inputs)
    assert data.read_text() == "text\tlabel\n" and (adapter / "adapter_config.json").read_text() == "{}"
    assert files.check_output_file(tmp_path / "predictions.txt", inputs) == tmp_path / "predictions.txt"
    # a folder output holding an input (by inode: a hard link inside it) is refused too
    (tmp_path / "out").mkdir()
    os.link(data, tmp_path / "out" / "copy.tsv")
    with pytest.raises(LoraLabError, match="an input of this command"):
        files.check_output_folder(tmp_path / "out", "analysis-report", [tmp_path / "out" / "copy.tsv"], reuse=True)


def test_nothing_is_written_inside_a_model_or_adapter_folder(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    for folder in (model, adapter):
        for check in (lambda: files.check_cache_folder(folder), lambda: files.check_cache_folder(folder / "cache"),
                      lambda: files.check_output_file(folder / "config.json"),
                      lambda: files.claim_output_folder(folder / "deep" / "report", "analysis-report")):
            with pytest.raises(LoraLabError, match=f"is or lies inside the model or adapter folder {folder}; "):
                check()
    assert sorted(p.name for p in model.iterdir()) == ["config.json", "model.safetensors"]
    assert sorted(p.name for p in adapter.iterdir()) == ["adapter_config.json"]
    # a run folder's config.json (no weights beside it) does not make a model folder
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    assert files.check_cache_folder(tmp_path / "run" / "cache") == tmp_path / "run" / "cache"


def test_report_folders_loralab_did_not_create_are_refused_unless_empty(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "report.html").write_text("my page")
    for overwrite in (False, True):
        with pytest.raises(LoraLabError, match=f"^{photos} is not a folder loralab wrote \\(no .loralab-output marker\\)"
                                               "; not replacing it"):
            files.check_output_folder(photos, "experiment-report", reuse=True, overwrite=overwrite)
    assert sorted(p.name for p in photos.iterdir()) == ["report.html"]
    report = files.claim_output_folder(tmp_path / "report", "experiment-report")      # new: created and marked
    assert files.owned_kind(report) == "experiment-report"
    (report / "results.csv").write_text("a\n")
    assert files.claim_output_folder(report, "experiment-report") == report            # its own: re-used
    with pytest.raises(LoraLabError, match="is a loralab experiment-report folder; not replacing it"):
        files.claim_output_folder(report, "e2e-report")
    old = tmp_path / "old"                         # written before the markers: recognised by its layout
    old.mkdir()
    (old / "results.json").write_text("{}")
    assert files.claim_output_folder(old, "e2e-report", recognise=lambda f: (f / "results.json").is_file()) == old
    assert files.owned_kind(old) == "e2e-report"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert files.claim_output_folder(empty, "analysis-report") == empty


# -- a full disk (docs/reliability.md, "Limits checked before work") ---------------------------------------------
def _disk_full_in_safetensors(monkeypatch, code=errno.ENOSPC):
    """safetensors' save_file failing as it does on a full disk: its own error type, the OS error in the text."""
    import safetensors.torch
    from safetensors import SafetensorError

    def save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"half")
        raise SafetensorError(f"Error while serializing: I/O error: {os.strerror(code)} (os error {code})")

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)


@pytest.mark.parametrize("code, reason", [(errno.ENOSPC, "no space left on device"),
                                          (errno.EDQUOT, "disk quota exceeded")])
def test_a_full_disk_under_safetensors_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch, code, reason):
    path = files.write_safetensors(tmp_path / "t.safetensors", {"t": torch.ones(2)})
    before, inode = path.read_bytes(), path.stat().st_ino
    _disk_full_in_safetensors(monkeypatch, code)
    with pytest.raises(files.Unwritable) as caught:
        files.write_safetensors(path, {"t": torch.zeros(2)})
    assert str(caught.value) == f"{reason} while writing {path}; free some space or choose an output on another disk"
    assert caught.value.disk_full and caught.value.errno == code
    assert path.read_bytes() == before and path.stat().st_ino == inode
    assert [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]


def test_an_oserror_enospc_is_the_same_line(tmp_path):
    def full(tmp):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(LoraLabError) as caught:
        files.atomic_write(tmp_path / "x", full)
    assert str(caught.value) == f"no space left on device while writing {tmp_path / 'x'}; free some space or choose " \
                                "an output on another disk"


def test_safetensors_errors_that_carry_no_os_error_are_not_mapped(tmp_path, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    def bad(*args, **kwargs):
        raise SafetensorError("Error while serializing: TensorInvalidInfo")

    monkeypatch.setattr(safetensors.torch, "save_file", bad)
    with pytest.raises(SafetensorError, match="TensorInvalidInfo"):          # a bug stays visible
        files.write_safetensors(tmp_path / "t.safetensors", {"t": torch.ones(2)})


def test_the_real_safetensors_error_text_is_read(tmp_path):
    # A file-size limit makes the real save_file fail with its real message ("... (os error 27)").
    script = ("import resource, signal, torch\n"
              "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))\n"
              "from loralab import files\n"
              "try:\n"
              f"    files.write_safetensors({str(tmp_path / 'big.safetensors')!r}, {{'t': torch.zeros(1000)}})\n"
              "except files.Unwritable as exc:\n"
              "    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out == f"cannot write {tmp_path / 'big.safetensors'}: File too large; choose a writable output location\n"
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_inside_a_folder_build_keeps_the_previous_output(tmp_path, monkeypatch):
    out = tmp_path / "merged"
    with files.atomic_folder(out, "merged-model") as scratch:
        (scratch / "model.txt").write_text("one")
    _disk_full_in_safetensors(monkeypatch)
    from safetensors.torch import save_file  # what transformers' save_pretrained calls (patched)
    for write in (lambda folder: save_file({}, str(folder / "model.safetensors")),                 # direct
                  lambda folder: files.write_safetensors(folder / "model.safetensors", {})):     # through files
        with pytest.raises(files.Unwritable) as caught:
            with files.atomic_folder(out, "merged-model", replace=True) as scratch:
                write(scratch)
        assert str(caught.value) == (f"no space left on device while writing {out}; the previous output is untouched; "
                                     "free some space or choose an output on another disk")
        assert (out / "model.txt").read_text() == "one" and sorted(p.name for p in tmp_path.iterdir()) == ["merged"]
    with pytest.raises(files.Unwritable, match="; nothing was left half-written; free some space"):
        with files.atomic_folder(tmp_path / "new", "merged-model") as scratch:
            files.write_safetensors(scratch / "model.safetensors", {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]
