"""The task list: what a model can be trained for, and the facts each task decides.

This is the one place task names are defined. The CLI's `--task` choices, `TrainConfig.task`,
`Task.kind`, the builtin data sets and the default models all name tasks from `TASK_NAMES`.

    from loralab.data.tasks import TASK_NAMES, task_kind
    task_kind("regression").best_metric        # "pearson"
"""
from __future__ import annotations

from dataclasses import dataclass

from loralab.errors import LoraLabError, choose

_LABELS = ("class", "number", "target")
_TEXT_PAIR = ("never", "optional", "required")


@dataclass(frozen=True)
class TaskKind:
    """One task and what it decides.

    labels: what an example's label is: "class" (a class name, mapped to an id by a LabelMap),
        "number" (a float regression target) or "target" (the text a causal LM continues the prompt with).
    text_pair: whether examples carry a second text: "never", "optional" (used when the data has it)
        or "required".
    best_metric: the dev metric that picks the best checkpoint; "loss" is minimised, the others maximised.
    default_max_length: tokens per example when the run does not say.
    model_task: the model head to load (a loralab.models.MODEL_TASKS value).
    peft_task_type: the `task_type` written to a PEFT adapter_config.json.
    """

    name: str
    description: str
    labels: str
    text_pair: str
    best_metric: str
    default_max_length: int
    model_task: str
    peft_task_type: str

    def __post_init__(self) -> None:
        if self.labels not in _LABELS or self.text_pair not in _TEXT_PAIR:
            raise LoraLabError(f"task {self.name!r}: labels must be one of {_LABELS} and text_pair one of "
                               f"{_TEXT_PAIR}, got {self.labels!r} and {self.text_pair!r}")

    @property
    def is_generative(self) -> bool:
        """True when the model generates text (causal LM) rather than predicting a label."""
        return self.labels == "target"

    @property
    def is_regression(self) -> bool:
        return self.labels == "number"


TASKS: dict[str, TaskKind] = {kind.name: kind for kind in (
    TaskKind("classification", "one text -> one of N classes", labels="class", text_pair="never",
             best_metric="accuracy", default_max_length=128, model_task="sequence-classification",
             peft_task_type="SEQ_CLS"),
    TaskKind("pair-classification", "two texts (e.g. premise, hypothesis) -> one of N classes", labels="class",
             text_pair="required", best_metric="accuracy", default_max_length=128,
             model_task="sequence-classification", peft_task_type="SEQ_CLS"),
    TaskKind("regression", "one text or a pair -> a number", labels="number", text_pair="optional",
             best_metric="pearson", default_max_length=128, model_task="sequence-classification",
             peft_task_type="SEQ_CLS"),
    TaskKind("causal-lm", "prompt -> target text, loss on the target only", labels="target", text_pair="never",
             best_metric="loss", default_max_length=256, model_task="causal-lm", peft_task_type="CAUSAL_LM"),
)}

TASK_NAMES: tuple[str, ...] = tuple(TASKS)
DEFAULT_TASK = "classification"  # what a data file without a named task is trained for


def task_kind(name: str) -> TaskKind:
    """The task called `name`; an unknown name is an error listing the known ones."""
    return TASKS[choose(name, TASK_NAMES, "task")]
