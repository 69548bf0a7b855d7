"""ServeSettings: what `loralab serve` runs and its limits, validated at construction."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from loralab.errors import LoraLabError

if TYPE_CHECKING:
    from loralab.precision import Precision
    from loralab.runtime import Runtime

API_KEY_ENV = "LORALAB_API_KEY"


@dataclass
class ServeSettings:
    """One server process: one base model (and task), its adapters, where it listens, and its limits.

    model: base model spec (builtin name, folder or .gguf, as `loralab train` takes; None: the first
        adapter's base). adapters: {name: adapter folder} loaded at start. task: "causal-lm" (the OpenAI
        endpoints) or a classifier task (/v1/classify); None: the first adapter's task, else causal-lm.
    served_name: the base model's name in /v1/models and a request's "model" (default: the spec).
    api_key: required as "Authorization: Bearer KEY" on /v1/* (None: $LORALAB_API_KEY when that is set, else
        open). A given key wins over the variable; an empty key, given or in the variable, is refused (it
        would look like auth while letting "Bearer " through).
    adapter_root: folder of adapter folders (None: off): a request's "model" may name one by its path relative
        to the root (the adapter store: loaded on first use), and /v1/load_lora_adapter loads from under it.
    max_adapters / max_lora_rank: limits for resident adapters (rank: the largest r of any layer); past
        max_adapters the least recently used store adapter no request holds is evicted.
    adapter_memory: bytes of resident adapter tensors (fp32) before evicting (None: no limit).
    max_cold_loads_per_second: store loads a second (a token bucket holding max(1, this)), then 429.
    max_batch_size: rows decoded (or classified) together. max_queue: requests waiting for a row before
        new ones get 429. max_body_bytes: request body size. max_prompt_tokens: prompt length (None: the
        model's context). max_tokens: the most tokens one choice may ask for; default_max_tokens: what a
        completion without max_tokens gets (chat requests get max_tokens). max_n: choices per request.
    max_inputs: texts per /v1/classify request. unload_timeout: seconds (finite, ≥ 0) an unload waits for
        the adapter's running requests. threads: torch threads (None: torch's default).
    device, dtype, quantize: where the model runs and how its frozen weights are stored, as on `loralab train`
        (loralab.precision; "auto" picks a GPU when there is one); adapters stay fp32 in every case.
    packed_linears: decode with the base's plain linears through oneDNN's packed-weight kernel on a CPU
        (loralab.generation.packed: faster steps, a second copy of those weights in memory); False: torch's
        default kernel.
    ragged_steps: prefill joining requests in the running rows' forward where the model supports it
        (loralab.generation.ragged: the weights are read once a step); False: a forward of their own.
    """

    model: str | None = None
    adapters: dict[str, Path] = field(default_factory=dict)
    task: str | None = None
    served_name: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    adapter_root: Path | None = None
    max_adapters: int = 64
    adapter_memory: int | None = None
    max_cold_loads_per_second: float = 20.0
    max_lora_rank: int = 64
    max_batch_size: int = 32
    max_queue: int = 256
    max_body_bytes: int = 1 << 20
    max_prompt_tokens: int | None = None
    max_tokens: int = 512
    default_max_tokens: int = 16
    max_n: int = 8
    max_inputs: int = 64
    unload_timeout: float = 30.0
    threads: int | None = None
    device: str = "auto"
    dtype: str = "fp32"
    quantize: str = "none"
    packed_linears: bool = True
    ragged_steps: bool = True

    def __post_init__(self) -> None:
        self.api_key = _api_key(self.api_key)
        for name in ("max_adapters", "max_lora_rank", "max_batch_size", "max_queue", "max_body_bytes", "max_tokens",
                     "default_max_tokens", "max_n", "max_inputs"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise LoraLabError(f"{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if self.adapter_memory is not None and (isinstance(self.adapter_memory, bool) or
                                                not isinstance(self.adapter_memory, int) or self.adapter_memory < 1):
            raise LoraLabError(f"adapter-memory must be a positive number of bytes, got {self.adapter_memory!r}")
        rate = self.max_cold_loads_per_second
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate <= 0:
            raise LoraLabError(f"max-cold-loads-per-second must be a finite number above 0, got {rate!r}")
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 1:
            raise LoraLabError(f"max-prompt-tokens must be a positive integer, got {self.max_prompt_tokens!r}")
        if self.default_max_tokens > self.max_tokens:
            raise LoraLabError(f"default-max-tokens ({self.default_max_tokens}) is above max-tokens ({self.max_tokens})")
        if isinstance(self.unload_timeout, bool) or not isinstance(self.unload_timeout, (int, float)) or \
                not math.isfinite(self.unload_timeout) or self.unload_timeout < 0:
            raise LoraLabError(f"unload-timeout must be a finite number of seconds, 0 or more, got {self.unload_timeout!r}")
        if not 0 < self.port < 65536:
            raise LoraLabError(f"port must be in 1..65535, got {self.port}")
        if len(self.adapters) > self.max_adapters:
            raise LoraLabError(f"{len(self.adapters)} adapters given but max-adapters is {self.max_adapters}; "
                               "raise --max-adapters")
        if self.adapter_root is not None:
            root = Path(self.adapter_root).expanduser()
            if not root.is_dir():
                raise LoraLabError(f"--adapter-root {root} is not a folder")
            self.adapter_root = root.resolve()
        self.runtime()   # a GPU asked for where none is, an unknown dtype or scheme: one line before anything loads
        if self.model is None and not self.adapters:
            raise LoraLabError("nothing to serve: pass --model (a base model) and/or --adapter NAME=PATH")

    def runtime(self) -> Runtime:
        """The resolved device, dtype and quantization (loralab.runtime.Runtime)."""
        # imported here: `loralab serve --help` builds its flags from these settings without loading torch
        from loralab.runtime import Runtime

        return Runtime.resolve(self.device, self.dtype, self.quantize)

    def precision(self) -> Precision:
        """The resolved device and dtype (loralab.precision.Precision)."""
        return self.runtime().precision


def _api_key(given: str | None) -> str | None:
    """The key the server requires: the given one, else $LORALAB_API_KEY, else None (open). An empty key, given
    or in the variable (even when a key is given), is refused: it is a setting that went wrong somewhere."""
    from_env = os.environ.get(API_KEY_ENV)
    if given is not None and not given.strip():
        raise LoraLabError("--api-key is empty; give a key, or leave --api-key out to use $LORALAB_API_KEY "
                           "(or to serve without a key)")
    if from_env is not None and not from_env.strip():
        raise LoraLabError(f"${API_KEY_ENV} is set but empty; give it a key, or unset it")
    key = given if given is not None else from_env
    if key is not None and not (key.isascii() and key.isprintable() and " " not in key):
        # An HTTP header carries the key as visible ASCII; any other key could never match a request.
        where = "--api-key" if given is not None else f"${API_KEY_ENV}"
        raise LoraLabError(f"{where} holds spaces or characters other than visible ASCII, which no "
                           "'Authorization: Bearer KEY' header can carry; use letters, digits and punctuation")
    return key
