"""The HTTP side of `loralab serve`: a FastAPI app over a Service.

    GET  /                          the playground page (two models side by side, streamed)
    GET  /health                    {"status": "ok"} (503 "draining" during shutdown)
    GET  /metrics                   Prometheus text
    GET  /v1/models                 the base model and every adapter (vLLM's shape: adapters name their parent)
    POST /v1/completions            OpenAI completions (causal-LM servers)
    POST /v1/chat/completions       OpenAI chat completions through the tokenizer's chat template
    POST /v1/classify               labels and probabilities (classifier servers)
    POST /v1/load_lora_adapter      {"lora_name", "lora_path"}: hot load from under --adapter-root
    POST /v1/unload_lora_adapter    {"lora_name"}: waits for the adapter's running requests

    GET  /openapi.json, /docs        the OpenAPI schema of these endpoints (request models: serving.schema)

/v1/* needs "Authorization: Bearer KEY" when the server has an API key. Every /v1 request is checked in
this order: draining (503), key (401), body size, JSON, nesting depth and text (400; `_V1Route`), then
FastAPI validates the body against its pydantic model (400, never FastAPI's 422) and api's checkers apply
the server's limits. Every error is OpenAI's error object
with its status: 400 bad body or limits, 401 key, 403 path outside the adapter root, 404 unknown model,
409 adapter in use, 429 queue full (Retry-After), 503 shutting down, 500 a failed model step.
A client that disconnects cancels its generation at the next step.
"""
from __future__ import annotations

import asyncio
import hmac
import time
from importlib import resources
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from loralab.serving import api, schema, telemetry
from loralab.serving.api import ApiError
from loralab.serving.engine import ClassifyJob, EventSink, GenerationJob
from loralab.serving.schema import (ChatCompletionRequest, ClassifyRequest, CompletionRequest, LoadLoraAdapterRequest,
                                    UnloadLoraAdapterRequest)
from loralab.serving.service import Pin, Service


def create_app(service: Service) -> FastAPI:
    """The app; `app.state.draining = True` makes it refuse new requests (graceful shutdown)."""
    app = FastAPI(title="loralab serve", summary="OpenAI-compatible completions, chat and classification with LoRA "
                  "adapters", docs_url="/docs", redoc_url=None, openapi_url="/openapi.json")
    app.state.service = service
    app.state.draining = False
    _error_handlers(app)
    _routes(app, service)
    return app


class _CheckedRequest(Request):
    """A /v1 request whose body is read at most --max-body-bytes and parsed by api.parse_body (depth, lone
    surrogates, an object), once: FastAPI's own body reading and validation get the checked result."""

    async def body(self) -> bytes:
        if not hasattr(self, "_body"):
            self._body = await read_limited_body(self, self.app.state.service.settings.max_body_bytes)
        return self._body

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = api.parse_body(await self.body())
        return self._json


async def read_limited_body(request: Request, limit: int) -> bytes:
    """The request's body, refused with a 400 as soon as it is declared (Content-Length) or read longer than
    `limit` bytes, so an oversized body is never held in memory (the single-process app and Ray's router)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise api.bad_request(f"the body is larger than this server's {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise api.bad_request(f"the body is larger than this server's {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def authorize(authorization: str | None, api_key: str | None) -> None:
    """401 unless the Authorization header is "Bearer <api_key>" (api_key None: the server is open)."""
    if api_key is not None:
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), api_key.encode()):
            raise ApiError(401, "missing or wrong API key; send 'Authorization: Bearer KEY'", code="invalid_api_key")


async def _guard(request: Request) -> None:
    """503 while draining, 401 without the API key (when the server has one)."""
    if request.app.state.draining:
        raise ApiError(503, "the server is shutting down; send the request to another instance",
                       type="service_unavailable", code="shutting_down")
    authorize(request.headers.get("authorization"), request.app.state.service.settings.api_key)


class _V1Route(APIRoute):
    """/v1 routes: the guard, then (POST) the body read and parsed as _CheckedRequest, before FastAPI validates
    it against the endpoint's model (FastAPI's documented custom-route mechanism)."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def checked(request: Request) -> Response:
            request = _CheckedRequest(request.scope, request.receive)
            await _guard(request)
            _check_task(request.app.state.service, self.path)
            if request.method == "POST":
                await request.json()
            return await handler(request)
        return checked


