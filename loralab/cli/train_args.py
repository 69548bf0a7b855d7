"""The training flags, generated from TrainConfig's fields: `--field-name`, typed by the annotation, the
field's docstring as help. train uses them all; e2e, experiment, eval and predict reuse the ones they share
(--model, --data, --epochs, --lr, --threads, ...), so a flag means the same everywhere.

    add_train_arguments(parser, ("epochs", "lr"), shown_defaults={"lr": 1e-3})
    train_fields_given(args)        # {"lr": 0.001} when only --lr was given
"""
from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import Any

from loralab.cli.dataclass_args import add_field_flags, flag_name, given_fields
from loralab.cli.names import DTYPE_CHOICES, QUANTIZE_CHOICES
from loralab.data.tasks import TASK_NAMES
from loralab.training.config_files import OTHER_SPELLINGS

# The groups of `loralab train --help`, in order; every TrainConfig field with a flag is in one of them.
GROUPS: dict[str, tuple[str, ...]] = {
    "model and data": ("model", "task", "data", "train_file", "dev_file", "test_file", "train_limit", "dev_limit",
                       "test_limit", "max_length", "prompt_template", "chat_template", "packing",
                       "standardize_targets"),
    "training": ("method", "epochs", "max_steps", "batch_size", "eval_batch_size", "grad_accum", "lr",
                 "lora_plus_ratio", "weight_decay", "betas", "eps", "warmup_ratio", "max_warmup_steps", "scheduler",
                 "max_grad_norm", "seed", "eval_every", "checkpoint_every", "log_every", "best_metric",
                 "early_stopping_patience", "report_to"),
    "runtime": ("compile", "threads", "progress"),
    "device, precision and memory": ("device", "dtype", "quantize", "gradient_checkpointing", "fsdp"),
}
FLAG_FIELDS = tuple(name for names in GROUPS.values() for name in names)


def count_or_all(text: str) -> int:
    """A limit on the command line: a positive count, or 0 / 'all' for no limit (returned as 0)."""
    if text.strip().lower() == "all":
        return 0
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of examples, or 0 / 'all' for all, got {text!r}") \
            from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of examples, or 0 / 'all' for all, got {text!r}")
    return value


def _scheduler(text: str) -> str:
    return text.replace("-", "_")


def other_spellings() -> dict[str, tuple[str, ...]]:
    """{TrainConfig field: its other libraries' flags}, e.g. {"lr": ("--learning-rate",)}: transformers'
    TrainingArguments names from the one table (loralab.training.config_files.OTHER_SPELLINGS) that config
    files read too, for the fields with a flag."""
    flags: dict[str, tuple[str, ...]] = {}
    for other, field in OTHER_SPELLINGS.items():
        if "." not in other and field in FLAG_FIELDS:
            flags[field] = (*flags.get(field, ()), "--" + other.replace("_", "-"))
    return flags


# What makes `loralab train` a run of its own instead of the builtin run (DEFAULT_RUN).
RUN_CHOOSERS = ("model", "data", "train_file")


class RunDefault(str):
    """A default shown in --help that depends on the run: "1 with the builtin run, 3 with --model, ..."."""


def _shown(value: Any) -> str:
    return "unset" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def builtin_run_defaults() -> dict[str, RunDefault]:
    """{field: its help default} for the flags whose default a plain `loralab train` (the builtin run,
    loralab.training.config.DEFAULT_RUN) sets differently from TrainConfig's, which a run of one's own uses."""
    from loralab.training.config import DEFAULT_RUN, TrainConfig

    fields = TrainConfig.__dataclass_fields__
    choosers = ", ".join(flag_name(name) for name in RUN_CHOOSERS)
    return {name: RunDefault(f"{_shown(DEFAULT_RUN[name])} with the builtin run, {_shown(fields[name].default)} "
                             f"with {choosers.replace(', --train', ' or --train')}")
            for name in FLAG_FIELDS if name in DEFAULT_RUN and name not in RUN_CHOOSERS
            and DEFAULT_RUN[name] != fields[name].default}


def _tweaks() -> dict[str, dict[str, Any]]:
    from loralab.training.config import SCHEDULERS

    limit = {"type": count_or_all, "metavar": "N"}
    return {"task": {"choices": TASK_NAMES}, "train_limit": limit, "dev_limit": limit, "test_limit": limit,
            "scheduler": {"type": _scheduler, "choices": list(SCHEDULERS)},
            "report_to": {"metavar": "TRACKER"}, "betas": {"metavar": ("BETA1", "BETA2")},
            "max_steps": {"metavar": "N"}, "eval_every": {"metavar": "N"}, "checkpoint_every": {"metavar": "N"},
            "log_every": {"metavar": "N"}, "early_stopping_patience": {"metavar": "N"},
            "device": {"metavar": "DEVICE"}, "dtype": {"choices": DTYPE_CHOICES},
            "quantize": {"choices": QUANTIZE_CHOICES}}


def add_train_arguments(parser: argparse.ArgumentParser, fields: Iterable[str] = FLAG_FIELDS,
                        shown_defaults: dict[str, Any] | None = None, helps: dict[str, str] | None = None) -> None:
    """Flags for the TrainConfig `fields`, in train's groups (a group only when one of its fields is asked
    for). `shown_defaults`: this command's defaults where they differ; `helps`: help texts to use instead."""
    from loralab.training.config import TrainConfig

    fields = tuple(fields)
    tweaks = _tweaks()
    for name, text in (helps or {}).items():
        tweaks[name] = {**tweaks.get(name, {}), "help": text}
    for name, aliases in other_spellings().items():
        tweaks[name] = {**tweaks.get(name, {}), "aliases": aliases}
    for title, names in GROUPS.items():
        chosen = [name for name in names if name in fields]
        if chosen:
            add_field_flags(parser.add_argument_group(title), TrainConfig, chosen, tweaks, shown_defaults)
    parser.set_defaults(_train_fields=tuple(parser.get_default("_train_fields") or ()) + fields)


def train_fields_given(args: argparse.Namespace) -> dict[str, Any]:
    """{TrainConfig field: value} of the training flags given on the command line."""
    return given_fields(args, getattr(args, "_train_fields", FLAG_FIELDS))


def flag_for(field: str) -> str:
    """How a TrainConfig field ("lr") or section setting ("lora.r") is given on the command line, for messages."""
    from loralab.cli.lora_args import FLAG_FIELDS as LORA_FLAG_FIELDS
    from loralab.training.config import TrainConfig

    section, _, key = field.rpartition(".")
    if section == "lora" and key in LORA_FLAG_FIELDS:
        return f"--{key.replace('_', '-')} ({field})"
    if section or field not in FLAG_FIELDS:
        return f"the setting {field!r}"
    return flag_name(field, TrainConfig.__dataclass_fields__[field].default)
