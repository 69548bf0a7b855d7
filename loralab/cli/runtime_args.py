"""The device and precision flags every command that runs a model shares: --device, --dtype, --quantize.

    add_runtime_arguments(parser)               # in add_arguments
    runtime = runtime_from_args(args)            # in run: a checked loralab.runtime.Runtime (errors before loading)
    model, tokenizer = load_base(spec, task, runtime); model.to(runtime.device)      # loralab.runtime

The flags are generated from TrainConfig's fields of the same names (`loralab train` has them with the rest).
`loralab budget` has its own `--dtype` (no device to resolve, fp16 by default) meaning the same; its old
spelling `--precision` is accepted for one release.
"""
from __future__ import annotations

import argparse

RUNTIME_FIELDS = ("device", "dtype", "quantize")
# TrainConfig's dtype docstring speaks of training (the loss scaler, the optimizer state); a command that only
# runs the model says what the flag does there.
RUN_HELPS = {"dtype": "precision of the base weights and of the compute (autocast): fp32, bf16, fp16, or auto (bf16 "
                      "where the device runs it natively, else fp32); adapters stay fp32 (loralab.precision) "
                      "(default: fp32)"}


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --device, --dtype and --quantize: train's flags of the TrainConfig fields of those names
    (loralab.cli.train_args), so they mean the same on every command. Defaults None: 'not given'."""
    from loralab.cli.train_args import add_train_arguments

    add_train_arguments(parser, RUNTIME_FIELDS, helps=RUN_HELPS)


def runtime_fields(args: argparse.Namespace) -> dict[str, str]:
    """{field: value} of the runtime flags given (TrainConfig / E2EConfig field names)."""
    return {name: getattr(args, name) for name in RUNTIME_FIELDS if getattr(args, name, None)}


def runtime_from_args(args: argparse.Namespace):
    """The flags resolved and checked on this machine, a loralab.runtime.Runtime (a GPU asked for where none is:
    one-line LoraLabError)."""
    from loralab.runtime import Runtime

    given = runtime_fields(args)
    return Runtime.resolve(given.get("device", "auto"), given.get("dtype", "fp32"), given.get("quantize", "none"))



def __getattr__(name: str):
    # Import alias, kept for one release: Runtime moved to loralab.runtime (issue 19). Resolved on first use so
    # that building the parser (`loralab --help`) does not import torch.
    if name == "Runtime":
        from loralab.runtime import Runtime

        return Runtime
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
