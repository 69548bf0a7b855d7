"""A model ready to run: the base with the head its task needs, on its device, in its dtype, its frozen weights
quantized as asked (`load_base`), and with trained adapters on top (`load_with_adapters`, `from_pretrained`).
Training, serving, eval, predict, e2e, the lessons and the experiments load models through here.

    runtime = Runtime.resolve("auto", "bf16")
    model, tokenizer = load_base("smollm2-135m", "causal-lm", runtime)                   # base, no adapter
    loaded = load_with_adapters({"sst2": Path("runs/sst2/adapter")}, runtime=runtime)      # base + adapters
    model = loralab.from_pretrained("runs/sst2/adapter")                                  # one line

An adapter folder written by `loralab train` holds, next to the PEFT files, `labels.json` (the label map,
classifiers only) and `loralab-task.json` (base model, task, tokenization settings); a folder PEFT wrote works
too (base from base_model_name_or_path, task from task_type, labels from id2label: loralab.runtime.folder).
Several adapters can be loaded onto one base model and switched per call with `loralab.set_adapter`.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from loralab.adapters.operations import set_adapter
from loralab.data.batching import pad_token_id_for
from loralab.data.encoding import Task
from loralab.data.labels import LabelMap
from loralab.data.tasks import task_kind
from loralab.errors import LoraLabError
from loralab.formats.peft import check_adapter_folder, load_adapter
from loralab.models import load_model, load_tokenizer
from loralab.quantization import quantize, quantized_memory
from loralab.runtime.device import Runtime
from loralab.runtime.folder import adapter_task_and_labels, read_task_info, resolve_base


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


def quantize_base(model: nn.Module, scheme: str, say: Callable[[str], None] = lambda message: None) -> None:
    """Quantize the frozen Linear weights of `model` in place with `scheme` ("none": nothing), before inject:
    LoRA then wraps the quantized layers. The output head stays in full precision."""
    if scheme == "none":
        return
    quantize(model, scheme)
    memory = quantized_memory(model)
    say(f"quantized {memory.layers} Linear layers to {scheme}: {memory.weight_bytes / 2**20:.1f} MiB "
        f"({memory.weight_ratio:.0%} of fp32); whole model {memory.model_bytes / 2**20:.1f} MiB")


def load_model_for(spec: str, task: str, label_map: LabelMap | None, tokenizer: Any,
                   dtype: str = "fp32") -> nn.Module:
    """The model with the head the task needs, its weights in `dtype`; classifier heads get
    `label_map.num_labels` outputs and a pad token id (GPT-2/LLaMA classifiers find each row's last real token
    through it)."""
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


def load_base(spec: str, task: str, runtime: Runtime | None = None, label_map: LabelMap | None = None,
              say: Callable[[str], None] = lambda message: None) -> tuple[nn.Module, Any]:
    """The base model `spec` names with the head `task` needs (classifiers: label_map's width) and its
    tokenizer; its weights in the runtime's dtype, the frozen Linear weights quantized with its scheme. The
    model stays where it loaded (the CPU): adapters are added first, then `runtime.device` takes it.
    runtime: None is fp32 on the CPU, unquantized. say: where the quantization's memory line goes."""
    runtime = runtime or Runtime()
    tokenizer = load_tokenizer(spec)
    base = load_model_for(spec, task, label_map, tokenizer, dtype=runtime.dtype)
    quantize_base(base, runtime.quantize, say)
    return base, tokenizer


def load_with_adapters(adapters: dict[str, Path], model: str | os.PathLike | None = None, task: str | None = None,
                       use: str | None = None, max_length: int | None = None,
                       runtime: Runtime | None = None) -> Loaded:
    """Base model + every adapter (the first one's folder names model and task unless given); `use` (default:
    the first adapter) is made active. The adapters must share task and label map.
    runtime (None: fp32 on the CPU, unquantized): the base loads in its dtype with its frozen Linear weights
    quantized, then the model goes to its device. An adapter trained on a quantized or 16-bit base loads on any
    of them (its factors are plain fp32)."""
    if not adapters:
        raise LoraLabError("no adapter given; pass --adapter NAME=PATH (a folder written by loralab train)")
    for path in adapters.values():
        check_adapter_folder(path)          # each folder's own problem first, before any is used
    first = next(iter(adapters))
    info = read_task_info(adapters[first])
    source = resolve_base(adapters[first], model)
    task_name, label_map = adapter_task_and_labels(adapters[first], task, source.folder)
    label_maps = {}
    for name, path in adapters.items():
        other, other_labels = adapter_task_and_labels(path, task, source.folder)
        if other != task_name:
            raise LoraLabError(f"adapter {name!r} was trained for {other}, not {task_name}; load adapters of one task")
        if _classes(other_labels) != _classes(label_map):
            raise LoraLabError(f"adapters {first!r} and {name!r} have different label maps; "
                               "load adapters with the same classes together")
        label_maps[name] = other_labels
    runtime = runtime or Runtime()
    base, tokenizer = load_base(str(source.folder), task_name, runtime, label_map)
    for name, path in adapters.items():
        load_adapter(base, path, adapter=name)
    base.to(runtime.device)
    use = use or first
    if use not in adapters:
        raise LoraLabError(f"--use {use!r} names no loaded adapter; loaded: {', '.join(adapters)}")
    set_adapter(base, use)
    base.eval()
    label_map = label_maps[use]     # its own regression target scaling (adapters may differ there)
    task_obj = Task(task_name, max_length=max_length or info.get("max_length"),
                    prompt_template=info.get("prompt_template") or "{prompt}\n",
                    chat_template=bool(info.get("chat_template")))
    return Loaded(base, tokenizer, task_obj, label_map, source.spec, adapters)


def _classes(label_map: LabelMap | None) -> tuple[bool, tuple[str, ...]] | None:
    """What adapters loaded together must share: regression or the class names (not the target scaling)."""
    return None if label_map is None else (label_map.regression, label_map.names)


def from_pretrained(adapter_dir: str | os.PathLike, model: str | os.PathLike | None = None,
                    adapter_name: str = "default", task: str | None = None) -> nn.Module:
    """The base model with the adapter at `adapter_dir` loaded and active, in eval mode: the right head for the
    task (a classifier with the adapter's labels as config.id2label, or a causal LM).

    model: the base model (a builtin name, folder, GGUF file or cached hub id); default: the one the adapter
    names (see loralab.runtime.resolve_base). task: a loralab task name (loralab.data.tasks); default: the
    adapter's. The adapter's parameters stay trainable (as after loralab.inject); `loralab.load_adapter(model,
    other, adapter="name")` adds more adapters, `loralab.set_adapter` switches between them."""
    return load_with_adapters({adapter_name: Path(adapter_dir)}, model, task).model
