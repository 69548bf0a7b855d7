"""What an adapter folder (loralab's or PEFT's) says about its use, read without touching a model: its files
checked (`loralab.formats.peft.check_adapter_folder`, giving the one `AdapterFolder`), its task info, its base
model, its task and labels. from_pretrained, eval, predict, e2e, serve and the experiments all read folders here,
so a folder PEFT wrote works wherever one loralab wrote does:

  format      `AdapterFolder.format`: "loralab" when the weights carry loralab's metadata, else "peft".
  task info   `read_task_info`: loralab-task.json (base model, task, tokenization settings; {} when absent).
  base model  `resolve_base`: loralab's record in the weights' metadata (ModelSource.record(): builtin name,
              GGUF file + fingerprint, hub id + commit, or folder), then loralab-task.json's "model", then
              PEFT's base_model_name_or_path; an error names every place tried and why it failed.
  task        `adapter_task_and_labels`: loralab-task.json's "task", else PEFT's task_type (SEQ_CLS: a classifier,
              regression when its saved head has one output; CAUSAL_LM: causal-lm); without either, a folder
              saving a head is a classifier, otherwise a causal LM.
  labels      labels.json, else the id2label of a config.json in the adapter folder or of the base model,
              as many as the saved classifier head has outputs (LABEL_i where the config has no names).
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors import safe_open

from loralab.data.labels import LABELS_FILENAME, LabelMap
from loralab.data.tasks import TASKS, task_kind
from loralab.errors import LoraLabError
from loralab.formats.adapter_config import json_kind
from loralab.formats.peft import WEIGHTS_NAME, AdapterFolder, check_adapter_folder, is_adapter_tensor
from loralab.models import ModelSource, resolve_model_source, source_from_record

TASK_FILENAME = "loralab-task.json"


def read_task_info(adapter_dir: str | os.PathLike) -> dict[str, Any]:
    """The adapter's loralab-task.json ({} when it has none)."""
    path = Path(adapter_dir) / TASK_FILENAME
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LoraLabError(f"{path}: not valid JSON ({exc}); retrain or restore the adapter folder") from None
    if not isinstance(info, dict):
        raise LoraLabError(f"{path} must hold a JSON object, found {json_kind(info)}; retrain or restore the "
                           f"adapter folder")
    return info


def resolve_base(adapter_dir: str | os.PathLike, model: str | os.PathLike | None = None,
                 cache_dir: str | os.PathLike | None = None) -> ModelSource:
    """Where the base model of an adapter is on this machine: `model` if given, else the first of loralab's
    record, loralab-task.json's "model" and PEFT's base_model_name_or_path that resolves. One-line
    LoraLabError naming each place tried when none does."""
    checked = check_adapter_folder(adapter_dir)
    folder = checked.path
    if model is not None:
        return resolve_model_source(model, cache_dir)
    tried = []
    for what, find in _base_candidates(checked):
        try:
            return find(cache_dir)
        except LoraLabError as exc:
            tried.append(f"{what}: {exc}")
    if not tried:
        raise LoraLabError(f"adapter {folder} does not say its base model; pass it (model=... or --model)")
    raise LoraLabError(f"cannot find the base model of adapter {folder}; tried {' | '.join(tried)}; pass the base "
                       f"model (model=... or --model)")


def _base_candidates(checked: AdapterFolder) -> list[tuple[str, Callable[[Any], ModelSource]]]:
    """[(what, find(cache_dir) -> ModelSource)] in the order resolve_base tries them."""
    record = checked.loralab_meta.get("base")
    spec = read_task_info(checked.path).get("model")
    peft_base = checked.config.get("base_model_name_or_path")
    found = []
    if record:
        found.append((f"loralab's record ({record.get('kind')} {record.get('name')!r})",
                      lambda cache_dir: source_from_record(record, cache_dir)))
    if spec:
        found.append((f"loralab-task.json's model {spec!r}", lambda cache_dir: resolve_model_source(spec, cache_dir)))
    if peft_base and peft_base != spec:
        found.append((f"base_model_name_or_path {peft_base!r}",
                      lambda cache_dir: resolve_model_source(peft_base, cache_dir)))
    return found


def adapter_task_and_labels(adapter_dir: str | os.PathLike, task: str | None = None,
                            base_folder: str | os.PathLike | None = None) -> tuple[str, LabelMap | None]:
    """(loralab task name, label map or None for causal LM) of an adapter folder; `task` overrides the task.
    base_folder: the base model's folder, whose config.json may name the labels."""
    checked = check_adapter_folder(adapter_dir)
    folder = checked.path
    stated = task or read_task_info(folder).get("task")
    head_rows = _saved_head_rows(folder)
    name = stated or _task_from_peft(checked, head_rows)
    if task_kind(name).is_generative:
        return name, None
    if (folder / LABELS_FILENAME).is_file():
        return name, LabelMap.load(folder / LABELS_FILENAME)
    label_map = _labels_from_config(folder, base_folder, head_rows)
    if label_map is None:
        raise LoraLabError(f"{folder} has no labels.json, and neither a saved classifier head nor an id2label in "
                           f"a config.json names its classes; add labels.json or pass the task (--task causal-lm)")
    if label_map.regression and not stated:
        name = "regression"
    return name, label_map


def _task_from_peft(checked: AdapterFolder, head_rows: int | None) -> str:
    """The loralab task of PEFT's task_type (the task list's `peft_task_type`); without one, a folder saving
    a head is a classifier and any other a causal LM."""
    folder = checked.path
    task_type = checked.config.get("task_type")
    if task_type is None:
        return "classification" if head_rows else "causal-lm"
    for kind in TASKS.values():
        if kind.peft_task_type == task_type:
            return kind.name
    served = sorted({k.peft_task_type for k in TASKS.values()})
    raise LoraLabError(f"{folder} is a PEFT {task_type} adapter; loralab's tasks cover task_type {', '.join(served)}")


def _labels_from_config(folder: Path, base_folder: str | os.PathLike | None,
                        head_rows: int | None) -> LabelMap | None:
    """Labels from a config.json (the adapter folder's, else the base model's): regression for a one-output head
    or problem_type "regression", else id2label's names, LABEL_i where they do not fit the head."""
    config = next((_read_json(p / "config.json") for p in (folder, base_folder) if p is not None
                   and (Path(p) / "config.json").is_file()), {})
    if head_rows == 1 or config.get("problem_type") == "regression":
        return LabelMap(regression=True)
    id2label = config.get("id2label") or {}
    names = [str(id2label[k]) for k in sorted(id2label, key=int)] if id2label else []
    rows = head_rows or len(names)
    if rows < 2:
        return None
    return LabelMap(tuple(names) if len(names) == rows else tuple(f"LABEL_{i}" for i in range(rows)))


def _saved_head_rows(folder: Path) -> int | None:
    """Outputs of the classifier head an adapter saves (modules_to_save): the fewest rows among its 2-D
    weights (a head's last layer maps hidden -> labels), None when it saves none. Reads shapes only."""
    with safe_open(str(folder / WEIGHTS_NAME), framework="pt") as fh:
        shapes = [fh.get_slice(k).get_shape() for k in fh.keys() if k.endswith(".weight") and not is_adapter_tensor(k)]
    rows = [shape[0] for shape in shapes if len(shape) == 2]
    return min(rows) if rows else None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LoraLabError(f"cannot read {path}: {exc}") from None
    return data if isinstance(data, dict) else {}


__all__ = ["TASK_FILENAME", "AdapterFolder", "adapter_task_and_labels", "check_adapter_folder", "read_task_info",
           "resolve_base"]
