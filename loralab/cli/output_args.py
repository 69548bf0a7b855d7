"""Where a command writes: `--output/-o PATH` on every command that writes (train, merge, eval, predict,
analyze, experiment, e2e, learn), with the old `--out` accepted for one release."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from loralab.cli.deprecated import add_deprecated
from loralab.errors import LoraLabError


def add_output_argument(parser: argparse.ArgumentParser, help_text: str, default: str | None = None,
                        metavar: str = "PATH", old: tuple[str, ...] = ("--out",), aliases: tuple[str, ...] = ()) -> None:
    """--output/-o (None when not given unless `default`), other libraries' spellings `aliases` (shown), and the
    deprecated spellings `old`."""
    parser.add_argument("--output", "-o", *aliases, default=default, metavar=metavar, help=help_text)
    if old:
        add_deprecated(parser, *old, dest="output", new="--output", metavar=metavar)


def required_output(args: argparse.Namespace, what: str = "the output folder") -> Path:
    """args.output as a Path; a one-line error when the command needs it and it was not given."""
    if not getattr(args, "output", None):
        raise LoraLabError(f"give {what} with --output PATH (-o PATH)")
    return Path(args.output)


def checked_output_file(args: argparse.Namespace, *inputs: str | os.PathLike | None) -> Path | None:
    """args.output checked by the output policy (`loralab.files.check_output_file`) against the command's
    `inputs` (None entries skipped), before any work; None when --output was not given."""
    from loralab.files import check_output_file

    if not getattr(args, "output", None):
        return None
    return check_output_file(args.output, [p for p in inputs if p])
