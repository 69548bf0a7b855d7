"""`loralab learn`: the list, running a lesson into its page (a small stand-in lesson, so this stays fast;
tests/lessons runs the real ones), and one-line errors with exit status 2 (1 when a lesson itself fails)."""
from __future__ import annotations

import json

import pytest

import loralab.lessons
from loralab.cli.main import main
from loralab.lessons import LESSONS, Lesson

LESSON = """# %% [markdown]
# # Lesson 1: a stand-in
# %%
from loralab.lessons import kit
checks = kit.Checks()
checks.equal("two plus two", 4, 2 + 2)
print("quick" if kit.settings().quick else "normal")
"""


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    """Lesson 1 replaced by a one-cell lesson in tmp_path (the CLI looks lessons up at call time)."""
    (tmp_path / "lesson_1.py").write_text(LESSON, encoding="utf-8")
    lesson = Lesson(1, "lesson_1.py", "A stand-in", ("testing",), folder=tmp_path)
    monkeypatch.setattr(loralab.lessons, "get_lesson", lambda number: lesson)
    return tmp_path


def test_list(capsys):
    assert main(["learn"]) == 0
    out = capsys.readouterr().out
    for lesson in LESSONS:
        assert f"  {lesson.number}  {lesson.title}" in out
    assert "intrinsic dimension" in out and "README.md" in out


def test_run_writes_the_page(stand_in, capsys):
    out = stand_in / "page"
    assert main(["learn", "1", "--quick", "--output", str(out), "--cache", str(stand_in / "cache")]) == 0
    printed = capsys.readouterr().out
    assert "quick\n" in printed and "1 check-yourself answers verified" in printed and str(out / "index.html") in printed
    summary = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert summary["quick"] and summary["checks"][0]["passed"] and summary["threads"] == 1
    assert "two plus two" in (out / "index.html").read_text(encoding="utf-8")


def test_default_output_folder(stand_in, monkeypatch, capsys):
    monkeypatch.chdir(stand_in)
    assert main(["learn", "1", "--quiet", "--cache", "cache"]) == 0
    assert (stand_in / "runs" / "lessons" / "01" / "index.html").is_file()
    assert "normal" not in capsys.readouterr().out.splitlines()     # --quiet: the lesson's output is not echoed


def test_a_failing_lesson_exits_1_with_one_line(stand_in, capsys):
    (stand_in / "lesson_1.py").write_text(LESSON.replace("2 + 2", "2 + 3"), encoding="utf-8")
    assert main(["learn", "1", "--quiet", "--output", str(stand_in / "page"), "--cache", str(stand_in / "c")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cell starting at line 4 of lesson_1.py" in err[0] and "AssertionError" in err[0]
    assert (stand_in / "page" / "index.html").is_file()             # the page shows the traceback


def test_a_lesson_that_cannot_find_its_data_is_a_user_error(stand_in, monkeypatch, capsys):
    (stand_in / "lesson_1.py").write_text(LESSON + "kit.examples('sst2', 'dev', 5)\n", encoding="utf-8")
    monkeypatch.setenv("LORALAB_SHARED_DATA", str(stand_in / "no-such-folder"))
    assert main(["learn", "1", "--quiet", "--output", str(stand_in / "page"), "--cache", str(stand_in / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lesson 1 cannot run here: shared data folder" in err[0] and "LORALAB_SHARED_DATA" in err[0]


@pytest.mark.parametrize("argv, message", [
    (["learn", "9"], "unknown lesson 9; choose one of 1, 2, 3, 4, 5"),
    (["learn", "1", "--threads", "0"], "--threads must be at least 1"),
])
def test_user_errors(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_refuses_to_replace_a_folder_it_did_not_write(stand_in, capsys):
    mine = stand_in / "notes"
    mine.mkdir()
    (mine / "todo.txt").write_text("keep me", encoding="utf-8")
    assert main(["learn", "1", "--quiet", "--output", str(mine), "--cache", str(stand_in / "c")]) == 2
    assert "not a folder loralab wrote" in capsys.readouterr().err
    assert (mine / "todo.txt").read_text(encoding="utf-8") == "keep me"
