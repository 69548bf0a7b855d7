"""The Chinese edition and the exercise mode: both languages have the same cells, hints and checks (paired in
one lesson source); the Chinese pages are Chinese and reuse the English runs' cache; figures draw Chinese
glyphs; blank answers are all "missing" with no traceback, a wrong one is "✗" while the rest are still checked."""
from __future__ import annotations

import html
import re
import warnings

import pytest

from loralab.lessons import CONCEPTS, LESSONS, get_lesson
from loralab.lessons.kit import Checks, cjk_font, font_settings
from loralab.lessons.runner import _HINT, exercise_source, parse_cells, prepare_code

CJK = re.compile(r"[\u4e00-\u9fff]")


def _headings(text: str) -> list[str]:
    return [line.split(" ", 1)[0] for line in text.splitlines() if re.match(r"^#{1,6} ", line)]


@pytest.mark.parametrize("lesson", LESSONS, ids=lambda lesson: lesson.file)
def test_every_english_cell_has_its_chinese_twin(lesson):
    cells = [c for c in parse_cells(lesson.path.read_text(encoding="utf-8")) if c.kind == "markdown"]
    assert all(c.get("lang") in ("en", "zh") for c in cells), "every markdown cell is in one language"
    assert len(cells) % 2 == 0
    for en, zh in zip(cells[::2], cells[1::2]):
        assert (en.get("lang"), zh.get("lang")) == ("en", "zh"), en.line
        assert en.get("mode") == zh.get("mode"), en.line
        assert _headings(en.source) == _headings(zh.source), en.line           # same sections, same levels
        assert CJK.search(zh.source) and not CJK.search(en.source.replace("关键概念清单", "")), en.line


