"""A run's inputs, built from its TrainConfig: the examples of each split, the Task, and the model with the
task head it needs (loaded by loralab.runtime.load_model_for). Everything here reads; nothing is written."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from loralab.data.builtin import builtin_dataset, load_builtin
from loralab.data.encoding import Task
from loralab.data.examples import Example
from loralab.data.readers import options_for_task, read_examples
from loralab.data.splits import fixed_subset
from loralab.models.architectures import task_head_modules
from loralab.runtime.load import load_model_for  # noqa: F401  (alias for one release: moved to loralab.runtime)


def load_splits(config) -> dict[str, list[Example]]:
    """train / dev / test examples of a TrainConfig (dev and test may be missing), with its limits applied."""
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
    return task_head_modules(model)
