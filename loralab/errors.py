"""One exception type for every error meant for the user: a one-line message naming the problem and the fix;
`choose` / `unknown`: the one message for a value outside a fixed set of choices."""
from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

T = TypeVar("T")


class LoraLabError(ValueError):
    """Bad input from the user (config, file, model, data). The CLI prints it as one line and exits 2."""


def unknown(value: object, choices: Iterable[object], what: str, tail: str = "") -> LoraLabError:
    """The one message for a value outside a fixed set: "unknown {what} {value!r}; choose one of a, b, c{tail}"
    (classes are named by their __name__; `tail` is appended as is, e.g. " or give a file path")."""
    names = ", ".join(_name(choice) for choice in choices)
    shown = value.__name__ if isinstance(value, type) else repr(value)
    return LoraLabError(f"unknown {what} {shown}; choose one of {names}{tail}")


def choose(value: T, choices: Iterable[object], what: str, tail: str = "") -> T:
    """`value` when it is one of `choices` (in the order they are listed in the message); else the
    LoraLabError of `unknown`. Every "unknown X; choose one of" check in loralab goes through here."""
    choices = list(choices)
    try:
        known = value in choices
    except TypeError:          # an unhashable value (a list from a config file) is simply not a choice
        known = False
    if not known:
        raise unknown(value, choices, what, tail)
    return value


def _name(choice: object) -> str:
    return choice.__name__ if isinstance(choice, type) else str(choice)
