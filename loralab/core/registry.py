"""Registries of plug-ins: layer kinds (keyed by module type), variants and inits (keyed by name).

A registry is a dict with three additions: `add` refuses to silently replace an entry, `lookup` fails with
one line listing what is registered, and `scoped()` undoes every change made inside it (for tests that
register their own plug-ins without leaving them behind):

    with KINDS.scoped(), VARIANTS.scoped():
        register_kind(MyModule)(MyKind)
        ...
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from loralab.errors import LoraLabError, choose


class Registry(dict):
    """{key: plug-in object}; `what` names the plug-in type in messages ("variant", "init", "layer kind")."""

    def __init__(self, what: str):
        super().__init__()
        self.what = what

    def add(self, key: Any, value: Any) -> None:
        if key in self:
            raise ValueError(f"{self.what} {_label(key)} is already registered; remove() it first to replace it")
        self[key] = value

    def remove(self, key: Any) -> None:
        if key not in self:
            raise LoraLabError(f"no {self.what} {_label(key)} is registered")
        del self[key]

    def lookup(self, key: Any) -> Any:
        """The entry for `key`, or a LoraLabError naming the registered ones."""
        return self[choose(key, sorted(self, key=_label), self.what)]

    @contextlib.contextmanager
    def scoped(self) -> Iterator["Registry"]:
        """Restore the registry's entries on exit, whatever was added or removed inside."""
        saved = dict(self)
        try:
            yield self
        finally:
            self.clear()
            self.update(saved)


def _label(key: Any) -> str:
    return key.__name__ if isinstance(key, type) else repr(key)
