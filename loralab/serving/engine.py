"""The model thread: every forward, adapter load and adapter deletion runs on one thread, between steps.

    engine = GenerationEngine(model, tokenizer, max_batch_size=32, max_queue=256, metrics=metrics)
    engine.start()
    sink = EventSink(asyncio.get_running_loop())
    engine.submit(GenerationJob("req-1", adapter="sst2", prompts=[ids], params=[SamplingParams()], sink=sink))
    event = await sink.get()        # ("token", choice, StepOutput) ... or ("error", ApiError)
    await engine.call(lambda: loralab.delete_adapter(model, "sst2"))   # between two steps

GenerationEngine is continuous batching on loralab.generation.BatchDecoder: a new request joins at the next
step, a finished or cancelled one leaves, and each step is one mixed-adapter forward
(loralab.per_row_adapters with the adapter of every running row). ClassifierEngine batches the rows of
waiting /v1/classify requests, up to max_batch_size per forward, whatever their adapters.

What fails for one request fails that request alone, and the batch goes on: a request whose adapter is
not on the model (checked before every step; an admitted request's adapter is pinned, so only a bug gets
here), a generation row whose own work after the forward raises (BatchDecoder's per-row isolation), a
classify request whose rows make a mixed forward fail (each request is then run alone: the one that still
fails gets the error). Such a request gets a 500 error object and leaves the batch; the other streams get
every token and their [DONE]. Only a forward of a generation batch that fails as a whole fails the requests
in it (500), and the engine goes on with a fresh batch: no request can take the server down or see another
request's rows.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sys
import threading
import traceback
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

import loralab
from loralab.adapters.state import STATE_ATTR
from loralab.data.batching import PadCollator
from loralab.generation import BatchDecoder
from loralab.generation.packed import PackedLinears
from loralab.serving.api import ApiError
from loralab.serving.telemetry import Metrics


class EventSink:
    """Events from the model thread to one request's coroutine (an asyncio.Queue on its event loop)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()

    def push(self, event: tuple) -> None:
        with contextlib.suppress(RuntimeError):          # the loop is closed: nobody is listening any more
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    async def get(self) -> tuple:
        return await self.queue.get()


def internal_error(exc: BaseException) -> ApiError:
    return ApiError(500, f"the model failed on this batch ({type(exc).__name__}); the request was dropped",
                    type="internal_error", code="internal_error")


def request_error(exc: BaseException) -> ApiError:
    """The error of one request whose own work failed (the others in its batch went on)."""
    return ApiError(500, f"the server failed on this request ({type(exc).__name__}: {exc}); it was dropped, the "
                         "other requests went on", type="internal_error", code="internal_error")


def loaded_adapters(model: nn.Module) -> set[str]:
    return set(getattr(getattr(model, STATE_ATTR, None), "configs", None) or ())


def check_adapter(model: nn.Module, adapter: str | None) -> None:
    """Raise when a request's adapter is not on the model (a request must fail alone, not its batch)."""
    if adapter is not None and adapter not in loaded_adapters(model):
        raise LookupError(f"adapter {adapter!r} is not loaded on the model")


class ModelWorker:
    """One thread that owns the model. Subclasses say whether there is work and do one unit of it."""

    def __init__(self, model: nn.Module, max_queue: int, metrics: Metrics, name: str):
        self.model = model
        self.max_queue = max_queue
        self.metrics = metrics
        self._inbox: deque[Callable[[], None]] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._queued = 0                                 # choices/rows submitted and not yet started
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    # ---- from the server's threads --------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Finish what is queued and running, then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)

    def post(self, task: Callable[[], None]) -> None:
        with self._cond:
            self._inbox.append(task)
            self._cond.notify()

    def call(self, fn: Callable[[], Any]) -> "asyncio.Future":
        """Run fn() on the model thread between two steps; an awaitable of its result (or exception)."""
        future: concurrent.futures.Future = concurrent.futures.Future()

        def task() -> None:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as exc:  # noqa: BLE001 - handed to the awaiting request
                    future.set_exception(exc)
        self.post(task)
        return asyncio.wrap_future(future)

    def reserve(self, rows: int) -> None:
        """Count `rows` new waiting rows, or raise 429 when the queue would overflow."""
        with self._cond:
            if self._queued + rows > self.max_queue:
                raise ApiError(429, f"the server's queue is full ({self._queued} waiting); retry shortly",
                               type="rate_limit_error", code="queue_full", headers={"Retry-After": "1"})
            self._queued += rows
            self.metrics.set("loralab_queue_depth", self._queued)

    def _started(self, rows: int = 1) -> None:
        with self._cond:
            self._queued -= rows
            self.metrics.set("loralab_queue_depth", self._queued)

    @property
    def queued(self) -> int:
        return self._queued

    # ---- on the model thread --------------------------------------------------------------------
    def has_work(self) -> bool:
        raise NotImplementedError

    def work(self) -> None:
        raise NotImplementedError

    def fail_all(self, error: ApiError) -> None:
        raise NotImplementedError

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._inbox and not self._stopping and not self.has_work():
                    self._cond.wait()
                tasks = list(self._inbox)
                self._inbox.clear()
                if not tasks and self._stopping and not self.has_work():
                    return
            for task in tasks:
                task()
            if self.has_work():
                try:
                    self.work()
                except Exception as exc:  # noqa: BLE001 - the server lives on; the batch's requests get a 500
                    traceback.print_exc(file=sys.stderr)
                    self.fail_all(internal_error(exc))


