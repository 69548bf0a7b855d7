"""The folder `loralab train` writes, as one format: its names, its writers and its readers. Serving and
the experiments read runs through this module.

    RUN/
      .loralab-output      {"kind": "train-run"}: loralab wrote this folder (loralab.files.mark_owned)
      .loralab.lock        the PID of the command writing here, while it runs (loralab.files.OutputLock)
      config.json          the TrainConfig in force (a resume that changes settings updates it)
      resumes.json         one record per resume that changed settings: step, {field: [old, new]}
      adapter/             the best adapter on dev: PEFT files (LoRA) or trainable.safetensors (baselines),
                           labels.json (classifiers), loralab-task.json (base model, task, tokenization)
      checkpoints/         resumable checkpoints (loralab.training.checkpoint)
      metrics.json         final dev and test metrics, best step, wall time, and the full history
      metrics.csv          one row per logged step / evaluation
      training.png         train and dev loss, and the dev metric, against the optimizer step
      logs/                with --report-to: one folder per tracker (logs/tensorboard/, ...; training.tracking)

Runs written before the marker existed (loralab 0.1) are recognised by their exact layout only: a
config.json that parses as a TrainConfig, and checkpoints/LATEST or metrics.json.
"""
from __future__ import annotations

import csv
import io
import json
import os
import time
from pathlib import Path
from typing import Any

from torch import nn

import loralab
from loralab import files
from loralab.data.labels import LABELS_FILENAME, LabelMap
from loralab.data.readers import data_format, options_for_task
from loralab.data.tasks import task_kind
from loralab.errors import LoraLabError
from loralab.models import resolve_model_source
# The adapter folder's loralab-task.json is read by loralab.runtime (below training); both names stay here too.
from loralab.runtime.folder import TASK_FILENAME, read_task_info  # noqa: F401
from loralab.training.checkpoint import LATEST, write_measured_json
from loralab.training.config import TrainConfig
from loralab.training.plots import plot_history

RUN_KIND = "train-run"
CONFIG_FILE = "config.json"
RESUMES_FILE = "resumes.json"
ADAPTER_DIR = "adapter"
CHECKPOINTS_DIR = "checkpoints"
METRICS_FILE = "metrics.json"
METRICS_CSV = "metrics.csv"
PLOT_FILE = "training.png"
LOGS_DIR = "logs"
TRAINABLE_FILE = "trainable.safetensors"
# Every name a run writes at its top level: an existing folder holding one of them is not written into.
RUN_ENTRIES = (CONFIG_FILE, RESUMES_FILE, ADAPTER_DIR, CHECKPOINTS_DIR, METRICS_FILE, METRICS_CSV, PLOT_FILE,
               LOGS_DIR)


# --------------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------------
def write_config(folder: Path, config: TrainConfig) -> Path:
    return files.write_json(Path(folder) / CONFIG_FILE, config.to_dict())


def write_task_file(adapter_dir: Path, config: TrainConfig) -> Path:
    """What eval/predict need to use the adapter: base model, task and tokenization settings."""
    # A model trained on chat conversations is prompted through the same chat template afterwards.
    chat = config.chat_template or _chat_data(config)
    info = {"model": config.model, "task": config.task, "max_length": config.max_length,
            "prompt_template": config.prompt_template, "chat_template": chat}
    return files.write_json(Path(adapter_dir) / TASK_FILENAME, info)


def _chat_data(config: TrainConfig) -> bool:
    """Whether the run trained on conversations: `--format chat`, or a JSONL file recognised as chat data."""
    if config.read_options.get("format") == "chat":
        return True
    if config.data is not None or config.train_file is None or not Path(config.train_file).is_file():
        return False
    return data_format(config.train_file, options_for_task(config.task, config.read_options)) == "chat"


def save_trainable_tensors(model: nn.Module, path: Path) -> Path:
    """Every parameter that requires grad, by name, as safetensors (atomically)."""
    return files.write_safetensors(path, {n: p for n, p in model.named_parameters() if p.requires_grad})


