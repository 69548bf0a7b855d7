"""E2EConfig: the settings of one `loralab e2e` comparison (loralab.experiments.e2e runs it). Its own module,
free of torch, so that `loralab e2e --help` builds its flags from these defaults without loading a model stack."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loralab.errors import LoraLabError, choose
from loralab.generation.params import SamplingParams
from loralab.metrics.e2e import METEOR_CHOICES
from loralab.training.config import TrainConfig

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_INSTRUCTION = "Write one sentence describing this restaurant: "
QUICK_MODEL = "quick-tiny-llama"  # E2EConfig.quick(): a random-init LLaMA written into the output folder


@dataclass
class E2EConfig:
    """One zero-shot-versus-LoRA comparison on E2E.

    model: a model spec (builtin name, folder, or GGUF file; see loralab.models) of a causal LM whose
        tokenizer has a chat template. instruction: text put before each MR inside the user turn.
    Training (loralab.training TrainConfig fields): train_limit examples of valid.txt (a fixed seeded draw;
        None: all 4,672), epochs, batch_size, lr, warmup_ratio; LoRA r, alpha, dropout on `targets`.
        max_length: tokens per training example (prompt + target + EOS; ~75 for this prompt).
    Evaluation: eval_mrs evenly spaced distinct MRs of test.txt (None: all 630); decoding with num_beams
        (1: greedy) up to max_new_tokens new tokens per MR, stopping at EOS, gen_batch_size prompts a batch.
        decoding: more loralab.generation.SamplingParams fields, e.g. {"temperature": 0.7, "seed": 0}
        (empty: greedy or beam search as num_beams says).
    threads: torch threads (None: the cores this process may use).
    device, dtype, quantize: where and in which precision both systems train and generate (TrainConfig's
        fields of the same names; loralab.precision, loralab.quantization).
    """

    model: str = DEFAULT_MODEL
    instruction: str = DEFAULT_INSTRUCTION
    train_limit: int | None = 320
    epochs: float = 1.0
    batch_size: int = 8
    lr: float = 5e-4
    warmup_ratio: float = 0.1
    r: int = 4
    alpha: float = 32.0
    dropout: float = 0.1
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    max_length: int = 160
    checkpoint_every: int = 5
    seed: int = 0
    eval_mrs: int | None = 100
    num_beams: int = 1
    max_new_tokens: int = 48
    gen_batch_size: int = 8
    examples_shown: int = 5
    threads: int | None = None
    data_dir: str | None = None  # folder holding valid.txt and test.txt; None: <shared data>/e2e
    extra: dict[str, Any] = field(default_factory=dict)  # more TrainConfig fields, e.g. {"max_steps": 3}
    decoding: dict[str, Any] = field(default_factory=dict)
    meteor: str = "auto"  # "auto": the official Meteor 1.5 jar when Java has it, else loralab's (see metrics)
    device: str = "auto"
    dtype: str = "fp32"
    quantize: str = "none"

    def __post_init__(self) -> None:
        self.targets = tuple(self.targets)
        for name in ("train_limit", "eval_mrs"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise LoraLabError(f"{name} must be a positive integer or unset (all), got {value!r}")
        for name in ("num_beams", "max_new_tokens", "gen_batch_size", "batch_size", "r"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise LoraLabError(f"{name} must be a positive integer, got {value!r}")
        if self.examples_shown < 0:
            raise LoraLabError(f"examples_shown must be 0 or more, got {self.examples_shown}")

        choose(self.meteor, METEOR_CHOICES, "METEOR implementation")
        if not self.instruction.strip():
            raise LoraLabError("the instruction is empty; the zero-shot base needs to be told what to write")
        # checked now, not after training; kept as JSON values, without the settings equal to the defaults
        params = self.sampling_params().non_default()
        self.decoding = {k: v for k, v in params.items() if k not in ("num_beams", "max_new_tokens")}

    def sampling_params(self):
        """The decoding settings as a loralab.generation.SamplingParams."""
        for name in ("num_beams", "max_new_tokens"):
            if name in self.decoding:
                raise LoraLabError(f"set {name} as its own E2EConfig field, not inside decoding")
        unknown = sorted(set(self.decoding) - set(SamplingParams.field_names()))
        if unknown:
            raise LoraLabError(f"unknown decoding setting(s) {unknown}; use SamplingParams fields")
        return SamplingParams(max_new_tokens=self.max_new_tokens, num_beams=self.num_beams, **self.decoding)

    @classmethod
    def quick(cls, **overrides: Any) -> "E2EConfig":
        """A tiny random-init LLaMA, 32 training examples, 8 MRs: checks the whole pipeline in seconds."""
        # loralab's METEOR: a Java start would take longer than the whole quick run (the jar is tested in metrics)
        settings: dict[str, Any] = dict(model=QUICK_MODEL, train_limit=32, batch_size=8, lr=5e-3, eval_mrs=8,
                                        max_new_tokens=12, gen_batch_size=8, examples_shown=3, checkpoint_every=2,
                                        meteor="loralab")
        settings.update(overrides)
        return cls(**settings)

    def train_config(self, train_file: Path):
        """The loralab TrainConfig of the adapter (no dev set: the final adapter is the one evaluated)."""
        settings: dict[str, Any] = dict(
            model=self.model, task="causal-lm", train_file=str(train_file),
            read_options={"format": "jsonl", "text_column": "prompt", "target_column": "target",
                          "label_column": None},
            train_limit=self.train_limit, max_length=self.max_length, chat_template=True,
            lora={"r": self.r, "alpha": self.alpha, "dropout": self.dropout, "targets": list(self.targets)},
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, warmup_ratio=self.warmup_ratio,
            checkpoint_every=self.checkpoint_every, log_every=1, seed=self.seed, threads=self.threads,
            progress=False, device=self.device, dtype=self.dtype, quantize=self.quantize)
        settings.update(self.extra)
        return TrainConfig(**settings)