def adapters_context(model: nn.Module, names: Sequence[str | None]):
    """per_row_adapters for these row names; a plain block when the model has no adapters at all."""
    if all(n is None for n in names) and not getattr(getattr(model, STATE_ATTR, None), "configs", None):
        return contextlib.nullcontext()
    return loralab.per_row_adapters(model, names)


# ------------------------------------------------------------------------------------------------
# Generation
# ------------------------------------------------------------------------------------------------
@dataclass
class GenerationJob:
    """One request: its adapter (None: base), each choice's prompt ids and SamplingParams, where events go.
    Choice i is decoder request (job_id, i)."""
    job_id: str
    adapter: str | None
    prompts: list[list[int]]
    params: list[Any]
    sink: EventSink
    started: set = field(default_factory=set)


class GenerationEngine(ModelWorker):
    """Continuous batching over a causal LM, one mixed-adapter decoding step at a time."""

    def __init__(self, model: nn.Module, tokenizer: Any, max_batch_size: int, max_queue: int, metrics: Metrics,
                 packed: bool | None = None, ragged: bool | None = None):
        super().__init__(model, max_queue, metrics, name="loralab-generation")
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.ragged = ragged                             # BatchDecoder's: None where the model supports ragged steps
        # one packed copy of the base linears for every decoder this engine makes (fail_all makes a new one)
        self.packed = PackedLinears(model, enabled=packed, rows_hint=min(max_batch_size, 32))
        self._rows: dict[Hashable, GenerationJob] = {}     # decoder request id -> its job
        self.decoder = self._new_decoder()

    def _new_decoder(self):
        return BatchDecoder(self.model, self.tokenizer, max_batch_size=self.max_batch_size,
                            forward_context=self._context, packed=self.packed, ragged=self.ragged)

    def _context(self, row_ids: list[Hashable]):
        return adapters_context(self.model, [self._rows[r].adapter for r in row_ids])

    def submit(self, job: GenerationJob) -> None:
        """Queue every choice of the job (429 when the queue is full); events go to job.sink."""
        self.reserve(len(job.prompts))
        self.post(lambda: self._add(job))

    def cancel(self, job_id: str) -> None:
        self.post(lambda: self._cancel(job_id))

    def has_work(self) -> bool:
        return self.decoder.has_work

    def check_job(self, job: GenerationJob) -> None:
        """Raise when `job` cannot run in the next step (its adapter is gone): it fails alone."""
        check_adapter(self.model, job.adapter)

    def _fail_job(self, job: GenerationJob, error: ApiError) -> None:
        """Take every row of `job` out of the batch and the queue, and send it `error`; the rest go on."""
        self._cancel(job.job_id)
        job.sink.push(("error", error))

    def _add(self, job: GenerationJob) -> None:
        for i, (prompt, params) in enumerate(zip(job.prompts, job.params)):
            self._rows[(job.job_id, i)] = job
            try:
                self.decoder.add((job.job_id, i), prompt, params)
            except Exception as exc:  # noqa: BLE001 - a bad request must not stop the others
                self._cancel(job.job_id)
                job.sink.push(("error", ApiError(400, str(exc))))
                return

    def _cancel(self, job_id: str) -> None:
        for rid in [r for r in self._rows if r[0] == job_id]:
            job = self._rows.pop(rid)
            self.decoder.cancel(rid)
            if rid not in job.started:
                job.started.add(rid)
                self._started()

    def work(self) -> None:
        for job in {id(job): job for job in self._rows.values()}.values():
            try:
                self.check_job(job)
            except Exception as exc:  # noqa: BLE001 - this request fails alone
                self._fail_job(job, request_error(exc))
        if not self.decoder.has_work:
            return
        outputs = self.decoder.step()
        # per step, not per forward: a step is one or two forwards, and a ragged one enters its context twice
        self.metrics.observe("loralab_batch_rows", len(outputs))
        self.metrics.observe("loralab_batch_adapters", len({self._rows[o.request_id].adapter for o in outputs
                                                            if o.request_id in self._rows}))
        self.metrics.set("loralab_running_rows", len(self.decoder.row_ids))
        for out in outputs:
            job = self._rows.get(out.request_id)
            if job is None:
                continue
            if out.request_id not in job.started:
                job.started.add(out.request_id)
                self._started()
            if out.error is not None:                    # this row's own work failed: its request alone ends
                traceback.print_exception(out.error, file=sys.stderr)
                del self._rows[out.request_id]
                self._fail_job(job, request_error(out.error))
                continue
            if out.finished:
                del self._rows[out.request_id]
            job.sink.push(("token", out.request_id[1], out))

    def fail_all(self, error: ApiError) -> None:
        jobs = {id(job): job for job in self._rows.values()}
        for rid, job in list(self._rows.items()):
            if rid not in job.started:
                self._started()
        self._rows.clear()
        self.decoder = self._new_decoder()
        for job in jobs.values():
            job.sink.push(("error", error))


