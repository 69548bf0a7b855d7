"""The flags of commands that use trained adapters (eval, predict, e2e; serve): `--adapter [NAME=]PATH`
means one thing everywhere: an adapter folder, optionally named (NAME defaults to "default")."""
from __future__ import annotations

import argparse
from pathlib import Path

from loralab.data.tasks import TASK_NAMES

ADAPTER_HELP = "an adapter folder written by loralab train (or PEFT), optionally named: [NAME=]PATH"


def add_adapter_arguments(parser: argparse.ArgumentParser, use_help: str | None = None, required: bool = True,
                          base_flags: bool = True) -> None:
    """--adapter (repeatable when `use_help` says how --use picks one of several), and with `base_flags`
    --model and --task (the base model and task; default: what the adapter was trained with)."""
    group = parser.add_argument_group("adapter")
    several = use_help is not None
    group.add_argument("--adapter", action="append" if several else "store", required=required,
                       metavar="[NAME=]PATH", help=ADAPTER_HELP + ("; repeat to load several" if several else ""))
    if several:
        group.add_argument("--use", metavar="NAME", help=use_help)
    if base_flags:
        group.add_argument("--model", help="base model (default: the one the adapter was trained on)")
        group.add_argument("--task", choices=TASK_NAMES, help="default: the adapter's task")


def adapter_paths(args: argparse.Namespace) -> dict[str, Path]:
    """{name: folder} of the --adapter values (a single --adapter gives one entry)."""
    from loralab.runtime.load import parse_adapter_specs

    specs = args.adapter if isinstance(args.adapter, list) else [args.adapter] if args.adapter else []
    return parse_adapter_specs(specs)


def single_adapter(args: argparse.Namespace) -> Path | None:
    """The folder of a command's one optional --adapter (its NAME, if given, is not needed)."""
    return next(iter(adapter_paths(args).values()), None)
