"""The output policy from the command line (loralab/files.py, called through `--output/-o` of every command
that writes): devices and pipes written through, links never replaced, a command's inputs never written,
folders loralab did not create never filled, caches never inside a model folder. Each refusal is one line,
exit status 2, before any work, with the files on disk unchanged."""
from __future__ import annotations

import importlib.util
import io
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from loralab.cli.main import main

_spec = importlib.util.spec_from_file_location("training_fixtures",
                                               Path(__file__).resolve().parents[1] / "training" / "conftest.py")
fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixtures)

PROMPTS = [line.split("||")[0] for line in fixtures.e2e_lines(3)]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory) -> Path:
    """A causal-LM adapter on the tiny LLaMA after two training steps."""
    folder = tmp_path_factory.mktemp("outputs")
    model = fixtures.write_tiny_causal(folder / "llama", "llama")
    train = folder / "train.txt"
    train.write_text("\n".join(fixtures.e2e_lines(16)) + "\n")
    assert main(["train", "--model", str(model), "--task", "causal-lm", "--train-file", str(train), "--format", "e2e",
                 "--max-length", "64", "--batch-size", "8", "--max-steps", "2", "--threads", "1", "--no-progress",
                 "--output", str(folder / "run")]) == 0
    return folder / "run" / "adapter"


def _snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry under `folder` with its type, inode and bytes: what a refused command must leave as it was."""
    entries = {}
    for path in sorted(folder.rglob("*")):
        st = os.lstat(path)
        content = path.read_bytes() if stat.S_ISREG(st.st_mode) else os.readlink(path) if path.is_symlink() else None
        entries[str(path.relative_to(folder))] = (st.st_mode, st.st_ino, content)
    return entries


def _refused(argv: list[str], capsys, *expected: str, after_work: bool = False) -> None:
    """The command exits 2 with one line on stderr holding each `expected` text (after_work: the model's
    loading bar may come before that line; no traceback)."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and (after_work or len(lines) == 1), err
    assert lines[-1].startswith(f"loralab {argv[0]}: error: "), err
    for text in expected:
        assert text.lower() in lines[-1].lower(), err


def _photos(tmp_path: Path, *names: str) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in names:
        (folder / name).write_text(f"the user's own {name}")
    return folder


def _model_folder(folder: Path) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "bert"}')
    (folder / "model.safetensors").write_bytes(b"weights")
    return folder


# --------------------------------------------------------------------------------------------------
# Devices, pipes and links
# --------------------------------------------------------------------------------------------------
def test_eval_to_dev_null_keeps_the_device(adapter, tmp_path, capsys):
    data = tmp_path / "dev.txt"
    data.write_text("\n".join(fixtures.e2e_lines(4)) + "\n")
    before = os.stat("/dev/null")
    assert main(["eval", "--adapter", str(adapter), "--file", str(data), "--format", "e2e", "--threads", "1",
                 "--no-progress", "-o", "/dev/null"]) == 0
    after = os.stat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and (after.st_ino, after.st_rdev) == (before.st_ino, before.st_rdev)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
def test_predict_to_dev_full_is_one_line_and_keeps_the_device(adapter, monkeypatch, capsys):
    before = os.stat("/dev/full")
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(PROMPTS) + "\n"))
    _refused(["predict", "--adapter", str(adapter), "--threads", "1", "--no-progress", "--max-new-tokens", "2",
              "-o", "/dev/full"], capsys, "/dev/full", "No space left on device", after_work=True)
    after = os.stat("/dev/full")
    assert stat.S_ISCHR(after.st_mode) and (after.st_ino, after.st_rdev) == (before.st_ino, before.st_rdev)


def test_predict_through_a_link_to_stdout_writes_there_and_keeps_the_link(adapter, tmp_path):
    link = tmp_path / "out.txt"
    link.symlink_to("/proc/self/fd/1")      # the child's stdout: a pipe
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "loralab", "predict", "--adapter", str(adapter), "--threads", "1",
                           "--no-progress", "--max-new-tokens", "2", "-o", str(link)],
                          input="\n".join(PROMPTS) + "\n", capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == len(PROMPTS)
    assert link.is_symlink() and os.readlink(link) == "/proc/self/fd/1"


def test_a_link_to_a_file_is_refused_and_kept(adapter, tmp_path, capsys):
    mine = tmp_path / "mine.txt"
    mine.write_text("my notes")
    link = tmp_path / "out.txt"
    link.symlink_to(mine)
    before = _snapshot(tmp_path)
    _refused(["predict", "--adapter", str(adapter), "-o", str(link)], capsys,
             f"{link} is a symbolic link to {mine}; loralab does not replace links")
    assert _snapshot(tmp_path) == before


