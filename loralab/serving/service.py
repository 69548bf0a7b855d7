"""What one server process serves: the base model, its adapters (hot loaded and unloaded), the engine.

    service = Service.start(ServeSettings(model="smollm2-135m-instruct", adapters={"e2e": Path("runs/e2e/adapter")}))
    with service.pin("e2e") as pin: ...           # the adapter a request names, held: never unloaded under it
    pin.adapter, pin.info                         # None, None for the base model's name; 404 for unknown names
    await service.load_adapter("news", "/srv/adapters/news")
    service.stop()

One process serves one base model for one task: a causal LM (the OpenAI endpoints) or a classifier
(/v1/classify; every adapter's labels.json must give the head the same number of outputs, each adapter
keeps its own label names). Loading checks everything before the model is touched: the path lies under
--adapter-root (403), the folder is an adapter for this task whose rank is within --max-lora-rank, and
loralab.load_adapter checks every module and shape against the base (400 for another model's adapter).

Admission cannot race an unload: `pin` looks the name up and counts the request as using the adapter under
one lock, and `unload_adapter` marks the name as unloading under the same lock, so an admitted request's
adapter stays loaded until its Pin is released (whatever happens to the request), and no request is
admitted for an adapter being unloaded. Whatever later removes adapters (an eviction policy) must skip
pinned ones the same way: `Service.pinned(name)`.

The adapter store (`acquire`): with --adapter-root, a request's "model" may also name an adapter folder by its
path relative to the root. The request is pinned on the name first (in_use counts it), then the folder is
loaded if it is not resident: its files are read and checked on a worker thread, the adapter is inserted on
the model thread between two decoding steps. Concurrent requests for one name share one load; a failed load
answers each of them (and no other request) with its error. Resident adapters are bounded by --max-adapters
(and --adapter-memory); making room unloads the least recently used adapter that no request holds and that
was not given with --adapter or hot-loaded by name (those stay until unloaded). Cold loads are rate-limited
(--max-cold-loads-per-second, 429). A loaded adapter's rank-padded slots in every layer's slot stack
(loralab.core.rows.SlotStack, bounded by --max-adapters) are written on the model thread right after its
insertion, so decoding steps only index them; its memory (tensors plus slots at the stacks' rank) is what
--adapter-memory counts.
"""
from __future__ import annotations

import asyncio
import copy
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

import loralab
from loralab.adapters.per_row import reserve_row_slots, row_slot_bytes, write_row_slots
from loralab.adapters.state import adapted_modules
from loralab.data.batching import pad_token_id_for
from loralab.data.chat import chat_prompt_ids, check_messages
from loralab.data.encoding import Task, encode_examples
from loralab.data.examples import Example
from loralab.data.tasks import task_kind
from loralab.errors import LoraLabError
from loralab.formats.peft import AdapterFile, insert_adapter, read_adapter
from loralab.generation.decoder import context_length
from loralab.models import resolve_model_source
from loralab.runtime import adapter_task_and_labels, check_adapter_folder, load_base, read_task_info, resolve_base
from loralab.serving.api import ApiError, bad_request, not_found
from loralab.serving.engine import ClassifierEngine, GenerationEngine
from loralab.serving.settings import ServeSettings
from loralab.serving.store import AdapterSize, ColdLoadLimiter, MetricLabels, Recency, check_store_name
from loralab.serving.telemetry import Metrics


@dataclass(frozen=True)
class AdapterInfo:
    """A loaded adapter: folder, largest rank, task, label map (classifiers), token limit, load time."""
    name: str
    path: Path
    rank: int
    task: str
    label_map: Any
    max_length: int | None
    created: int


