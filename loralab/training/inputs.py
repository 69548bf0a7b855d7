"""A run's inputs, built from its TrainConfig: the examples of each split, the Task, and the model with the
task head it needs. Everything here reads; nothing is written."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from loralab.data.batching import pad_token_id_for
from loralab.data.encoding import Task
from loralab.data.examples import Example
from loralab.data.labels import LabelMap
from loralab.data.splits import fixed_subset
from loralab.data.tasks import task_kind


def load_splits(config) -> dict[str, list[Example]]:
    """train / dev / test examples of a TrainConfig (dev and test may be missing), with its limits applied."""
    from loralab.data.builtin import builtin_dataset, load_builtin
    from loralab.data.readers import options_for_task, read_examples

    if config.data is not None:
        spec = builtin_dataset(config.data)
        raw = load_builtin(config.data)
        splits = {"train": raw[spec.train_split]}
        if spec.eval_split in raw and spec.eval_split != spec.train_split:
            splits["dev"] = raw[spec.eval_split]
        if "test" in raw and spec.eval_split != "test":
            splits["test"] = raw["test"]
    else:
        options = options_for_task(config.task, config.read_options)
        splits = {"train": read_examples(config.train_file, options)}
        for name, path in (("dev", config.dev_file), ("test", config.test_file)):
            if path:
                splits[name] = read_examples(path, options)
    limits = {"train": config.train_limit, "dev": config.dev_limit, "test": config.test_limit}
    return {name: fixed_subset(examples, limits[name]) for name, examples in splits.items()}


def input_paths(config) -> tuple[Path, ...]:
    """The files and folders a TrainConfig reads (model folder, data files) that exist on disk: a run's
    output may never be, hold or lie inside one of them."""
    named = (config.model, config.train_file, config.dev_file, config.test_file)
    return tuple(Path(p) for p in named if p and Path(p).exists())


def task_of(config) -> Task:
    return Task(config.task, max_length=config.max_length, prompt_template=config.prompt_template,
                chat_template=config.chat_template)


def head_modules(model: nn.Module) -> tuple[str, ...]:
    """The family's fresh task-head module names (loralab.models.architectures), () when unknown."""
    from loralab.models.architectures import task_head_modules

    return task_head_modules(model)


def load_model_for(spec: str, task: str, label_map: LabelMap | None, tokenizer: Any,
                   dtype: str = "fp32") -> nn.Module:
    """The model with the head the task needs, its weights in `dtype`; classifier heads get
    `label_map.num_labels` outputs and a pad token id (GPT-2/LLaMA classifiers find each row's last real token
    through it)."""
    from loralab.models import load_model

    if task_kind(task).is_generative:
        return load_model(spec, task="causal-lm", dtype=dtype)
    model = load_model(spec, task="sequence-classification", num_labels=label_map.num_labels, dtype=dtype)
    if label_map.regression:
        model.config.problem_type = "regression"
    else:
        model.config.problem_type = "single_label_classification"
        model.config.id2label = dict(enumerate(label_map.names))
        model.config.label2id = {n: i for i, n in enumerate(label_map.names)}
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = pad_token_id_for(tokenizer)
    return model
