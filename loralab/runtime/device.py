"""Where and how a model runs: its device, the dtype of its frozen weights and how they are stored
(quantization), resolved and checked once. Every command's `--device` / `--dtype` / `--quantize`, TrainConfig's
fields of those names and ServeSettings' end here.

    runtime = Runtime.resolve("auto", "bf16", "nf4")     # a GPU when there is one; one-line errors first
    model, tokenizer = load_base(spec, "causal-lm", runtime)

The choices come from the registries: dtypes from loralab.precision.DTYPES, devices as loralab.precision
resolves them, quantization schemes from loralab.quantization's (QUANTIZE_CHOICES, read from SCHEMES).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from loralab.errors import choose
from loralab.precision import Precision
from loralab.quantization import QUANTIZE_CHOICES


def check_quantize(scheme: str) -> str:
    """`scheme` if `--quantize` offers it (loralab.quantization.QUANTIZE_CHOICES), else a one-line LoraLabError."""
    return choose(scheme, QUANTIZE_CHOICES, "quantization")


def _cpu_fp32() -> Precision:
    return Precision(torch.device("cpu"), torch.float32)


@dataclass(frozen=True)
class Runtime:
    """A resolved device and precision (`precision`: loralab.precision.Precision) and the quantization scheme of
    the frozen base ("none", "int8", "nf4", ...). The default is fp32 on the CPU, unquantized."""

    precision: Precision = field(default_factory=_cpu_fp32)
    quantize: str = "none"

    @classmethod
    def resolve(cls, device: str | torch.device = "auto", dtype: str | torch.dtype = "fp32",
                quantize: str = "none") -> "Runtime":
        """Resolve the device, check the dtype on it, then the quantization scheme: one-line LoraLabErrors
        (a GPU asked for where none is, a dtype the device cannot run, a scheme no registry offers)."""
        precision = Precision.resolve(device, dtype)
        return cls(precision, check_quantize(quantize))

    @property
    def device(self) -> torch.device:
        return self.precision.device

    @property
    def dtype(self) -> str:
        """The frozen weights' dtype name: "fp32", "bf16" or "fp16"."""
        return self.precision.name