def describe_adapter(name: str, path: Path, task: str, max_rank: int, base_folder: Path | None = None,
                     param: str = "lora_path") -> AdapterInfo:
    """Read an adapter folder's config, task and labels without touching a model (loralab's folders and PEFT's,
    see loralab.runtime.adapter_task_and_labels); 400 when it is not an adapter for `task` within `max_rank`.
    base_folder: the base model's folder, whose config.json may name a PEFT classifier's labels. param: the
    request field the 400 names."""
    try:
        config = check_adapter_folder(path).config     # the CLI's checks and one-line causes, as a 400
    except LoraLabError as exc:
        raise bad_request(f"adapter {name!r}: {exc}", param=param) from None
    try:
        ranks = [int(config["r"]), *(int(r) for r in (config.get("rank_pattern") or {}).values())]
        info = read_task_info(path)
    except (OSError, ValueError, KeyError, TypeError, LoraLabError) as exc:
        raise bad_request(f"adapter {name!r}: unreadable adapter_config.json or loralab-task.json ({exc})",
                          param=param) from None
    if max(ranks) > max_rank:
        raise bad_request(f"adapter {name!r} has rank {max(ranks)}, above this server's --max-lora-rank {max_rank}",
                          param=param)
    try:
        trained_for, label_map = adapter_task_and_labels(path, None, base_folder)
    except (OSError, ValueError, LoraLabError) as exc:
        raise bad_request(f"adapter {name!r}: {exc}", param=param) from None
    if task_kind(trained_for).is_generative != task_kind(task).is_generative:
        raise bad_request(f"adapter {name!r} was trained for {trained_for}; this server serves {task}",
                          param=param)
    return AdapterInfo(name, path, max(ranks), trained_for, label_map, info.get("max_length"), int(time.time()))


