"""The one task list: every place that names tasks takes them from loralab.data.tasks."""
from __future__ import annotations

import argparse

import pytest

from loralab.cli import adapter_args, train_cmd
from loralab.data.builtin import BUILTIN_DATASETS
from loralab.data.encoding import Task
from loralab.data.tasks import DEFAULT_TASK, TASK_NAMES, TASKS, TaskKind, task_kind
from loralab.errors import LoraLabError
from loralab.models.builtin import BUILTIN_MODELS
from loralab.models.loading import MODEL_TASKS
from loralab.training.config import TrainConfig


def test_task_list_and_what_each_task_decides():
    assert TASK_NAMES == ("classification", "pair-classification", "regression", "causal-lm")
    assert {n: TASKS[n].best_metric for n in TASK_NAMES} == {
        "classification": "accuracy", "pair-classification": "accuracy", "regression": "pearson", "causal-lm": "loss"}
    assert [n for n in TASK_NAMES if TASKS[n].is_generative] == ["causal-lm"]
    assert [n for n in TASK_NAMES if TASKS[n].is_regression] == ["regression"]
    assert {TASKS[n].default_max_length for n in TASK_NAMES} == {128, 256}
    assert all(TASKS[n].model_task in MODEL_TASKS for n in TASK_NAMES)
    assert DEFAULT_TASK in TASKS and task_kind("regression") is TASKS["regression"]
    with pytest.raises(LoraLabError, match="unknown task 'ner'; choose one of classification, pair-classification, "
                                           "regression, causal-lm"):
        task_kind("ner")
    with pytest.raises(LoraLabError, match="labels must be one of"):
        TaskKind("x", "", labels="tags", text_pair="never", best_metric="f1", default_max_length=8,
                 model_task="base", peft_task_type="TOKEN_CLS")


def _choices(add_arguments, *args) -> list[str]:
    parser = argparse.ArgumentParser()
    add_arguments(parser, *args)
    return next(a.choices for a in parser._actions if a.dest == "task")


def test_every_task_name_comes_from_the_one_list():
    assert list(_choices(train_cmd.add_arguments)) == list(TASK_NAMES)
    assert list(_choices(adapter_args.add_adapter_arguments, "help")) == list(TASK_NAMES)
    assert all(spec.task in TASKS for spec in BUILTIN_DATASETS.values())
    assert all(set(model.tasks) <= set(TASK_NAMES) for model in BUILTIN_MODELS.values())
    for name in TASK_NAMES:
        assert Task(name).token_limit == TASKS[name].default_max_length
        config = TrainConfig(train_file="x.tsv", task=name)
        assert config.best_metric == TASKS[name].best_metric
    with pytest.raises(LoraLabError, match="unknown task 'ner'"):
        TrainConfig(train_file="x.tsv", task="ner")
    with pytest.raises(LoraLabError, match="unknown task 'ner'"):
        Task("ner")
