"""Knobs: the values of a lesson's experiment a learner may change from the command line, without editing code.

    loralab learn 3 r=1,4,16 lr=1e-3      # lesson 3's ranks and learning rate; the page records them

Each lesson declares its knobs in one table (`Lesson.knobs` in loralab.lessons): a name, a type, the default
(in normal and in quick mode), the allowed range and what it changes. The syntax is `loralab train`'s
`key=value`. `parse_knobs` validates a command line's knobs (one line for an unknown name, with the nearest
one, or a value out of range); the runner hands them to the lesson as JSON in an environment variable and
kit.Settings.knob reads them. Runs trained with knobs are cached apart from the default runs (their cache
names and keys hold the knob values) and their pages go to a folder of their own (folder_suffix).
"""
from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from loralab.errors import LoraLabError

INT, FLOAT, INTS = "int", "float", "ints"   # one integer, one number, a comma-separated list of integers


@dataclass(frozen=True)
class Knob:
    """One knob. kind: INT, FLOAT or INTS. low/high: the allowed range (inclusive; for INTS, of each value).
    default: the lesson's value in normal mode; quick_default: in quick mode, where it differs (None: same)."""

    name: str
    kind: str
    default: Any
    low: float
    high: float
    what_en: str
    what_zh: str
    quick_default: Any = None

    def value(self, quick: bool) -> Any:
        """The default in this mode."""
        return self.quick_default if quick and self.quick_default is not None else self.default

    def parse(self, raw: str) -> Any:
        """`raw` (the text after `name=`) as this knob's value; a value of the wrong type or out of range is a
        one-line LoraLabError naming the range."""
        text = raw.strip()
        try:
            if self.kind == INTS:
                values = tuple(int(part) for part in text.split(","))
            else:
                values = ((int if self.kind == INT else float)(text),)
        except ValueError:
            raise LoraLabError(f"knob {self.name}={raw} is not {self.described}; e.g. {self.name}="
                               f"{show(self.default)}") from None
        if len(set(values)) != len(values):   # (LoraLabError is a ValueError: raised outside the try)
            raise LoraLabError(f"knob {self.name}={raw}: a value is repeated; give each once, e.g. "
                               f"{self.name}={show(self.default)}")
        bad = [v for v in values if not self.low <= v <= self.high]
        if bad:
            raise LoraLabError(f"knob {self.name}={raw} is out of range: {'each value of ' if self.kind == INTS else ''}{self.name} must be {self.range}")
        return values if self.kind == INTS else values[0]

    @property
    def described(self) -> str:
        return {INT: "an integer", FLOAT: "a number", INTS: "a comma-separated list of integers"}[self.kind]

    @property
    def range(self) -> str:
        return f"between {self.low:g} and {self.high:g}"

    def line(self) -> str:
        """`r=1,2,4,8,64 (quick: 1,2,4,8,16; each 1-256): the LoRA ranks trained side by side` for the list."""
        quick = f"quick: {show(self.quick_default)}; " if self.quick_default is not None else ""
        each = "each " if self.kind == INTS else ""
        return f"{self.name}={show(self.default)} ({quick}{each}{self.range}): {self.what_en}"


def show(value: Any) -> str:
    """A knob value as it is written on the command line: 1,4,16 / 0.001 / 96."""
    if isinstance(value, (tuple, list)):
        return ",".join(show(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def parse_knobs(knobs: Sequence[Knob], texts: Sequence[str], lesson: int) -> dict[str, Any]:
    """{name: value} of the `key=value` texts, checked against the lesson's `knobs`: a text without `=`, an
    unknown name (with the nearest known one) or a bad value is a one-line LoraLabError."""
    table = {knob.name: knob for knob in knobs}
    values: dict[str, Any] = {}
    for text in texts:
        name, sep, raw = text.partition("=")
        name = name.strip()
        if not sep or not name:
            raise LoraLabError(f"{text!r} is not a knob; write NAME=VALUE, e.g. "
                               + (f"{knobs[0].name}={show(knobs[0].default)}" if knobs else "r=4"))
        if name not in table:
            raise LoraLabError(unknown_knob(name, list(table), lesson))
        if name in values:
            raise LoraLabError(f"knob {name} is given twice; give it once")
        values[name] = table[name].parse(raw)
    return values


def unknown_knob(name: str, names: Sequence[str], lesson: int) -> str:
    if not names:
        return f"lesson {lesson} has no knobs (unknown knob {name!r}); `loralab learn` lists each lesson's knobs"
    near = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
    hint = f"did you mean {near[0]!r}? " if near else ""
    return (f"unknown knob {name!r} for lesson {lesson}; {hint}its knobs are {', '.join(names)} "
            "(`loralab learn` lists them)")


def encode(values: dict[str, Any]) -> str:
    """The knob values as the JSON the runner passes to the lesson (sorted names: one text per set of values)."""
    return json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in sorted(values.items())},
                      sort_keys=True)


def decode(text: str | None) -> dict[str, Any]:
    data = json.loads(text) if text else {}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}


def fingerprint(values: dict[str, Any]) -> str:
    """Eight hex digits naming a set of knob values (cache entries and page folders of knob runs)."""
    return hashlib.sha256(encode(values).encode("utf-8")).hexdigest()[:8]


def folder_suffix(values: dict[str, Any]) -> str:
    """`-knobs-r1,4,16-lr0.001`: the page folder's suffix for a knob run (the values, readable), or '' without
    knobs. Long value lists fall back to the fingerprint so that the name stays short."""
    if not values:
        return ""
    readable = "-".join(f"{k}{show(v)}" for k, v in sorted(values.items()))
    return f"-knobs-{readable}" if len(readable) <= 40 else f"-knobs-{fingerprint(values)}"


def page_line(values: dict[str, Any], lang: str) -> str:
    """The line at the top of a knob run's page: the values used."""
    shown = ", ".join(f"{k} = {show(v)}" for k, v in sorted(values.items()))
    if lang == "zh":
        return f"本页用旋钮(knob)运行:{shown}(其余为本课默认值;训练结果与默认运行分开缓存)。"
    return f"Run with knobs: {shown} (everything else at the lesson's defaults; cached apart from the default runs)."