class Pin:
    """A request's hold on the model it names: while held, its adapter cannot be unloaded (or evicted).

    adapter: the adapter's name (None: the base model); info: its AdapterInfo as it was at admission (None:
    the base). release() is idempotent, so every exit path of a request may call it; a Pin is also a
    context manager that releases on exit."""

    def __init__(self, service: "Service", adapter: str | None, info: AdapterInfo | None):
        self.service, self.adapter, self.info = service, adapter, info
        self.released = adapter is None                 # the base model is never unloaded: nothing to hold

    def release(self) -> None:
        self.service._unpin(self)

    def __enter__(self) -> "Pin":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Service:
    """The model, its tokenizer, the adapters and the engine (GenerationEngine or ClassifierEngine)."""

    def __init__(self, settings: ServeSettings, model: nn.Module, tokenizer: Any, task: str, model_spec: str,
                 label_map: Any = None, base_folder: Path | None = None):
        self.settings, self.model, self.tokenizer, self.task = settings, model, tokenizer, task
        self.model_spec = model_spec
        self.base_name = settings.served_name or model_spec
        self.label_map = label_map                      # the head's width for classifiers
        self.base_folder = base_folder                  # where the base's config.json is (PEFT adapters' labels)
        self.generative = task_kind(task).is_generative
        self.metrics = Metrics()
        self.adapters: dict[str, AdapterInfo] = {}
        self.in_use: dict[str, int] = {}                # adapter -> requests holding a Pin on it (absent: 0)
        self.unloading: set[str] = set()
        self.fixed: set[str] = set()                    # --adapter and hot-loaded by name: never evicted
        self.sizes: dict[str, AdapterSize] = {}         # adapter -> its tensors' and its slots' bytes (fp32)
        self.slot_rank = 0                              # r_max of the slot stacks: the largest rank loaded so far
        self.recency = Recency()                        # resident adapters, least recently used first
        self._pins = threading.Lock()                   # guards adapters, in_use, unloading, fixed, sizes, recency
        self.manage_lock = asyncio.Lock()
        self._residency = asyncio.Lock()                # making room and inserting: one adapter at a time
        self._loads: dict[str, asyncio.Future] = {}     # store name -> its load in progress (event loop only)
        self._evictions: dict[str, asyncio.Future] = {}  # name -> its removal from the model in progress
        self.cold_loads = ColdLoadLimiter(settings.max_cold_loads_per_second)
        self.labels = MetricLabels([self.base_name], settings.max_adapters)
        self._lookups = {"hit": 0, "miss": 0}
        self.created = int(time.time())
        self._encode_lock = threading.Lock()            # request threads encode with their own tokenizer copy
        self._encoder = copy.deepcopy(tokenizer)
        if self.generative:
            self.engine = GenerationEngine(model, tokenizer, settings.max_batch_size, settings.max_queue, self.metrics,
                                           packed=None if settings.packed_linears else False,
                                           ragged=None if settings.ragged_steps else False)
        else:
            self.engine = ClassifierEngine(model, pad_token_id_for(tokenizer), settings.max_batch_size,
                                           settings.max_queue, self.metrics, regression=label_map.regression)

    # ---- start and stop ---------------------------------------------------------------------------
    @classmethod
    def start(cls, settings: ServeSettings) -> "Service":
        """Load the base model and the --adapter adapters, start the engine."""
        first = next(iter(settings.adapters.values()), None)
        if first is None and not settings.model:
            raise LoraLabError("no model to serve; pass --model (and --adapter NAME=PATH for its adapters)")
        source = resolve_base(first, settings.model) if first is not None else resolve_model_source(settings.model)
        model_spec = str(settings.model or source.spec)
        task = settings.task or (adapter_task_and_labels(first, None, source.folder)[0] if first else "causal-lm")
        described = {name: _describe_or_fail(name, path, task, settings.max_lora_rank, source.folder)
                     for name, path in settings.adapters.items()}
        label_map = next((d.label_map for d in described.values()), None)
        if label_map is None and not task_kind(task).is_generative:
            raise LoraLabError("a classifier server needs at least one --adapter with its labels.json (it sets the "
                               "head's number of outputs)")
        runtime = settings.runtime()
        model, tokenizer = load_base(str(source.folder), task, runtime, label_map)
        for name, adapter in described.items():
            _check_head(adapter, label_map)
            loralab.load_adapter(model, adapter.path, adapter=name)
        model.to(runtime.device).eval()
        reserve_row_slots(model, settings.max_adapters)          # per-layer slots for every resident adapter
        write_row_slots(model, list(described))
        service = cls(settings, model, tokenizer, task, model_spec, label_map, source.folder)
        for name, adapter in described.items():
            service._resident_now(name, adapter, AdapterSize.of(adapter.path), fixed=True)
        service.metrics.set("loralab_adapter_slot_bytes", row_slot_bytes(model))
        service.engine.start()
        return service

    def stop(self, timeout: float | None = None) -> None:
        self.engine.stop(timeout)

    # ---- which model a request names ----------------------------------------------------------------
    def resolve(self, model: str) -> str | None:
        """The adapter a request's "model" names (None: the base model); 404 for anything else. Only a
        lookup: a request holds its adapter with `pin`."""
        if model == self.base_name:
            return None
        if model in self.adapters and model not in self.unloading:
            return model
        raise not_found(model)

    def pin(self, model: str) -> Pin:
        """Look up the model a request names and hold it, in one step (404 for unknown names and adapters
        being unloaded). The caller releases the Pin on every exit path."""
        with self._pins:
            adapter = self.resolve(model)
            if adapter is None:
                return Pin(self, None, None)
            self.in_use[adapter] = self.in_use.get(adapter, 0) + 1
            self.recency.touch(adapter)
            return Pin(self, adapter, self.adapters[adapter])

    async def acquire(self, model: str) -> Pin:
        """`pin`, extended to the adapter store: a name that is not resident but names an adapter folder
        under --adapter-root (its relative path) is pinned, then loaded (or its load in progress awaited),
        so it cannot be evicted between its load and the request. 400 for a name that is not a safe relative
        path or a bad folder, 403 for a folder linking out of the root, 404 for no such folder, 429 when cold
        loads are over --max-cold-loads-per-second or every resident adapter is in use."""
        with self._pins:
            if model == self.base_name:
                return Pin(self, None, None)
            if model in self.adapters and model not in self.unloading:
                self._count_lookup("hit")
                self.in_use[model] = self.in_use.get(model, 0) + 1
                self.recency.touch(model)
                return Pin(self, model, self.adapters[model])
            if self.settings.adapter_root is None or model in self.unloading:
                raise not_found(model)
            check_store_name(model)
            self._count_lookup("miss")
            self.in_use[model] = self.in_use.get(model, 0) + 1     # held from now on: once loaded, never evicted
            pin = Pin(self, model, None)
        try:
            pin.info = await self._make_resident(model)
        except BaseException:
            pin.release()
            raise
        return pin

    def _count_lookup(self, result: str) -> None:
        self._lookups[result] += 1
        self.metrics.inc("loralab_adapter_lookups_total", {"result": result})
        self.metrics.set("loralab_adapter_hit_ratio", self._lookups["hit"] / sum(self._lookups.values()))

    async def _make_resident(self, name: str) -> AdapterInfo:
        """The store adapter `name` (pinned by the caller) once it is on the model: resident already, else
        after its load (one load however many requests wait for it; each gets a failed load's error)."""
        while True:
            with self._pins:
                if name in self.adapters and name not in self.unloading:
                    self.recency.touch(name)
                    return self.adapters[name]
                if name in self.unloading:
                    raise not_found(name)
            load = self._loads.get(name)
            if load is None:
                eviction = self._evictions.get(name)
                if eviction is not None:                 # its removal from the model first, then a fresh load
                    await asyncio.shield(eviction)
                    continue
                self.cold_loads.take()
                load = self._loads[name] = asyncio.ensure_future(self._load_stored(name))
                load.add_done_callback(lambda done: self._load_done(name, done))
            await asyncio.shield(load)                   # a waiter that leaves does not cancel the others' load

    def _load_done(self, name: str, load: asyncio.Future) -> None:
        if self._loads.get(name) is load:
            del self._loads[name]
        if not load.cancelled() and load.exception() is not None:   # retrieved here: no "never retrieved" noise
            self.metrics.inc("loralab_adapter_load_failures_total")

    async def _load_stored(self, name: str) -> None:
        """Read and check the folder on a worker thread, make room, insert the adapter on the model thread."""
        started = time.monotonic()
        info, file, size = await asyncio.to_thread(self._read_stored, name)
        await self._insert(name, info, file, size, fixed=False, full=_adapters_busy)
        self.metrics.inc("loralab_adapter_loads_total")
        self.metrics.observe("loralab_adapter_load_seconds", time.monotonic() - started)

    def _read_stored(self, name: str) -> tuple[AdapterInfo, AdapterFile, int]:
        """On a worker thread: the store folder `name` checked (403 links out of the root, 404 missing, 400
        not an adapter for this server) and read into memory, with its size in bytes."""
        if not os.path.lexists(self.settings.adapter_root / name):
            raise not_found(name)
        path = self.adapter_path(name, param="model")
        info = describe_adapter(name, path, self.task, self.settings.max_lora_rank, self.base_folder, param="model")
        _check_head(info, self.label_map, error=lambda message: bad_request(message, param="model"))
        return info, _read_file(name, path, "model"), AdapterSize.of(path)

    async def _insert(self, name: str, info: AdapterInfo, file: AdapterFile, size: AdapterSize, fixed: bool,
                      full) -> None:
        """Make room for the adapter (its tensors and its slots at the stacks' rank; full(): the error when
        nothing can be evicted), then put it on the model between two steps, write its slots and make it
        resident. One insertion at a time."""
        limit = self.settings.adapter_memory
        async with self._residency:
            rank = max(self.slot_rank, info.rank)
            with self._pins:
                kept = sum(self.sizes[n].at(rank) for n in self.fixed if n in self.sizes)
            if limit is not None and kept + size.at(rank) > limit:
                raise bad_request(f"adapter {name!r} takes {size.at(rank)} bytes (its tensors and its slots at rank "
                                  f"{rank}); with the adapters that stay loaded ({kept} bytes) that is above this "
                                  f"server's --adapter-memory {limit}", param="model" if not fixed else "lora_path")
            while self._over_bounds(size, rank):
                await self._evict_one(full)

            try:
                slot_bytes = await self.engine.call(lambda: insert_for_serving(self.model, file, name))
            except LoraLabError as exc:
                raise bad_request(f"adapter {name!r} does not fit this base model: {exc}",
                                  param="lora_path" if fixed else "model") from None
            self.metrics.set("loralab_adapter_slot_bytes", slot_bytes)
            self._resident_now(name, info, size, fixed)

    def _over_bounds(self, size: AdapterSize, rank: int) -> bool:
        """Whether one more adapter of `size` would go over --max-adapters or --adapter-memory, every
        adapter's slots counted at slot rank `rank`."""
        limit = self.settings.adapter_memory
        with self._pins:
            return len(self.adapters) + 1 > self.settings.max_adapters or \
                (limit is not None and sum(s.at(rank) for s in self.sizes.values()) + size.at(rank) > limit)

    async def _evict_one(self, full) -> None:
        """Unload the least recently used adapter that no request holds and that is not fixed; full() when
        there is none. It leaves `adapters` under the pin lock, so no request is admitted on it after."""
        with self._pins:
            victim = next((n for n in self.recency.oldest_first() if n in self.adapters and n not in self.fixed
                           and not self.in_use.get(n) and n not in self.unloading), None)
            if victim is None:
                raise full(len(self.adapters), self.settings.max_adapters)
            del self.adapters[victim]
            self.sizes.pop(victim, None)
            self.recency.forget(victim)
            removed = self._evictions[victim] = asyncio.get_running_loop().create_future()
        try:
            await self.engine.call(lambda: loralab.delete_adapter(self.model, victim))
        finally:
            del self._evictions[victim]
            removed.set_result(None)
            self._count_resident()
        self.metrics.inc("loralab_adapter_evictions_total")

    def _resident_now(self, name: str, info: AdapterInfo, size: AdapterSize, fixed: bool) -> None:
        with self._pins:
            self.adapters[name] = info
            self.sizes[name] = size
            self.slot_rank = max(self.slot_rank, info.rank)
            self.recency.touch(name)
            if fixed:
                self.fixed.add(name)
        if fixed:
            self.labels.add_fixed(name)
        self._count_resident()

    def _count_resident(self) -> None:
        with self._pins:
            count, size = len(self.adapters), sum(s.at(self.slot_rank) for s in self.sizes.values())
        self.metrics.set("loralab_adapters_loaded", count)
        self.metrics.set("loralab_adapter_resident_bytes", size)

    def metric_label(self, model: str) -> str:
        """The "model" label of a request's metrics: bounded (store adapters past --max-adapters: "other")."""
        return self.labels.label(model)

    def pinned(self, adapter: str) -> int:
        """How many requests hold `adapter` now."""
        with self._pins:
            return self.in_use.get(adapter, 0)

    def _unpin(self, pin: Pin) -> None:
        with self._pins:                                 # the flag under the lock: released once, from any thread
            if pin.released:
                return
            pin.released = True
            left = self.in_use[pin.adapter] - 1
            if left:
                self.in_use[pin.adapter] = left
            else:
                del self.in_use[pin.adapter]

    def model_cards(self) -> list[dict]:
        """/v1/models entries: the base, then each adapter with its base as parent (vLLM's shape)."""
        cards = [{"id": self.base_name, "object": "model", "created": self.created, "owned_by": "loralab",
                  "root": self.model_spec, "parent": None, "task": self.task}]
        for info in self.adapters.values():
            card = {"id": info.name, "object": "model", "created": info.created, "owned_by": "loralab",
                    "root": str(info.path), "parent": self.base_name, "task": info.task, "rank": info.rank}
            if info.label_map is not None:
                card["labels"] = list(info.label_map.names)
            cards.append(card)
        return cards

    # ---- encoding requests (on request threads) -----------------------------------------------------
    def context_length(self) -> int | None:
        return context_length(self.model)

    def encode_prompts(self, prompts: list[str] | None, messages: Any, max_tokens: int,
                       max_tokens_field: str = "max_tokens") -> list[list[int]]:
        """Token ids of each prompt (chat: the messages through the chat template); 400 when a prompt is
        empty or too long for --max-prompt-tokens or the model's context with max_tokens added
        (max_tokens_field: the request field that gave it, named in the error)."""
        with self._encode_lock:
            try:
                if messages is not None:
                    ids = [chat_prompt_ids(self._encoder, check_messages(list(messages), "messages"))]
                else:
                    ids = [self._encoder(p)["input_ids"] for p in prompts]
            except LoraLabError as exc:
                raise bad_request(str(exc), param="messages" if messages is not None else "prompt") from None
        limit, context = self.settings.max_prompt_tokens, self.context_length()
        for one in ids:
            if not one:
                raise bad_request("the prompt is empty after tokenization", param="prompt")
            if limit is not None and len(one) > limit:
                raise bad_request(f"the prompt has {len(one)} tokens, above this server's --max-prompt-tokens "
                                  f"{limit}", param="prompt")
            if context is not None and len(one) + max_tokens > context:
                raise bad_request(f"this model's context is {context} tokens, but the prompt ({len(one)}) plus "
                                  f"{max_tokens_field} ({max_tokens}) needs {len(one) + max_tokens}",
                                  param=max_tokens_field)
        return ids

    def encode_inputs(self, pin: Pin, inputs: tuple) -> list[dict]:
        """Classifier features of each (text, text_pair), tokenized as the pinned adapter was trained."""
        adapter, info = pin.adapter, pin.info
        kind = info.task if info is not None else self.task
        pairs = task_kind(kind).text_pair
        if pairs == "never" and any(b is not None for _, b in inputs):
            raise bad_request(f"{adapter or self.base_name} classifies single texts; send strings, not pairs",
                              param="input")
        if pairs == "required" and any(b is None for _, b in inputs):
            raise bad_request(f"{adapter or self.base_name} classifies text pairs; send [text, text_pair]",
                              param="input")
        task = Task(kind, max_length=info.max_length if info is not None else None)
        examples = [Example(text=a, text_pair=b) for a, b in inputs]
        with self._encode_lock:
            try:
                return list(encode_examples(examples, self._encoder, task, include_labels=False).features)
            except LoraLabError as exc:
                raise bad_request(str(exc), param="input") from None

    def labels_of(self, pin: Pin):
        """The label map answers use: the pinned adapter's own (each keeps its label names), else the head's."""
        return pin.info.label_map if pin.info is not None else self.label_map

    # ---- hot loading ----------------------------------------------------------------------------------
    def adapter_path(self, raw: str, param: str = "lora_path") -> Path:
        """The folder a load request names, resolved; 403 unless it, and every file and folder at any level
        inside it (symlinks resolved), lies under --adapter-root. param: the request field the 403 names."""
        root = self.settings.adapter_root
        if root is None:
            raise ApiError(403, "runtime adapter loading is off; start the server with --adapter-root FOLDER",
                           type="permission_error", param="lora_path", code="forbidden")
        path = Path(raw).expanduser()
        path = (path if path.is_absolute() else root / path).resolve()
        if not _under(path, root):
            raise ApiError(403, f"{raw!r} is outside the server's --adapter-root", type="permission_error",
                           param=param, code="forbidden")
        _check_links_stay_under(root, path, raw, param)
        return path

    async def load_adapter(self, name: str, raw_path: str) -> AdapterInfo:
        async with self.manage_lock:
            if name in self.adapters or name == self.base_name or name in self._loads:
                raise bad_request(f"the name {name!r} is already taken; unload it first or pick another",
                                  param="lora_name")
            path = await asyncio.to_thread(self.adapter_path, raw_path)
            info = await asyncio.to_thread(describe_adapter, name, path, self.task, self.settings.max_lora_rank,
                                           self.base_folder)
            _check_head(info, self.label_map, error=bad_request)
            file = await asyncio.to_thread(_read_file, name, path, "lora_path")
            await self._insert(name, info, file, AdapterSize.of(path), fixed=True, full=_max_adapters_reached)
            return info

    async def unload_adapter(self, name: str) -> None:
        """Wait (up to --unload-timeout) for the requests holding the adapter, then delete it; 409 if they
        still hold it then (the adapter stays loaded), 404 for an unknown name. From the moment this starts,
        new requests for the name get 404."""
        async with self.manage_lock:
            with self._pins:
                if name not in self.adapters:
                    raise not_found(name)
                self.unloading.add(name)                 # under the pin lock: no request is admitted after this
            try:
                deadline = time.monotonic() + self.settings.unload_timeout
                while self.pinned(name) and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                if self.pinned(name):
                    raise ApiError(409, f"adapter {name!r} is still used by {self.pinned(name)} running request(s) "
                                        f"after {self.settings.unload_timeout:g} s; it stays loaded, retry later",
                                   type="conflict_error", param="lora_name", code="adapter_in_use")
                await self.engine.call(lambda: loralab.delete_adapter(self.model, name))
                with self._pins:
                    del self.adapters[name]
                    self.sizes.pop(name, None)
                    self.fixed.discard(name)
                    self.recency.forget(name)
                self._count_resident()
            finally:
                with self._pins:
                    self.unloading.discard(name)


