"""Old command-line spellings, accepted for one more release with a one-line warning naming the new one.

    add_deprecated(parser, "--out", dest="output", new="--output")            # --out DIR -> args.output
    add_deprecated(group, "--dora", dest="variant", new="--variant dora", const="dora")   # a switch

The old flag stores into the new flag's `dest`, so the command reads one name; its help is hidden.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

REMOVED_IN = "loralab 0.3"


def warn_deprecated(prog: str, old: str, new: str) -> None:
    """The one line: `loralab merge: warning: OUT as a positional argument is deprecated; use --output OUT ...`"""
    print(f"{prog}: warning: {old} is deprecated; use {new} ({old} goes away in {REMOVED_IN})", file=sys.stderr)


class _Deprecated(argparse.Action):
    def __init__(self, option_strings: list[str], dest: str, new: str, const: Any = None, **kwargs: Any):
        if const is not None:
            kwargs["nargs"] = 0
        super().__init__(option_strings, dest, const=const, **kwargs)
        self.new = new

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        warn_deprecated(parser.prog, option_string or self.option_strings[0], self.new)
        setattr(namespace, self.dest, self.const if self.const is not None else values)


def add_deprecated(parser: argparse._ActionsContainer, *flags: str, dest: str, new: str, const: Any = None,
                   **kwargs: Any) -> None:
    """An old spelling `flags` of the flag `new` (which stores into `dest`); `const`: an old switch that
    stands for `new`'s value `const` (e.g. --dora for --variant dora)."""
    parser.add_argument(*flags, dest=dest, action=_Deprecated, new=new, const=const, default=None,
                        help=argparse.SUPPRESS, **kwargs)