# ------------------------------------------------------------------------------------------------
# Classification
# ------------------------------------------------------------------------------------------------
@dataclass
class ClassifyJob:
    """One /v1/classify request: its adapter, its encoded rows (feature dicts), where the result goes."""
    adapter: str | None
    features: list[dict]
    sink: EventSink
    probs: list = field(default_factory=list)
    done: int = 0
    failed: bool = False


class ClassifierEngine(ModelWorker):
    """Batches waiting classify rows (any adapters) into forwards of up to max_batch_size rows."""

    def __init__(self, model: nn.Module, pad_token_id: int, max_batch_size: int, max_queue: int, metrics: Metrics,
                 regression: bool):
        super().__init__(model, max_queue, metrics, name="loralab-classifier")

        self.collate = PadCollator(pad_token_id)
        self.device = next(model.parameters()).device
        self.max_batch_size = max_batch_size
        self.regression = regression
        self._pending: deque[tuple[ClassifyJob, int]] = deque()
        self._in_flight: list[tuple[ClassifyJob, int]] = []

    def submit(self, job: ClassifyJob) -> None:
        self.reserve(len(job.features))
        job.probs = [None] * len(job.features)

        def add() -> None:
            self._pending.extend((job, i) for i in range(len(job.features)))
        self.post(add)

    def has_work(self) -> bool:
        return bool(self._pending)

    def work(self) -> None:
        rows = [self._pending.popleft() for _ in range(min(self.max_batch_size, len(self._pending)))]
        self._started(len(rows))
        rows = self._servable(rows)
        if not rows:
            return
        self._in_flight = rows
        try:
            values = self._forward(rows)
        except Exception:
            if len({id(job) for job, _ in rows}) < 2:
                raise                                    # one request's batch: fail_all gives it the error
            traceback.print_exc(file=sys.stderr)
            values = self._forward_each_request(rows)
        self._in_flight = []
        for (job, i), value in zip(rows, values):
            if job.failed:
                continue
            job.probs[i] = value
            job.done += 1
            if job.done == len(job.features):
                job.sink.push(("done", job.probs))

    def _servable(self, rows: list[tuple[ClassifyJob, int]]) -> list[tuple[ClassifyJob, int]]:
        """The rows whose request can run; a request whose adapter is not on the model fails alone."""
        for job in {id(job): job for job, _ in rows}.values():
            try:
                check_adapter(self.model, job.adapter)
            except Exception as exc:  # noqa: BLE001 - this request fails alone
                self._fail_job(job, request_error(exc))
        return [(job, i) for job, i in rows if not job.failed]

    def _forward(self, rows: list[tuple[ClassifyJob, int]]) -> list:
        """Each row's probabilities (regression: its value), in one mixed-adapter forward."""
        names = [job.adapter for job, _ in rows]
        self.metrics.observe("loralab_batch_rows", len(rows))
        self.metrics.observe("loralab_batch_adapters", len(set(names)))
        batch = {k: v.to(self.device) for k, v in self.collate([job.features[i] for job, i in rows]).items()}
        with torch.inference_mode(), adapters_context(self.model, names):
            logits = self.model(**batch).logits.float()
        return logits[:, 0].tolist() if self.regression else torch.softmax(logits, dim=-1).tolist()

    def _forward_each_request(self, rows: list[tuple[ClassifyJob, int]]) -> list:
        """After a mixed forward failed: each request's rows alone, so only a request that fails by itself
        gets the error (classification keeps no state between forwards; running again is safe)."""
        values: list = [None] * len(rows)
        for job in {id(job): job for job, _ in rows}.values():
            index = [k for k, (other, _) in enumerate(rows) if other is job]
            try:
                for k, value in zip(index, self._forward([rows[k] for k in index])):
                    values[k] = value
            except Exception as exc:  # noqa: BLE001 - this request fails alone
                self._fail_job(job, request_error(exc))
        return values

    def _fail_job(self, job: ClassifyJob, error: ApiError) -> None:
        """`job` gets `error`; its rows still waiting are dropped, the other requests' rows stay."""
        job.failed = True
        keep = deque((other, i) for other, i in self._pending if other is not job)
        self._started(len(self._pending) - len(keep))
        self._pending = keep
        job.sink.push(("error", error))

    def fail_all(self, error: ApiError) -> None:
        """The jobs of the failed batch get the error; their other waiting rows are dropped."""
        failed = {id(job): job for job, _ in self._in_flight}
        self._in_flight = []
        keep = deque((job, i) for job, i in self._pending if id(job) not in failed)
        self._started(len(self._pending) - len(keep))
        self._pending = keep
        for job in failed.values():
            job.sink.push(("error", error))