MAX_ADAPTER_ENTRIES = 10_000      # files and folders in one hot-loaded adapter folder (a real one holds a few)


def insert_for_serving(model: nn.Module, file: AdapterFile, name: str) -> int:
    """On the model thread, between two decoding steps: put adapter `name` read from `file` on the model and make
    it ready to decode (`ready_for_serving`). Returns the bytes the model's slot stacks now hold."""
    insert_adapter(model, file, adapter=name, trainable=False)     # nothing trains here
    return ready_for_serving(model, name)


def ready_for_serving(model: nn.Module, name: str) -> int:
    """A freshly inserted adapter in eval mode (new modules start in training mode: dropout) and its per-row slots
    written, so no decoding step writes them. Returns the bytes the model's slot stacks now hold.

    The served model is in eval mode (set when the server starts, kept after every insertion), so only the
    modules the insertion created need switching: on such a model this is `model.eval()`, without walking every
    other adapter's factors."""
    if model.training:
        model.eval()
    layers, copies = adapted_modules(model)
    for layer in layers:
        if name in layer.lora_adapters:             # a layer adapted first now is a new wrapper
            layer.training = layer.lora_adapters.training = False
            layer.lora_adapters[name].eval()
    for wrapper in copies:
        if name in wrapper.trainable_copies:
            wrapper.training = wrapper.trainable_copies.training = False
            wrapper.trainable_copies[name].eval()
    write_row_slots(model, [name], layers)
    return row_slot_bytes(model, layers)