def write_best_adapter(adapter_dir: Path, model: nn.Module, config: TrainConfig, label_map: LabelMap | None) -> None:
    """adapter/: the PEFT-layout adapter (LoRA) or exactly the trained tensors (a baseline has no LoRA
    factors), with labels.json for classifiers and loralab-task.json."""
    adapter_dir = Path(adapter_dir)
    if config.method == "lora":
        # PEFT's base_model_name_or_path becomes what transformers resolves (hub id or absolute folder);
        # loralab's own portable description of the base (ModelSource) goes into the file's metadata.
        loralab.save_adapter(model, adapter_dir, source=resolve_model_source(config.model),
                             task_type=task_kind(config.task).peft_task_type)
    else:
        save_trainable_tensors(model, adapter_dir / TRAINABLE_FILE)
    if label_map is not None:
        files.write_json(adapter_dir / LABELS_FILENAME, label_map.to_dict())
    write_task_file(adapter_dir, config)


def write_metrics(folder: Path, result: dict[str, Any]) -> None:
    """metrics.json (the whole result) and metrics.csv (history rows, then best-dev and test rows)."""
    write_measured_json(Path(folder) / METRICS_FILE, result)
    rows = result["history"] + [{"step": result["best_step"], "split": split, **metrics}
                                for split, metrics in (("best-dev", result.get("dev")), ("test", result.get("test")))
                                if metrics]
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    files.write_text(Path(folder) / METRICS_CSV, buffer.getvalue())


def write_plot(folder: Path, history: list[dict[str, Any]], metric: str) -> Path:
    return plot_history(history, Path(folder) / PLOT_FILE, metric)


def record_resume(folder: Path, step: int, changes: dict[str, tuple[Any, Any]]) -> None:
    """Append what a resume changed to resumes.json."""
    path = Path(folder) / RESUMES_FILE
    records = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
    records.append({"step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "changed": {name: list(values) for name, values in changes.items()}})
    files.write_json(path, records)


# --------------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------------
# Settings whose default changed after runs were written without them: {field: the value those runs used}, so
# resuming an older run continues it as it was trained.
SETTINGS_BEFORE_DEFAULTS = {"standardize_targets": False, "dtype": "fp32", "max_warmup_steps": None}


def read_config(folder: str | os.PathLike) -> TrainConfig:
    """The run's TrainConfig; a field its config.json lacks takes the value runs had before that field
    existed (SETTINGS_BEFORE_DEFAULTS), else the dataclass default."""
    path = Path(folder) / CONFIG_FILE
    config = TrainConfig.load(path)
    saved = json.loads(path.read_text(encoding="utf-8"))
    for name, value in SETTINGS_BEFORE_DEFAULTS.items():
        if isinstance(saved, dict) and name not in saved:
            setattr(config, name, value)
    return config


def read_metrics(folder: str | os.PathLike) -> dict[str, Any]:
    return json.loads((Path(folder) / METRICS_FILE).read_text(encoding="utf-8"))


def load_trainable_tensors(path: str | os.PathLike) -> dict[str, Any]:
    """A baseline adapter's trainable.safetensors."""
    from safetensors.torch import load_file

    return load_file(str(path))


def is_finished(folder: str | os.PathLike) -> bool:
    """run_training writes metrics.json after the final evaluation."""
    return (Path(folder) / METRICS_FILE).is_file()


def has_progress(folder: str | os.PathLike) -> bool:
    """The folder holds a run's checkpoints or its final metrics: something to resume or keep."""
    return (Path(folder) / CHECKPOINTS_DIR / LATEST).is_file() or is_finished(folder)


def is_legacy_run(folder: str | os.PathLike) -> bool:
    """A run written before the owner marker existed: no marker, config.json parses as a TrainConfig,
    and it has checkpoints/LATEST or metrics.json. Anything else (a model folder, say) is not a run."""
    folder = Path(folder)
    if files.owned_kind(folder) is not None or not (folder / CONFIG_FILE).is_file() or not has_progress(folder):
        return False
    try:
        read_config(folder)
    except (LoraLabError, TypeError, ValueError):
        return False
    return True


def is_train_run(folder: str | os.PathLike) -> bool:
    """loralab wrote this folder as a train run (marker), or it is a run of loralab 0.1 (layout)."""
    return files.owned_kind(folder) == RUN_KIND or is_legacy_run(folder)
