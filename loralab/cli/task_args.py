"""`--task` where a command builds a model from its config (inspect, merge): the same task names as train,
eval and predict (loralab.data.tasks), plus "base" for a model without a task head; the head to build
follows from the task (TaskKind.model_task)."""
from __future__ import annotations

import argparse

from loralab.cli.deprecated import warn_deprecated
from loralab.data.tasks import TASK_NAMES, task_kind

NO_HEAD = "base"
# loralab 0.1's inspect/merge took head names; "causal-lm" is both, "sequence-classification" is now a task.
_OLD_HEAD_NAMES = {"sequence-classification": "classification"}


def _task(text: str) -> str:
    if text in _OLD_HEAD_NAMES:
        warn_deprecated("loralab", f"--task {text}", f"--task {_OLD_HEAD_NAMES[text]}")
        return _OLD_HEAD_NAMES[text]
    return text


def add_task_argument(parser: argparse.ArgumentParser, auto_help: str) -> None:
    """--task TASK|base|auto (default auto: what `auto_help` says)."""
    parser.add_argument("--task", type=_task, choices=("auto", *TASK_NAMES, NO_HEAD), default="auto",
                        help=f"the task whose head to build ({', '.join(TASK_NAMES)}), or {NO_HEAD} for none; "
                             f"auto: {auto_help}")


def model_task(task: str) -> str:
    """The model head (a loralab.models.MODEL_TASKS value) a --task value asks for."""
    return NO_HEAD if task == NO_HEAD else task_kind(task).model_task