def _under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _check_links_stay_under(root: Path, folder: Path, raw: str, param: str = "lora_path") -> None:
    """403 naming the entry when a file or folder at any level inside `folder` resolves (through symlinks)
    outside `root`: the loader would read it. Folders linked inside the root are walked too, each once."""
    seen: set[Path] = set()
    todo, count = [folder], 0
    while todo:
        current = todo.pop()
        if current.resolve() in seen:
            continue
        seen.add(current.resolve())
        try:
            entries = list(os.scandir(current))
        except OSError:
            continue                                     # not a folder or unreadable: describe_adapter says so
        for entry in entries:
            count += 1
            if count > MAX_ADAPTER_ENTRIES:
                raise bad_request(f"{raw!r} holds more than {MAX_ADAPTER_ENTRIES} files and folders; an adapter "
                                  "folder holds a few", param=param)
            name = Path(entry.path).relative_to(folder)
            try:
                target = Path(entry.path).resolve(strict=False)
            except (OSError, RuntimeError):              # a symlink loop
                raise bad_request(f"{name} in {raw!r} is a symlink loop", param=param) from None
            if not _under(target, root):
                raise ApiError(403, f"{name} in {raw!r} is a symlink to {target}, outside the server's "
                                    "--adapter-root", type="permission_error", param=param, code="forbidden")
            if entry.is_dir():
                todo.append(Path(entry.path))