@pytest.mark.parametrize("lesson", LESSONS, ids=lambda lesson: lesson.file)
def test_every_answer_has_a_hint_in_both_languages(lesson):
    for cell in parse_cells(lesson.path.read_text(encoding="utf-8")):
        if cell.kind != "code":
            continue
        langs = [m.group("lang") for m in map(_HINT.match, cell.source.splitlines()) if m]
        assert langs == ["en", "zh"] * (len(langs) // 2), cell.line
        for lang in ("en", "zh"):
            _, _, _, hints = prepare_code(cell.source, lang, blank=False)
            answers = re.findall(r"^((?:answer|prediction)_\w+) =", cell.source, flags=re.M)
            assert [name for name, _ in hints] == answers, (lesson.file, cell.line, lang)
            assert all(bool(CJK.search(text)) == (lang == "zh") for _, text in hints)


@pytest.mark.parametrize("number", [lesson.number for lesson in LESSONS])
def test_the_chinese_edition_has_the_same_cells_and_checks(quick_lessons, quick_lessons_zh, number):
    en, _ = quick_lessons[number]
    zh, out = quick_lessons_zh[number]
    assert zh.failed is None, zh.failed.error
    assert [r.cell.kind for r in zh.results] == [r.cell.kind for r in en.results]
    assert [len(r.figures) for r in zh.results] == [len(r.figures) for r in en.results]
    same = ("key", "kind", "status", "answer", "expected", "concept")
    assert [{k: c[k] for k in same} for c in zh.checks] == [{k: c[k] for k in same} for c in en.checks]
    assert all(CJK.search(c["name"]) for c in zh.checks)
    # the Chinese edition trained nothing: every run came from the English edition's cache
    assert "training" not in "".join(r.output for r in zh.results)
    page = (out / "index.html").read_text(encoding="utf-8")
    assert '<html lang="zh-CN">' in page and f"<h1>阶段 {number}:" in page
    assert "得分:" in page and "关键概念清单" in page and "术语表" in page
    for concept in CONCEPTS:                                   # the bilingual glossary: all eight terms
        assert html.escape(concept.zh) in page and html.escape(concept.en) in page
    ticked = zh.namespace["checks"].concepts()
    assert ticked and all(ticked.values()) and page.count("☑") == len(ticked)


def test_quick_mode_hides_the_normal_mode_reading(quick_lessons, quick_lessons_zh):
    page = (quick_lessons[3][1] / "index.html").read_text(encoding="utf-8")
    assert "How to read it" not in page and "Quick mode: a tiny random model ran here" in page
    printed = "".join(result.output for result in quick_lessons[5][0].results)
    assert "tiny random model" in printed and "pretrained MiniLM" not in printed
    assert "怎么读这些图" not in (quick_lessons_zh[3][1] / "index.html").read_text(encoding="utf-8")


@pytest.mark.parametrize("number", [lesson.number for lesson in LESSONS])
def test_blank_answers_are_all_missing_without_a_traceback(quick_exercises, number):
    run, out = quick_exercises[number]
    assert run.failed is None, run.failed.error
    assert run.checks and all(c["status"] == "missing" for c in run.checks)
    assert run.disagreements == []                               # a learner's blank is not the lesson's fault
    page = (out / "index.html").read_text(encoding="utf-8")
    exercises = len(run.namespace["checks"].of_kind("exercise"))
    assert f"Score: 0 of {exercises} right, 0 wrong, {exercises} missing" in page
    assert "answer_1 = None  # your answer" in page and "☑" not in page
    assert page.count('<details class="hint">') == len(run.checks)


def test_worked_solutions_are_only_in_the_answered_page(quick_lessons, quick_exercises):
    answered = (quick_lessons[1][1] / "index.html").read_text(encoding="utf-8")
    blank = (quick_exercises[1][1] / "index.html").read_text(encoding="utf-8")
    assert "answer_5 = 191" in answered and "answer_5 = 191" not in blank
    assert "answer_1 = 8 * (d_up + k_up)" in answered and "answer_1 = 8 * (d_up + k_up)" not in blank
    copy = exercise_source(get_lesson(1).path.read_text(encoding="utf-8"), "zh")
    assert "answer_5 = None  # 你的答案" in copy and "191  #" not in copy and "8 * (d_up + k_up)" not in copy
    assert "# hint: 求满足" in copy and "hint[en]" not in copy and 'lang="' not in copy and "## 自我检查" in copy


def test_a_wrong_answer_is_marked_and_the_rest_still_checked(quick_lessons, tmp_path):
    from loralab.lessons.runner import run_lesson

    lesson = get_lesson(1)
    copy = exercise_source(lesson.path.read_text(encoding="utf-8"), "en")
    copy = copy.replace("answer_3 = None  # your answer", "answer_3 = 16").replace(
        "answer_5 = None  # your answer", "answer_5 = 191").replace("answer_4 = None  # your answer", "answer_4 = 'lots'")
    source = tmp_path / "lesson_1.en.py"
    source.write_text(copy, encoding="utf-8")
    cache = next(iter(quick_lessons.values()))[1].parent / "cache"
    run = run_lesson(lesson, tmp_path / "page", cache, quick=True, exercises=True, source=source)
    assert run.failed is None, run.failed.error
    status = {c["key"]: c["status"] for c in run.checks}
    assert status == {"answer_1": "missing", "answer_2": "missing", "answer_3": "wrong", "answer_4": "wrong",
                      "answer_5": "right"}
    output = "".join(r.output for r in run.results)
    assert ("✗ answer_3 (rank of a random (32×8)·(8×32) product): 16 — expected 8: the product of a 32×8 and an "
            "8×32 matrix has rank ≤ 8, and random factors reach it") in output
    assert "Score: 1 of 5 right, 2 wrong, 2 missing" in output


def test_checks_never_raise():
    checks = Checks()
    checks.close("answer_1", "not a number", 1.0, "a float")
    checks.close("answer_2", None, 1.0, "a float")
    checks.equal("answer_3", [1], [1, 2], "a list", why="two items")
    checks.predict("prediction_1", "a", "b", "a letter")
    assert [c["status"] for c in checks.results] == ["wrong", "missing", "wrong", "wrong"]
    assert checks.score_line() == ("Score: 0 of 3 right, 2 wrong, 1 missing; "
                                   "predictions: 0 of 1 matched the measurement")


def test_a_chinese_figure_label_renders_with_every_glyph(tmp_path):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    if cjk_font() is None:
        pytest.skip("no CJK font installed (Debian: apt-get install fonts-noto-cjk; `make setup` does it)")
    with warnings.catch_warnings(record=True) as caught, matplotlib.rc_context(font_settings("zh")):
        warnings.simplefilter("always")
        fig, ax = plt.subplots()
        ax.set(title="全量微调更新的奇异值", xlabel="秩 r", ylabel="‖ΔW‖_F / ‖UᵀWV‖_F −1")
        fig.savefig(tmp_path / "zh.png")
        plt.close(fig)
    missing = [str(w.message) for w in caught if "missing from font" in str(w.message)]
    assert missing == []
