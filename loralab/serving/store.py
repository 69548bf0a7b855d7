"""The adapter store's parts that hold no model: which request names are store names, how many bytes an
adapter takes, the cold-load rate limit, the least-recently-used order and bounded metric labels.

    check_store_name("customers/acme")          # 400 unless a safe relative path (no "..", no absolute path)
    limiter = ColdLoadLimiter(per_second=20.0)   # limiter.take() raises 429 with Retry-After when empty
    lru = Recency(); lru.touch("a"); lru.oldest_first()

Service (service.py) owns the adapters, their pins and the model thread; it asks these for decisions.
"""
from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError, safe_open

from loralab.serving.api import ApiError, bad_request

MAX_STORE_NAME = 512            # characters of a store name (a relative folder path)
FP32_BYTES = 4                  # adapters are kept in fp32 on every base (ServeSettings)
OTHER_LABEL = "other"           # the metric label of store adapters past the labelled ones


def check_store_name(name: str) -> None:
    """400 unless `name` is a safe relative folder path under --adapter-root: "/"-separated parts, none
    empty, "." or "..", no backslash, no leading "~", visible ASCII and spaces only."""
    parts = name.split("/")
    unsafe = (not name or len(name) > MAX_STORE_NAME or not (name.isascii() and name.isprintable())
              or "\\" in name or name.startswith("~") or any(p in ("", ".", "..") for p in parts))
    if unsafe:
        raise bad_request(f"model {name[:MAX_STORE_NAME]!r} is neither this server's model, a loaded adapter nor "
                          "a safe relative path of an adapter folder under --adapter-root (no '..', no leading '/', "
                          "no empty parts)", param="model")


def adapter_bytes(folder: Path) -> int:
    """Bytes the adapter's tensors take on the model (fp32), from the weights file's header alone."""
    return AdapterSize.of(folder).tensors


@dataclass(frozen=True)
class AdapterSize:
    """What a resident adapter costs: its own tensors (fp32 bytes) and, per unit of the slot rank, its
    slots in the per-layer slot stacks (loralab.core.rows.SlotStack: r_max × (k + d) fp32 values for each
    adapted 2-D layer, zero-padded past its own rank). at(slot_rank): the total at the stacks' r_max."""
    tensors: int
    slot_per_rank: int

    def at(self, slot_rank: int) -> int:
        return self.tensors + slot_rank * self.slot_per_rank

    @classmethod
    def of(cls, folder: Path) -> "AdapterSize":
        """From the weights file's header alone (unreadable: 0, 0; the loader names the problem)."""
        try:
            with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as fh:
                shapes = {key: fh.get_slice(key).get_shape() for key in fh.keys()}
        except (SafetensorError, OSError, ValueError):
            return cls(0, 0)
        per_rank = 0
        for key, shape in shapes.items():
            if len(shape) == 2 and "lora_A" in key:          # A (r, k): k values per slot rank row
                per_rank += shape[1]
            elif len(shape) == 2 and "lora_B" in key:        # B (d, r): d values per slot rank row
                per_rank += shape[0]
        return cls(sum(math.prod(shape) for shape in shapes.values()) * FP32_BYTES, per_rank * FP32_BYTES)


class ColdLoadLimiter:
    """A token bucket for cold loads: `per_second` tokens a second, at most max(1, per_second) saved up.
    take() spends one or raises 429 with Retry-After (whole seconds) until the next token. clock: seconds
    (time.monotonic; tests pass their own)."""

    def __init__(self, per_second: float, clock: Callable[[], float] = time.monotonic):
        self.per_second, self.clock = per_second, clock
        self.capacity = max(1.0, per_second)
        self.tokens, self.at = self.capacity, clock()
        self._lock = threading.Lock()

    def take(self) -> None:
        with self._lock:
            now = self.clock()
            self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.per_second)
            self.at = now
            if self.tokens < 1.0:
                wait = math.ceil((1.0 - self.tokens) / self.per_second)
                raise ApiError(429, f"too many adapters loaded from --adapter-root in a short time (this server's "
                                    f"--max-cold-loads-per-second is {self.per_second:g}); retry in {wait} s, or "
                                    "use an adapter that is already loaded", type="rate_limit_error",
                               param="model", code="cold_load_rate", headers={"Retry-After": str(wait)})
            self.tokens -= 1.0


class Recency:
    """Adapter names in the order they were last used (oldest first). Not thread-safe: the Service calls it
    under its pin lock."""

    def __init__(self) -> None:
        self._order: OrderedDict[str, None] = OrderedDict()

    def touch(self, name: str) -> None:
        self._order[name] = None
        self._order.move_to_end(name)

    def forget(self, name: str) -> None:
        self._order.pop(name, None)

    def oldest_first(self) -> list[str]:
        return list(self._order)


class MetricLabels:
    """Bounded per-adapter metric labels: fixed names (the base, --adapter and hot-loaded ones) keep theirs,
    the first `limit` store adapters seen keep theirs, every later one is counted as "other"."""

    def __init__(self, fixed: Iterable[str], limit: int):
        self.fixed, self.limit = set(fixed), limit
        self._store: set[str] = set()
        self._lock = threading.Lock()

    def add_fixed(self, name: str) -> None:
        with self._lock:
            self.fixed.add(name)

    def label(self, model: str) -> str:
        with self._lock:
            if model in self.fixed or model in self._store:
                return model
            if len(self._store) < self.limit:
                self._store.add(model)
                return model
            return OTHER_LABEL
