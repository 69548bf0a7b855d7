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
S = kit.settings()
checks = kit.Checks(S)
# hint[en]: add them
# hint[zh]: 把它们相加
answer_1 = 2 + 2
checks.equal("answer_1", answer_1, 4, S.t("two plus two", "二加二"))
print("quick" if S.quick else "normal", S.lang)
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
    assert main(["learn", "--lang", "zh"]) == 0
    out = capsys.readouterr().out
    for lesson in LESSONS:
        assert f"  {lesson.number}  阶段 {lesson.number}:" in out


def test_run_writes_the_page(stand_in, capsys):
    out = stand_in / "page"
    assert main(["learn", "1", "--quick", "--output", str(out), "--cache", str(stand_in / "cache")]) == 0
    printed = capsys.readouterr().out
    assert "quick en\n" in printed and "Score: 1 of 1 right, 0 wrong, 0 missing" in printed
    assert str(out / "index.html") in printed
    summary = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert summary["quick"] and summary["checks"][0]["passed"] and summary["threads"] == 1
    assert "two plus two" in (out / "index.html").read_text(encoding="utf-8")


def test_default_output_folder(stand_in, monkeypatch, capsys):
    monkeypatch.chdir(stand_in)
    assert main(["learn", "1", "--quiet", "--cache", "cache"]) == 0
    assert (stand_in / "runs" / "lessons" / "01" / "index.html").is_file()
    assert "normal" not in capsys.readouterr().out.splitlines()     # --quiet: the lesson's output is not echoed


def test_a_failing_lesson_exits_1_with_one_line(stand_in, capsys):
    (stand_in / "lesson_1.py").write_text(LESSON.replace("2 + 2", "2 +"), encoding="utf-8")
    assert main(["learn", "1", "--quiet", "--output", str(stand_in / "page"), "--cache", str(stand_in / "c")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cell starting at line 4 of lesson_1.py" in err[0] and "SyntaxError" in err[0]
    assert (stand_in / "page" / "index.html").is_file()             # the page shows the traceback


def test_a_worked_solution_that_disagrees_exits_1_with_one_line(stand_in, capsys):
    (stand_in / "lesson_1.py").write_text(LESSON.replace("2 + 2", "2 + 3"), encoding="utf-8")
    assert main(["learn", "1", "--quiet", "--output", str(stand_in / "page"), "--cache", str(stand_in / "c")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"loralab learn: lesson 1 disagrees with itself: 1 worked solution(s) failed their check (answer_1); "
                   f"the page shows them: {stand_in / 'page' / 'index.html'}"]


def test_chinese_edition(stand_in, capsys):
    out = stand_in / "page-zh"
    assert main(["learn", "1", "--lang", "zh", "--output", str(out), "--cache", str(stand_in / "c")]) == 0
    printed = capsys.readouterr().out
    assert "normal zh\n" in printed and "得分:1 题中答对 1 题,答错 0 题,未答 0 题" in printed
    page = (out / "index.html").read_text(encoding="utf-8")
    assert '<html lang="zh-CN">' in page and "二加二" in page and "把它们相加" in page and "add them" not in page


def test_exercises_write_a_copy_once_and_check_the_learners_answers(stand_in, monkeypatch, capsys):
    monkeypatch.chdir(stand_in)
    assert main(["learn", "1", "--exercises", "--quiet", "--cache", "c"]) == 0
    copy = stand_in / "runs" / "lessons" / "exercises" / "lesson_1.en.py"
    printed = capsys.readouterr().out
    assert f"wrote the exercise copy {copy.relative_to(stand_in)}" in printed
    assert "Score: 0 of 1 right, 0 wrong, 1 missing" in printed
    assert "# hint: add them\nanswer_1 = None  # your answer\n" in copy.read_text(encoding="utf-8")
    assert (stand_in / "runs" / "lessons" / "01-exercises" / "index.html").is_file()
    copy.write_text(copy.read_text(encoding="utf-8").replace("answer_1 = None  # your answer", "answer_1 = 5"),
                    encoding="utf-8")
    assert main(["learn", "1", "--exercises", "--quiet", "--cache", "c"]) == 0     # a wrong answer is no failure
    printed = capsys.readouterr().out
    assert "checking your answers in the exercise copy" in printed and "Score: 0 of 1 right, 1 wrong, 0 missing" in printed
    assert "answer_1 = 5" in copy.read_text(encoding="utf-8")                 # the learner's copy is never replaced


def test_a_lesson_that_cannot_find_its_data_is_a_user_error(stand_in, monkeypatch, capsys):
    (stand_in / "lesson_1.py").write_text(LESSON + "kit.examples('sst2', 'dev', 5)\n", encoding="utf-8")
    monkeypatch.setenv("LORALAB_SHARED_DATA", str(stand_in / "no-such-folder"))
    assert main(["learn", "1", "--quiet", "--output", str(stand_in / "page"), "--cache", str(stand_in / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lesson 1 cannot run here: shared data folder" in err[0] and "LORALAB_SHARED_DATA" in err[0]


@pytest.mark.parametrize("argv, message", [
    (["learn", "9"], "unknown lesson 9; choose one of 1, 2, 3, 4, 5"),
    (["learn", "1", "--threads", "0"], "--threads must be at least 1"),
    (["learn", "1", "--lang", "fr"], "unknown lesson language (--lang) 'fr'; choose one of en, zh"),
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
