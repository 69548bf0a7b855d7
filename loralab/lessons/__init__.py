"""Learn LoRA by running it: five lessons, one per stage of the learning route (see README.md here).

    loralab learn                 # list the lessons
    loralab learn 3 --quick       # run lesson 3 on a tiny model (seconds); writes runs/lessons/03/index.html

Each lesson is a Python file in jupytext's percent format (`# %%` code cells, `# %% [markdown]` text cells):
it runs as a plain script (`python lesson_3_transformer.py [--quick]`), opens as a notebook in Jupyter with
jupytext, and `loralab.lessons.runner` executes it cell by cell into a self-contained HTML page.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from loralab.errors import unknown

FOLDER = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Lesson:
    """One lesson: its number (1-5, the stage of the route), file name, title, the checklist concepts it
    teaches, and the folder holding the file (this package's, unless a test points elsewhere)."""

    number: int
    file: str
    title: str
    concepts: tuple[str, ...]
    folder: Path = FOLDER

    @property
    def path(self) -> Path:
        return self.folder / self.file

    @property
    def folder_name(self) -> str:
        """The lesson's output folder under runs/lessons/: '01' ... '05'."""
        return f"{self.number:02d}"


LESSONS: tuple[Lesson, ...] = (
    Lesson(1, "lesson_1_background.py", "Why LoRA, and the linear algebra it rests on (rank, SVD, Eckart-Young)",
           ("low-rank factorization", "SVD", "parameter-efficient fine-tuning")),
    Lesson(2, "lesson_2_method.py", "The method: LoRA's forward pass, B = 0, alpha/r, merging and task switching",
           ("low-rank factorization", "where inference latency comes from")),
    Lesson(3, "lesson_3_transformer.py", "LoRA in a Transformer: its weight matrices, their cost, and r = 1 ... 64",
           ("a Transformer's weight matrices", "parameter-efficient fine-tuning")),
    Lesson(4, "lesson_4_experiments.py", "The experiments: baselines, subspace similarity, amplification, latency",
           ("subspace similarity", "feature amplification", "where inference latency comes from",
            "parameter-efficient fine-tuning")),
    Lesson(5, "lesson_5_theory.py", "Theory: intrinsic dimension, feature amplification, why low rank suffices",
           ("intrinsic dimension", "feature amplification", "SVD")),
)


def get_lesson(number: int) -> Lesson:
    """The lesson with this number; an unknown number is a one-line error listing the valid ones."""
    for lesson in LESSONS:
        if lesson.number == number:
            return lesson
    raise unknown(number, [lesson.number for lesson in LESSONS], "lesson", " (`loralab learn` lists them)")


__all__ = ["FOLDER", "LESSONS", "Lesson", "get_lesson"]
