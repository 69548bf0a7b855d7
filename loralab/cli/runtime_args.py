"""The device and precision flags every command that runs a model shares: --device, --dtype, --quantize.

    add_runtime_arguments(parser)               # in add_arguments
    runtime = runtime_from_args(args)            # in run: a checked Runtime (errors before anything loads)
    model = load_model(spec, dtype=runtime.dtype); quantize_base(model, runtime.quantize); model.to(runtime.device)

The flags are generated from TrainConfig's fields of the same names (`loralab train` has them with the rest).
On `loralab budget` the same meaning is `--precision` (its loralab 0.1 spelling `--dtype` is still accepted
there, meaning the same).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

RUNTIME_FIELDS = ("device", "dtype", "quantize")


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --device, --dtype and --quantize: train's flags of the TrainConfig fields of those names
    (loralab.cli.train_args), so they mean the same on every command. Defaults None: 'not given'."""
    from loralab.cli.train_args import add_train_arguments

    add_train_arguments(parser, RUNTIME_FIELDS)


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
    return {name: getattr(args, name) for name in RUNTIME_FIELDS if getattr(args, name, None)}


def runtime_from_args(args: argparse.Namespace) -> Runtime:
    """The flags resolved and checked on this machine (a GPU asked for where none is: one-line LoraLabError)."""
    from loralab.precision import Precision

    given = runtime_fields(args)
    precision = Precision.resolve(given.get("device", "auto"), given.get("dtype", "fp32"))
    return Runtime(precision, given.get("quantize", "none"))