def test_an_output_link_to_a_model_folder_says_it_is_a_link(tmp_path, capsys):
    model = fixtures.write_tiny_bert(tmp_path / "bert")
    train = fixtures.write_sst2_slice(tmp_path, 0, 16, "train")
    link = tmp_path / "run"
    link.symlink_to(model)
    merged_link = tmp_path / "merged"
    merged_link.symlink_to(model)
    before = _snapshot(tmp_path)
    _refused(["train", "--model", str(tmp_path / "other"), "--train-file", str(train), "--output", str(link)], capsys,
             f"{link} is a symbolic link to {model}; loralab does not replace links or write through them")
    _refused(["merge", str(model), str(tmp_path / "adapter"), "--output", str(merged_link), "--overwrite"], capsys,
             f"{merged_link} is a symbolic link to {model}")
    assert _snapshot(tmp_path) == before


# --------------------------------------------------------------------------------------------------
# The command's own inputs
# --------------------------------------------------------------------------------------------------
def test_eval_and_predict_never_write_their_inputs(tmp_path, capsys):
    adapter = tmp_path / "A"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    data = tmp_path / "dev.tsv"
    data.write_text("sentence\tlabel\ngood\t1\n")
    os.link(data, tmp_path / "same-inode.tsv")
    before = _snapshot(tmp_path)
    message = "is, holds or lies inside an input of this command"
    _refused(["eval", "--adapter", str(adapter), "--file", str(data), "-o", str(adapter / "adapter_config.json")],
             capsys, f"output {adapter / 'adapter_config.json'} {message}")
    _refused(["predict", "--adapter", str(adapter), "--file", str(data), "-o", str(data)], capsys, message)
    _refused(["eval", "--adapter", str(adapter), "--file", str(data), "-o", str(data)], capsys, message)
    _refused(["eval", "--adapter", str(adapter), "--file", str(data), "-o", str(tmp_path / "same-inode.tsv")],
             capsys, message)
    assert _snapshot(tmp_path) == before


def test_nothing_is_written_into_a_model_folder(tmp_path, capsys):
    model = _model_folder(tmp_path / "base")
    adapter = tmp_path / "A"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    before = _snapshot(tmp_path)
    inside = f"is or lies inside the model or adapter folder {model}"
    _refused(["eval", "--adapter", str(adapter), "--file", str(tmp_path / "dev.tsv"), "-o", str(model / "config.json")],
             capsys, inside)     # the adapter's base, not named on the command line
    _refused(["experiment", "rank", "--quick", "-o", str(model / "rank")], capsys, inside)
    _refused(["analyze", str(adapter), "-o", str(model / "report")], capsys, inside)
    _refused(["analyze", str(adapter), "--base", str(model), "-o", str(model)], capsys, "an input of this command")
    _refused(["learn", "1", "--quick", "-o", str(tmp_path / "page"), "--cache", str(model)], capsys, inside)
    _refused(["learn", "1", "--quick", "-o", str(tmp_path / "page"), "--cache", str(adapter / "cache")], capsys,
             f"is or lies inside the model or adapter folder {adapter}")
    assert _snapshot(tmp_path) == before


# --------------------------------------------------------------------------------------------------
# Report folders loralab did not create
# --------------------------------------------------------------------------------------------------
REFUSED = "is not a folder loralab wrote (no .loralab-output marker); not replacing it"


def test_experiment_refuses_a_folder_it_did_not_create(tmp_path, capsys):
    photos = _photos(tmp_path, "report.html", "results.csv")
    before = _snapshot(tmp_path)
    _refused(["experiment", "rank", "--quick", "-o", str(photos)], capsys, f"{photos} {REFUSED}")
    assert _snapshot(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]     # no _quick-model, nothing trained


def test_amplification_refuses_a_rank_folder_it_did_not_create(tmp_path, capsys):
    rank = tmp_path / "rank"
    rank.mkdir()
    (rank / "notes.txt").write_text("mine")
    before = _snapshot(rank)
    _refused(["experiment", "amplification", "--quick", "-o", str(tmp_path / "amp")], capsys, f"{rank} {REFUSED}")
    assert _snapshot(rank) == before and (rank / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank"]      # checked before amp/ was created


def test_e2e_refuses_a_folder_it_did_not_create(tmp_path, capsys):
    photos = _photos(tmp_path, "results.md", "examples.md")
    before = _snapshot(tmp_path)
    _refused(["e2e", "--quick", "-o", str(photos)], capsys, f"{photos} {REFUSED}")
    assert _snapshot(tmp_path) == before


def test_analyze_refuses_a_folder_it_did_not_create(tmp_path, capsys):
    adapter = tmp_path / "A"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    photos = _photos(tmp_path, "report.html")
    before = _snapshot(tmp_path)
    _refused(["analyze", str(adapter), "-o", str(photos)], capsys, f"{photos} {REFUSED}")
    assert _snapshot(tmp_path) == before


def test_learn_refuses_a_folder_it_did_not_create(tmp_path, capsys):
    photos = _photos(tmp_path, "index.html")
    before = _snapshot(tmp_path)
    _refused(["learn", "1", "--quick", "-o", str(photos), "--cache", str(tmp_path / "cache")], capsys,
             f"{photos} {REFUSED}")
    assert _snapshot(tmp_path) == before
