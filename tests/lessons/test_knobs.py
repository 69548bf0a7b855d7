"""Knobs: `loralab learn 3 r=1,2` re-runs lesson 3's experiment with other values, cached apart from the default
runs, its page in a folder of its own recording the values; a bad knob is one line and exit status 2."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from loralab.errors import LoraLabError
from loralab.lessons import get_lesson
from loralab.lessons.kit import KNOBS
from loralab.lessons.knobs import fingerprint, folder_suffix, parse_knobs


def test_parse_knobs_types_and_values():
    assert parse_knobs(KNOBS[3], ["r=1,4,16", "lr=1e-3", "steps=4"], 3) == {"r": (1, 4, 16), "lr": 1e-3, "steps": 4}
    assert folder_suffix({"r": (1, 2)}) == "-knobs-r1,2"
    assert folder_suffix({}) == ""
    assert fingerprint({"r": (1, 2)}) != fingerprint({"r": (1, 4)})


@pytest.mark.parametrize(("text", "message"), [
    ("rr=2", "unknown knob 'rr' for lesson 3; did you mean 'r'? its knobs are r, lr, steps (`loralab learn` lists them)"),
    ("r=0,2", "knob r=0,2 is out of range: each value of r must be between 1 and 256"),
    ("lr=abc", "knob lr=abc is not a number; e.g. lr=0.003"),
    ("r=2,2", "knob r=2,2: a value is repeated; give each once, e.g. r=1,2,4,8,64"),
    ("r", "'r' is not a knob; write NAME=VALUE, e.g. r=1,2,4,8,64"),
])
def test_a_bad_knob_is_one_line(text, message):
    with pytest.raises(LoraLabError) as error:
        parse_knobs(KNOBS[3], [text], 3)
    assert str(error.value) == message


@pytest.mark.parametrize(("argv", "message"), [
    (["3", "stpes=4"], "loralab learn: error: unknown knob 'stpes' for lesson 3; did you mean 'steps'? its knobs are r, lr, "
                      "steps (`loralab learn` lists them)\n"),
    (["3", "steps=0"], "loralab learn: error: knob steps=0 is out of range: steps must be between 1 and 1000\n"),
    (["1", "r=2"], "loralab learn: error: lesson 1 has no knobs (unknown knob 'r'); `loralab learn` lists each "
                   "lesson's knobs\n"),
])
def test_the_cli_rejects_a_bad_knob_with_one_line_and_status_2(argv, message, tmp_path):
    done = subprocess.run([sys.executable, "-m", "loralab", "learn", *argv, "--quick"], capture_output=True,
                          text=True, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert (done.returncode, done.stderr, done.stdout) == (2, message, "")
    assert not (tmp_path / "runs").exists()


def test_the_list_shows_each_lessons_knobs():
    from loralab.cli.learn_cmd import list_lessons

    text = list_lessons()
    assert "     knob r=1,2,4,8,64 (quick: 1,2,4,8,16; each between 1 and 256): the LoRA ranks" in text
    assert "knob lr=0.003" in text and "knob steps=96" in text
    assert "旋钮 r=…" in list_lessons("zh")


def test_a_knob_page_goes_to_its_own_folder():
    from loralab.cli.learn_cmd import page_folder

    lesson = get_lesson(3)
    assert str(page_folder(lesson, "en", False, {"r": (1, 4, 16), "lr": 1e-3})) == \
        os.path.join("runs", "lessons", "03-knobs-lr0.001-r1,4,16")
    assert str(page_folder(lesson, "zh", False, {"r": (1, 2)})) == os.path.join("runs", "lessons", "03-knobs-r1,2-zh")
    assert str(page_folder(lesson, "en", False)) == os.path.join("runs", "lessons", "03")


def test_lesson_3_with_knobs_trains_only_those_ranks_cached_apart(quick_lessons, tmp_path):
    from loralab.lessons.runner import run_lesson

    default_run, default_out = quick_lessons[3]
    cache = default_out.parent / "cache"
    before = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    run = run_lesson(get_lesson(3), tmp_path / "en", cache, quick=True, knobs={"r": (1, 2)})
    assert run.failed is None, run.failed and run.failed.error
    assert sorted(run.namespace["runs"]) == [1, 2] and run.namespace["RANKS"] == (1, 2)
    assert not run.disagreements
    new = sorted(p.name for p in cache.iterdir() if p.name not in before)
    key = fingerprint({"r": (1, 2)})
    # the knob run's entries (its ranks, the head, the r = 8 adapter answer_2 reads, section 5's equal-budget rows
    # with Wq, Wv at r = 4) are new, named by the knobs
    assert new == sorted(f"sst2-{m}-knobs-{key}" for m in ("head", "lora-alpha16.0-r1", "lora-alpha16.0-r2",
                                                           "lora-alpha16.0-r8", "lora-alpha16.0-r4",
                                                           "lora-targets-Wq-r8", "lora-targets-Wv-r8",
                                                           "lora-targets-WqWkWvWo-r2"))
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir() if p.name in before} == before   # defaults untouched
    settings = json.loads((cache / f"sst2-lora-alpha16.0-r1-knobs-{key}" / "run.json").read_text())["settings"]
    assert settings["knobs"] == {"r": [1, 2]}
    page = (tmp_path / "en" / "index.html").read_text(encoding="utf-8")
    assert '<p class="knobs">Run with knobs: r = 1,2 (everything else' in page
    assert "r = 1" in page and "r = 16" not in page.split("Check yourself")[0].split("convergence")[-1]
    assert json.loads((tmp_path / "en" / "run.json").read_text())["knobs"] == {"r": "1,2"}
    assert "Run with knobs" not in (default_out / "index.html").read_text(encoding="utf-8")
    # the Chinese edition of the same knob run reads the same cached runs and says the values in Chinese
    zh = run_lesson(get_lesson(3), tmp_path / "zh", cache, quick=True, lang="zh", knobs={"r": (1, 2)})
    assert zh.failed is None
    assert all(r.reused for r in zh.namespace["runs"].values())
    assert "本页用旋钮(knob)运行:r = 1,2" in (tmp_path / "zh" / "index.html").read_text(encoding="utf-8")


def test_lesson_2_knobs_change_r_and_alpha_and_its_checks_follow(quick_lessons, tmp_path):
    """`loralab learn 2 r=4 alpha=8`: §0's layers (yours, loralab's, PEFT's reading) and §4's adapters at r = 4,
    α = 8, cached apart; every check still right, because the checks read the values rather than assume r = 8."""
    from loralab.lessons.runner import run_lesson

    assert parse_knobs(KNOBS[2], ["r=4", "alpha=8"], 2) == {"r": 4, "alpha": 8.0}
    cache = quick_lessons[2][1].parent / "cache"
    run = run_lesson(get_lesson(2), tmp_path / "en", cache, quick=True, knobs={"r": 4, "alpha": 8.0})
    assert run.failed is None, run.failed and run.failed.error
    assert not run.disagreements and all(c["status"] == "right" for c in run.checks if c["kind"] == "exercise")
    ns = run.namespace
    assert (ns["R"], ns["ALPHA"]) == (4, 8.0)
    assert {m.A.shape[0] for m in ns["mine"].values()} == {4} and {m.scale for m in ns["mine"].values()} == {2.0}
    assert ns["sst2_run"].name == f"sst2-lora-alpha8.0-r4-knobs-{fingerprint({'r': 4, 'alpha': 8.0})}"
    assert ns["sst2_run"].settings["options"] == {"r": 4, "alpha": 8.0}
    assert "Run with knobs: alpha = 8, r = 4" in (tmp_path / "en" / "index.html").read_text(encoding="utf-8")
