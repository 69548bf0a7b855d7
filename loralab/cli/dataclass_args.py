"""Command-line flags generated from config dataclasses, so a setting is defined once: its field.

A field `max_grad_norm: float | None = 1.0` with a docstring under it becomes `--max-grad-norm X`, typed
from the annotation, with the docstring as help and the default shown. Booleans become switches
(`--packing`; `--no-progress` for a field that defaults to True), lists take several values
(`--targets query value`), dicts get no flag (they are set with `key.field=value` overrides). Every flag
defaults to None, meaning "not given", so layers below it (a config file, a saved run) show through.

    add_field_flags(group, TrainConfig, ("lr", "epochs"), tweaks={"lr": {"help": "..."}})
    given_fields(args, TrainConfig, ("lr", "epochs"))      # {"lr": 0.001} when only --lr was given
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import textwrap
import types
import typing
from collections.abc import Iterable
from typing import Any


@functools.lru_cache(maxsize=None)
def attribute_docs(cls: type) -> dict[str, str]:
    """{field: the docstring written under it} of a dataclass (the string literal after each annotation)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, following in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) \
                and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant) \
                and isinstance(following.value.value, str):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def flag_name(field: str, default: Any = None) -> str:
    """The flag of a field: `--field-name`, or `--no-field-name` for a switch that is on by default."""
    return ("--no-" if default is True else "--") + field.replace("_", "-")


def _options(hint: Any) -> list[Any]:
    """The types a field may hold, None left out: `int | None` -> [int]."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(hint) if a is not type(None)]
    return [hint]


def _argparse_kwargs(hint: Any, default: Any) -> dict[str, Any] | None:
    """add_argument keywords for a field's annotation; None for fields without a flag (dicts)."""
    options = _options(hint)
    origins = [typing.get_origin(o) or o for o in options]
    if dict in origins:
        return None
    if bool in options:
        return {"action": "store_false" if default is True else "store_true"}
    if list in origins:
        inner = typing.get_args(options[origins.index(list)])
        return {"nargs": "+", "type": inner[0] if inner and inner[0] in (int, float) else str}
    if tuple in origins:
        inner = typing.get_args(options[origins.index(tuple)])
        return {"nargs": len(inner), "type": inner[0]}
    for kind in (int, float, str):
        if kind in options:
            return {"type": kind}
    raise TypeError(f"no flag type for annotation {hint!r}")


def _default_of(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def add_field_flags(group: argparse._ActionsContainer, cls: type, names: Iterable[str],
                    tweaks: dict[str, dict[str, Any]] | None = None, shown_defaults: dict[str, Any] | None = None,
                    ) -> None:
    """Add one flag per field of `cls` in `names` (see the module docstring). `tweaks`: add_argument
    keywords replacing the generated ones per field (help, type, choices, metavar, flags; `aliases`: other
    spellings after the flag); `shown_defaults`:
    the defaults this command really uses, when they differ from the dataclass's."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    docs = attribute_docs(cls)
    for name in names:
        default = _default_of(fields[name])
        kwargs = _argparse_kwargs(hints[name], default)
        if kwargs is None:
            continue
        kwargs = {**kwargs, **(tweaks or {}).get(name, {})}
        flags = [*(kwargs.pop("flags", None) or [flag_name(name, default)]), *kwargs.pop("aliases", ())]
        forced = name in (shown_defaults or {})     # this command's own default: said even if the text names one
        shown = (shown_defaults or {}).get(name, default)
        kwargs["help"] = _help(kwargs.get("help", docs.get(name, "")), shown, kwargs.get("action"), forced)
        group.add_argument(*flags, dest=name, default=None, **kwargs)


def _help(text: str, default: Any, action: str | None, forced: bool = False) -> str:
    """A docstring as flag help: no final period, lower-case start (unless a name like AdamW), the default
    (`forced`: also where the docstring speaks of one)."""
    text = text.rstrip(".")
    if len(text) > 1 and text[0].isupper() and text[1].islower():
        text = text[0].lower() + text[1:]
    if action == "store_false":       # the flag is --no-FIELD; the docstring says what the field turns on
        text = f"turn off what is on by default: {text}"
    elif (forced or "default" not in text.lower()) and default not in (None, [], {}) and action is None:
        shown = repr(default) if isinstance(default, str) and not default.isprintable() else default
        text += f" (default: {shown:g})" if isinstance(default, float) else f" (default: {shown})"
    return text.replace("%", "%%")


def given_fields(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """{field: value} of the flags of `names` given on the command line (not None)."""
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