def _read_file(name: str, path: Path, param: str) -> AdapterFile:
    """The adapter's tensors read into memory (off the model thread); 400 naming the file's problem."""
    try:
        return read_adapter(path)
    except LoraLabError as exc:
        raise bad_request(f"adapter {name!r}: {exc}", param=param) from None


def _adapters_busy(count: int, limit: int) -> ApiError:
    return ApiError(429, f"all {count} resident adapters are in use or kept loaded (this server's --max-adapters is "
                         f"{limit}); retry shortly", type="rate_limit_error", param="model", code="adapters_busy",
                    headers={"Retry-After": "1"})


def _max_adapters_reached(count: int, limit: int) -> ApiError:
    return bad_request(f"{count} adapters are loaded, this server's --max-adapters ({limit}), and none can be "
                       "evicted; unload one first", param="lora_name")


def _describe_or_fail(name: str, path: Path, task: str, max_rank: int, base_folder: Path | None) -> AdapterInfo:
    try:
        return describe_adapter(name, Path(path), task, max_rank, base_folder)
    except ApiError as exc:
        raise LoraLabError(exc.message) from None


def _check_head(info: AdapterInfo, label_map: Any, error=LoraLabError) -> None:
    """A classifier adapter must fit the loaded head: same number of outputs, regression or not."""
    if label_map is None or info.label_map is None:
        return
    if info.label_map.num_labels != label_map.num_labels or info.label_map.regression != label_map.regression:
        raise error(f"adapter {info.name!r} predicts {info.label_map.num_labels} output(s) but this server's head "
                    f"has {label_map.num_labels}; serve it from a server started with adapters of its shape")