_GENERATIVE = {api.COMPLETIONS: True, api.CHAT: True, api.CLASSIFY: False}    # endpoints of one task only


def _check_task(service: Service, path: str) -> None:
    """404 for an endpoint of the other task (before its body is validated: the body is not the problem)."""
    if path in _GENERATIVE and _GENERATIVE[path] != service.generative:
        if service.generative:
            raise ApiError(404, "this server generates text; use /v1/completions or /v1/chat/completions",
                           code="wrong_endpoint")
        raise ApiError(404, "this server classifies; use POST /v1/classify", code="wrong_endpoint")


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        endpoint = request.scope.get("route").path if request.scope.get("route") else request.url.path
        error = schema.validation_error(exc.errors(), exc.body, endpoint, request.app.state.service.settings)
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                         type="invalid_request_error" if exc.status_code < 500 else "internal_error")
        return JSONResponse(error.body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        error = ApiError(500, f"internal error ({type(exc).__name__})", type="internal_error", code="internal_error")
        return JSONResponse(error.body(), status_code=500)


def _routes(app: FastAPI, service: Service) -> None:
    v1 = APIRouter(route_class=_V1Route, strict_content_type=False)

    @app.get("/health")
    async def health() -> JSONResponse:
        status = "draining" if app.state.draining else "ok"
        return JSONResponse({"status": status, "task": service.task, "adapters": len(service.adapters)},
                            status_code=503 if app.state.draining else 200)

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(service.metrics.render(), media_type=telemetry.CONTENT_TYPE)

    @app.get("/", include_in_schema=False)
    async def playground() -> HTMLResponse:
        page = resources.files("loralab.serving").joinpath("static/playground.html").read_text(encoding="utf-8")
        return HTMLResponse(page)

    @v1.get("/v1/models")
    async def models() -> JSONResponse:
        return JSONResponse({"object": "list", "data": service.model_cards()})

    @v1.post("/v1/completions")
    async def completions(request: Request, body: CompletionRequest) -> Response:
        return await _generation(request, service, await request.json(), chat=False)

    @v1.post("/v1/chat/completions")
    async def chat_completions(request: Request, body: ChatCompletionRequest) -> Response:
        return await _generation(request, service, await request.json(), chat=True)

    @v1.post("/v1/classify")
    async def classify(request: Request, body: ClassifyRequest) -> JSONResponse:
        return await _classify(request, service, await request.json())

    @v1.post("/v1/load_lora_adapter")
    async def load_lora_adapter(request: Request, body: LoadLoraAdapterRequest) -> JSONResponse:
        checked = await request.json()
        name = api.adapter_name_field(checked)
        path = api.path_field(checked, "lora_path")
        info = await service.load_adapter(name, path)
        return JSONResponse({"status": "loaded", "lora_name": name, "rank": info.rank, "task": info.task})

    @v1.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(request: Request, body: UnloadLoraAdapterRequest) -> JSONResponse:
        name = api.adapter_name_field(await request.json())
        await service.unload_adapter(name)
        return JSONResponse({"status": "unloaded", "lora_name": name})

    app.include_router(v1)


# ------------------------------------------------------------------------------------------------
# Requests that wait on the engine
# ------------------------------------------------------------------------------------------------
async def _wait_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _next_event(sink: EventSink, disconnect: asyncio.Task) -> tuple | None:
    """The next event for this request, or None when its client went away first."""
    getter = asyncio.ensure_future(sink.get())
    try:
        done, _ = await asyncio.wait({getter, disconnect}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not getter.done():
            getter.cancel()
    return getter.result() if getter in done else None


class _Tracker:
    """Bookkeeping of one request: the Pin on its adapter (released when it is done), latency and status
    metrics."""

    def __init__(self, service: Service, endpoint: str, model: str, pin: Pin):
        self.service, self.endpoint, self.model, self.pin = service, endpoint, service.metric_label(model), pin
        self.start = time.monotonic()
        self.first_token: float | None = None

    def token(self) -> None:
        if self.first_token is None:
            self.first_token = time.monotonic()
            self.service.metrics.observe("loralab_time_to_first_token_seconds", self.first_token - self.start,
                                         {"model": self.model})

    def done(self, status: int) -> None:
        self.pin.release()
        labels = {"model": self.model}
        self.service.metrics.inc("loralab_requests_total", {"endpoint": self.endpoint, "status": str(status), **labels})
        self.service.metrics.observe("loralab_request_seconds", time.monotonic() - self.start, labels)


async def _generation(request: Request, service: Service, body: dict, chat: bool) -> Response:
    req = api.generation_request(body, chat, service.settings)
    pin = await service.acquire(req.model)    # admitted (loaded from the store if need be): stays until released
    try:
        return await _generate(request, service, req, pin)
    except BaseException:
        pin.release()                         # idempotent: the paths below may have released it already
        raise


async def _generate(request: Request, service: Service, req: api.GenerationRequest, pin: Pin) -> Response:
    prompt_ids = await run_in_threadpool(service.encode_prompts, list(req.prompts), req.messages, req.max_tokens,
                                         req.max_tokens_field)
    prompts = [ids for ids in prompt_ids for _ in range(req.n)]            # choice index = prompt·n + j
    params = [req.sampling(i % req.n, req.max_tokens) for i in range(len(prompts))]
    job = GenerationJob(api.new_id("cmpl" if not req.chat else "chatcmpl"), pin.adapter, prompts, params,
                        EventSink(asyncio.get_running_loop()))
    endpoint = "/v1/chat/completions" if req.chat else "/v1/completions"
    tracker = _Tracker(service, endpoint, req.model, pin)
    disconnect = asyncio.ensure_future(_wait_disconnect(request))
    run = _Run(service, req, job, tracker, disconnect, prompt_tokens=sum(len(ids) for ids in prompt_ids))
    status = 200
    try:
        service.engine.submit(job)
        first = await run.next()
        if req.stream:
            return _RunStream(run, first)
        return JSONResponse(await run.collect())
    except ApiError as exc:
        status = exc.status
        raise
    except BaseException:
        status = 499                        # cancelled (the server is stopping or the client left)
        raise
    finally:
        if not req.stream or status != 200:
            run.close(status)


class _RunStream(StreamingResponse):
    """A generation's server-sent events; the run is closed (its rows cancelled, its Pin released) however
    the response ends, even when the stream never started (the client left before the first byte)."""

    def __init__(self, run: "_Run", first: tuple):
        super().__init__(run.stream(first), media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.run = run

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.run.close(499)               # a no-op when the stream itself closed the run


class _Run:
    """One generation request's events: its choices' texts, finish reasons and token counts."""

    def __init__(self, service: Service, req: api.GenerationRequest, job: GenerationJob, tracker: _Tracker,
                 disconnect: asyncio.Task, prompt_tokens: int):
        self.service, self.req, self.job, self.tracker, self.disconnect = service, req, job, tracker, disconnect
        self.prompt_tokens = prompt_tokens
        choices = len(job.prompts)
        self.texts, self.reasons, self.tokens = [""] * choices, [None] * choices, [0] * choices
        self.logprobs: list[list[api.TokenLogprob]] = [[] for _ in range(choices)]
        self.token_chars = [0] * choices           # length of each choice's token texts laid end to end
        self.closed = False

    @property
    def finished(self) -> bool:
        return all(r is not None for r in self.reasons)

    async def next(self) -> tuple:
        """The next event; raises ApiError for an error event, and 499 (client closed) on disconnect."""
        event = await _next_event(self.job.sink, self.disconnect)
        if event is None:
            raise ApiError(499, "the client closed the connection")
        if event[0] == "error":
            raise event[1]
        _, index, out = event
        self.tracker.token()
        if self.req.logprobs is not None:
            entry = self._logprob(out)
            self.logprobs[index].append(entry)
            self.token_chars[index] += len(entry.text)
        self.texts[index] += out.text
        self.tokens[index] = out.completion_tokens
        if out.finished:
            self.reasons[index] = out.finish_reason
        return event

    def _logprob(self, out) -> api.TokenLogprob:
        """A StepOutput's logprobs with each token id as its text (decoded alone)."""
        decode = self.service.tokenizer.decode
        return api.TokenLogprob(decode([out.token_id]), out.logprob,
                                tuple((decode([token]), logprob) for token, logprob in out.top_logprobs))

    def usage(self) -> dict:
        return api.usage(self.prompt_tokens, sum(self.tokens))

    async def collect(self) -> dict:
        while not self.finished:
            await self.next()
        choices = [{"index": i, "text": t, "finish_reason": r, "logprobs": lp}
                   for i, (t, r, lp) in enumerate(zip(self.texts, self.reasons, self.logprobs))]
        return api.completion_object(self.req, self.job.job_id, choices, self.usage())

    async def stream(self, first: tuple):
        status = 499                          # until [DONE] is out: a client gone mid-stream closes the generator
        try:
            sent_role: set[int] = set()
            event = first
            while True:
                _, index, out = event
                token = self.logprobs[index][-1:] if self.req.logprobs is not None else None
                offset = self.token_chars[index] - (len(token[0].text) if token else 0)
                chunk = api.chunk_object(self.req, self.job.job_id, index, out.text,
                                         out.finish_reason if out.finished else None, first=index not in sent_role,
                                         logprobs=token, text_offset=offset)
                sent_role.add(index)
                yield api.sse(chunk)
                if self.finished:
                    break
                event = await self.next()
            if self.req.include_usage:
                yield api.sse(api.usage_chunk(self.req, self.job.job_id, self.usage()))
            yield api.sse("[DONE]")
            status = 200
        except ApiError as exc:               # a failed step mid-stream: an error event, then the end
            status = exc.status
            if exc.status != 499:
                yield api.sse(exc.body())
        finally:
            self.close(status)

    def close(self, status: int) -> None:
        if self.closed:
            return
        self.closed = True
        self.disconnect.cancel()
        if not self.finished:
            self.service.engine.cancel(self.job.job_id)
        self.tracker.done(status)
        completion = sum(self.tokens)
        labels = {"model": self.tracker.model}
        self.service.metrics.inc("loralab_generation_tokens_total", labels, completion)
        if status == 200:
            self.service.metrics.inc("loralab_prompt_tokens_total", labels, self.prompt_tokens)


async def _classify(request: Request, service: Service, body: dict) -> JSONResponse:
    req = api.classify_request(body, service.settings)
    if req.model == service.base_name:
        raise api.bad_request(f"{req.model!r} is the base model, whose classifier head is untrained (each adapter "
                              "carries its own trained head and labels); send an adapter's name as 'model'",
                              param="model")
    with await service.acquire(req.model) as pin:   # released on every exit path; the labels come from the Pin
        return await _classify_pinned(request, service, req, pin)


async def _classify_pinned(request: Request, service: Service, req: api.ClassifyRequest, pin: Pin) -> JSONResponse:
    features = await run_in_threadpool(service.encode_inputs, pin, req.inputs)
    job = ClassifyJob(pin.adapter, features, EventSink(asyncio.get_running_loop()))
    tracker = _Tracker(service, "/v1/classify", req.model, pin)
    disconnect = asyncio.ensure_future(_wait_disconnect(request))
    status = 200
    try:
        service.engine.submit(job)
        event = await _next_event(job.sink, disconnect)
        if event is None:
            status = 499
            return JSONResponse({}, status_code=499)
        if event[0] == "error":
            raise event[1]
    except ApiError as exc:
        status = exc.status
        raise
    finally:
        disconnect.cancel()
        tracker.done(status)
    labels = service.labels_of(pin)
    data = [_classification(i, value, labels) for i, value in enumerate(event[1])]
    tokens = sum(len(f["input_ids"]) for f in features)
    service.metrics.inc("loralab_classified_inputs_total", {"model": tracker.model}, len(features))
    return JSONResponse({"id": api.new_id("cls"), "object": "classification", "created": int(time.time()),
                         "model": req.model, "data": data, "usage": api.usage(tokens, 0)})


def _classification(index: int, value, labels) -> dict:
    if labels.regression:
        return {"index": index, "value": labels.value(value)}   # in the labels' units (LabelMap.value)
    best = max(range(len(value)), key=value.__getitem__)
    return {"index": index, "label": labels.names[best], "probs": dict(zip(labels.names, value))}
