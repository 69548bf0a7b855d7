"""The device and precision flags every command that runs a model shares: --device, --dtype, --quantize.

    add_runtime_arguments(parser)               # in add_arguments
    runtime = runtime_from_args(args)            # in run: a checked Runtime (errors before anything loads)
    model = load_model(spec, dtype=runtime.dtype); quantize_base(model, runtime.quantize); model.to(runtime.device)

`loralab train` takes the same three as TrainConfig fields (device, dtype, quantize). On `loralab budget` the
same meaning is `--precision` (the frozen weights' and the compute's precision there too; trainables fp32).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

QUANTIZE_HELP = ("store the frozen base's Linear weights quantized: none, int8 (per-channel) or nf4 (QLoRA's "
                 "4-bit NormalFloat); the output head and adapters stay in full precision (default none)")


def add_runtime_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Add --device, --dtype and --quantize (defaults None: 'not given', so configs and runs can fill them)."""
    from loralab.precision import DEVICE_CHOICES, DTYPES, QUANTIZE_CHOICES

    group = parser.add_argument_group("device and precision")
    group.add_argument("--device", help=f"where the model runs: {DEVICE_CHOICES} (default auto: a GPU when there "
                                        "is one, else the CPU)")
    group.add_argument("--dtype", choices=list(DTYPES),
                       help="precision of the frozen base weights and the compute: fp32, bf16 or fp16 (fp16 on a "
                            "CPU is slow: use bf16 there); adapters stay fp32 (default fp32)")
    group.add_argument("--quantize", choices=list(QUANTIZE_CHOICES), help=QUANTIZE_HELP)
    return group


@dataclass(frozen=True)
class Runtime:
    """A command's resolved device and precision: `precision` (loralab.precision.Precision) and the quantization
    scheme of the frozen base ("none", "int8", "nf4")."""

    precision: object
    quantize: str = "none"

    @property
    def device(self):
        return self.precision.device

    @property
    def dtype(self) -> str:
        return self.precision.name


def runtime_fields(args: argparse.Namespace) -> dict[str, str]:
    """{field: value} of the runtime flags given (TrainConfig / E2EConfig field names)."""
    return {name: getattr(args, name) for name in ("device", "dtype", "quantize") if getattr(args, name, None)}


def runtime_from_args(args: argparse.Namespace) -> Runtime:
    """The flags resolved and checked on this machine (a GPU asked for where none is: one-line LoraLabError)."""
    from loralab.precision import Precision

    given = runtime_fields(args)
    precision = Precision.resolve(given.get("device", "auto"), given.get("dtype", "fp32"))
    return Runtime(precision, given.get("quantize", "none"))
