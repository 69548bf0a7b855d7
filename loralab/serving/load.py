"""Load a base model with one or more trained adapters for evaluation and prediction.

An adapter folder written by `loralab train` holds, next to the PEFT files, `labels.json` (the label map,
classifiers only) and `loralab-task.json` (base model, task, tokenization settings); a folder PEFT wrote works
too (base from base_model_name_or_path, task from task_type, labels from id2label: loralab.pretrained).
Several adapters can be loaded onto one base model and switched per call with `loralab.set_adapter`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from loralab.errors import LoraLabError


@dataclass
class Loaded:
    """A model with its adapters; `task` is a loralab.data.encoding.Task, label_map None for causal LM."""

    model: nn.Module
    tokenizer: Any
    task: Any
    label_map: Any
    model_spec: str
    adapters: dict[str, Path]


def parse_adapter_specs(specs: list[str]) -> dict[str, Path]:
    """`name=path` (or a bare path, named "default") -> {name: path}; names must be unique."""
    out: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = "default", spec
        if not name or not path:
            raise LoraLabError(f"--adapter {spec!r}: write NAME=PATH (or just PATH)")
        if name in out:
            raise LoraLabError(f"two adapters are named {name!r}; give each --adapter a different NAME=")
        out[name] = Path(path)
    return out


def read_task_info(adapter: Path) -> dict[str, Any]:
    from loralab.training.run_folder import read_task_info as read

    return read(adapter)


def load_base(model_spec: str, task_kind: str, label_map: Any = None, dtype: str = "fp32",
              quantize: str = "none") -> tuple[nn.Module, Any]:
    """The base model with the head `task_kind` needs (classifiers: label_map's width) and its tokenizer;
    its weights in `dtype`, the frozen Linear weights quantized with `quantize` ("none": as loaded)."""
    from loralab.models import load_tokenizer
    from loralab.training.inputs import load_model_for
    from loralab.training.memory import quantize_base

    tokenizer = load_tokenizer(model_spec)
    base = load_model_for(model_spec, task_kind, label_map, tokenizer, dtype=dtype)
    quantize_base(base, quantize)
    return base, tokenizer


def load_with_adapters(adapters: dict[str, Path], model: str | os.PathLike | None = None, task: str | None = None,
                       use: str | None = None, max_length: int | None = None, precision=None,
                       quantize: str = "none") -> Loaded:
    """Base model + every adapter (the first one's loralab-task.json names model and task unless given);
    `use` (default: the first adapter) is made active. The adapters must share task and label map.
    precision (loralab.precision.Precision; None: fp32 on the CPU): the base loads in its dtype and the model
    goes to its device; quantize: the frozen base's Linear weights stored as "int8" / "nf4" ("none": as loaded).
    An adapter trained on a quantized or 16-bit base loads on any of them (its factors are plain fp32)."""
    import loralab
    from loralab.data.encoding import Task
    from loralab.formats.peft import check_adapter_folder
    from loralab.pretrained import adapter_task_and_labels, resolve_base

    if not adapters:
        raise LoraLabError("no adapter given; pass --adapter NAME=PATH (a folder written by loralab train)")
    for path in adapters.values():
        check_adapter_folder(path)          # each folder's own problem first, before any is used
    first = next(iter(adapters))
    info = read_task_info(adapters[first])
    # Base model, task and labels as the adapter folder says them (loralab's files, or PEFT's: task_type,
    # base_model_name_or_path, id2label); see loralab.pretrained.
    source = resolve_base(adapters[first], model)
    model_spec = source.spec
    task_kind, label_map = adapter_task_and_labels(adapters[first], task, source.folder)
    for name, path in adapters.items():
        other, other_labels = adapter_task_and_labels(path, task, source.folder)
        if other != task_kind:
            raise LoraLabError(f"adapter {name!r} was trained for {other}, not {task_kind}; load adapters of one task")
        if other_labels != label_map:
            raise LoraLabError(f"adapters {first!r} and {name!r} have different label maps; "
                               "load adapters with the same classes together")
    base, tokenizer = load_base(str(source.folder), task_kind, label_map,
                                dtype=precision.name if precision is not None else "fp32", quantize=quantize)
    for name, path in adapters.items():
        loralab.load_adapter(base, path, adapter=name)
    if precision is not None:
        base.to(precision.device)
    use = use or first
    if use not in adapters:
        raise LoraLabError(f"--use {use!r} names no loaded adapter; loaded: {', '.join(adapters)}")
    loralab.set_adapter(base, use)
    base.eval()
    task_obj = Task(task_kind, max_length=max_length or info.get("max_length"),
                    prompt_template=info.get("prompt_template") or "{prompt}\n",
                    chat_template=bool(info.get("chat_template")))
    return Loaded(base, tokenizer, task_obj, label_map, model_spec, adapters)
