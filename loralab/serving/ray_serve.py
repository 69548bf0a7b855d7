"""`loralab serve` on Ray Serve: the same app in N replicas, requests routed to a replica that has their adapter.

    loralab serve --ray --replicas 2 --model smollm2-135m-instruct --adapter-root /srv/adapters
    serve run loralab.serving.ray_serve:app model=smollm2-135m-instruct adapter-root=/srv/adapters replicas=2

Two deployments (the shape of Ray Serve's own LLM apps):
- `AdapterReplica` (N replicas): one Service each (base model, adapters, engine) and its FastAPI app from
  serving.app, unchanged: the same endpoints, validation, errors, streaming and metrics. Its multiplexed
  loader (`@serve.multiplexed`, keyed by adapter name) makes the adapter resident through the Service's
  store, so Ray knows which replica holds which adapter.
- `Router` (the ingress): OpenAI clients name the adapter in the body's "model", which Ray's HTTP proxy does
  not read, so the router reads it (after the API key, within --max-body-bytes) and forwards the HTTP
  request with `multiplexed_model_id` = that name: Ray sends it to a replica that has the adapter resident,
  else to one that will load it. Base-model requests carry no id (any replica). The reply (status,
  headers, body chunks, streamed) comes back unchanged.

Adapters come from --adapter at start (every replica) or --adapter-root by name (loaded on first use by the
replica Ray picks, evicted by its store's LRU); /v1/load_lora_adapter and /v1/unload_lora_adapter would reach
one replica only, so on Ray they answer 400. /v1/models, /health and /metrics answer for one replica.
Ray is imported only here (the optional `ray` extra).
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import torch
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

import ray
from ray import serve

from loralab.errors import LoraLabError
from loralab.runtime.load import parse_adapter_specs
from loralab.serving import api
from loralab.serving.api import ApiError
from loralab.serving.app import authorize, create_app, read_limited_body
from loralab.serving.service import Service
from loralab.serving.settings import ServeSettings

REPLICA_HEADER = "x-loralab-replica"          # which replica answered (for tests and debugging)
APP_NAME = "loralab"
HOT_LOADING = (api.LOAD, api.UNLOAD)


class AdapterReplica:
    """One replica: a Service and its app. `handle_http` runs one forwarded HTTP request through the app and
    yields its ASGI messages; `resident` is the multiplexed loader (wrapped per deployment in `deployment`)."""

    def __init__(self, settings: ServeSettings):
        torch.set_num_threads(settings.threads or 1)
        self.service = Service.start(settings)
        self.app = create_app(self.service)
        self.replica = serve.get_replica_context().replica_id.unique_id

    def base_name(self) -> str:
        return self.service.base_name

    async def load(self, model_id: str) -> str:
        """Make `model_id` resident through the Service's store (an adapter given at start: a no-op)."""
        pin = await self.service.acquire(model_id)
        pin.release()
        return model_id

    async def handle_http(self, scope: dict, body: bytes) -> AsyncIterator[dict]:
        model_id = serve.get_multiplexed_model_id()
        if model_id:
            try:
                await self.resident(model_id)
            except ApiError:
                pass                      # the app answers it (404, 400, 429) exactly as one process would
        async for message in run_asgi(self.app, scope, body):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()),
                                                  (REPLICA_HEADER.encode(), self.replica.encode())]}
            yield message


async def run_asgi(app, scope: dict, body: bytes) -> AsyncIterator[dict]:
    """The ASGI messages `app` sends for one HTTP request (`scope`, the whole `body`). The request's client is
    the caller: when the caller stops reading (it went away), the app receives http.disconnect and is given
    a moment to close its run (releasing its rows) before it is cancelled."""
    messages: asyncio.Queue = asyncio.Queue()
    gone = asyncio.Event()
    delivered = False

    async def receive() -> dict:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        await messages.put(message)

    task = asyncio.ensure_future(app(scope, receive, send))
    task.add_done_callback(lambda done: (done.cancelled() or done.exception(), messages.put_nowait(None)))
    try:
        while (message := await messages.get()) is not None:
            yield message
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                break
    finally:
        gone.set()
        if not task.done():
            await asyncio.wait({task}, timeout=10)
            task.cancel()


class Router:
    """The ingress: the key checked, the body read within --max-body-bytes, the request forwarded to a replica
    chosen by its "model" (Ray Serve's multiplexing)."""

    def __init__(self, replicas, settings: ServeSettings):
        self.replicas, self.settings = replicas, settings
        self._base_name: str | None = None

    async def __call__(self, request: Request) -> Response:
        try:
            body = await read_limited_body(request, self.settings.max_body_bytes)
            if request.url.path.startswith("/v1/"):
                authorize(request.headers.get("authorization"), self.settings.api_key)
            if request.url.path in HOT_LOADING:
                raise api.bad_request(f"{request.url.path} is not available on Ray Serve: it would reach one "
                                      "replica; give adapters with --adapter at start or name them under "
                                      "--adapter-root (each replica loads them on first use)")
            model_id = await self._model_id(body)
        except ApiError as exc:
            return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)
        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
                 "http_version": request.scope.get("http_version", "1.1"), "method": request.method,
                 "scheme": request.url.scheme, "path": request.url.path, "raw_path": request.url.path.encode(),
                 "query_string": request.scope.get("query_string", b""), "root_path": "",
                 "headers": [(k, v) for k, v in request.scope["headers"]], "client": request.scope.get("client"),
                 "server": request.scope.get("server")}
        handle = self.replicas.options(stream=True, multiplexed_model_id=model_id)
        messages = handle.handle_http.remote(scope, body)
        try:
            start = await messages.__anext__()
        except Exception as exc:          # the replica failed before answering (died, or could not start)
            error = ApiError(503, f"no replica could answer this request ({type(exc).__name__}); retry it",
                             type="service_unavailable", code="replica_unavailable")
            return JSONResponse(error.body(), status_code=503)
        response = StreamingResponse(_bodies(messages), status_code=start["status"])
        response.raw_headers = [(bytes(k), bytes(v)) for k, v in start.get("headers", ())]
        return response

    async def _model_id(self, body: bytes) -> str:
        """The adapter the body names ("" for the base model or a body that names none: any replica)."""
        try:
            model = json.loads(body).get("model") if body else None
        except (ValueError, AttributeError, RecursionError):
            return ""                     # not a JSON object: the replica's app answers the 400
        if not isinstance(model, str):
            return ""
        if self._base_name is None:
            self._base_name = await self.replicas.base_name.remote()
        return "" if model == self._base_name else model


async def _bodies(messages) -> AsyncIterator[bytes]:
    """The body chunks of a replica's messages; the replica's run is cancelled when the client goes first."""
    finished = False
    try:
        async for message in messages:
            if message["type"] == "http.response.body" and message.get("body"):
                yield message["body"]
        finished = True
    finally:
        if not finished:
            messages.cancel()


def deployment(settings: ServeSettings, replicas: int = 1, replica_cpus: float = 1.0):
    """The Ray Serve application: `replicas` AdapterReplica copies (each reserving `replica_cpus` of Ray's CPUs;
    torch runs settings.threads, default 1, threads in each) behind a Router. Each replica's multiplexing
    cache holds --max-adapters adapters, as its store does."""
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise LoraLabError(f"--replicas must be a positive integer, got {replicas!r}")

    class _Replica(AdapterReplica):
        @serve.multiplexed(max_num_models_per_replica=settings.max_adapters)
        async def resident(self, model_id: str) -> str:
            return await self.load(model_id)

    replica = serve.deployment(_Replica, name="AdapterReplica", num_replicas=replicas,
                               ray_actor_options={"num_cpus": replica_cpus},
                               max_ongoing_requests=max(settings.max_queue, settings.max_batch_size))
    router = serve.deployment(Router, name="Router", ray_actor_options={"num_cpus": 0},
                              max_ongoing_requests=max(settings.max_queue, 100))
    return router.bind(replica.bind(settings), settings)


# ---- `serve run loralab.serving.ray_serve:app key=value ...` ------------------------------------------------
_INTS = {"port", "max_adapters", "max_lora_rank", "max_batch_size", "max_queue", "max_body_bytes", "max_prompt_tokens",
         "max_tokens", "default_max_tokens", "max_n", "max_inputs", "threads", "adapter_memory"}
_FLOATS = {"max_cold_loads_per_second", "unload_timeout"}


def settings_from_options(options: dict[str, str]) -> tuple[ServeSettings, int, float]:
    """(ServeSettings, replicas, replica CPUs) from `serve run`'s key=value arguments: ServeSettings' fields
    spelled as `loralab serve`'s flags (adapter-root=..., max-adapters=...; adapter=NAME=PATH,NAME=PATH),
    plus replicas=N and replica-cpus=X."""
    names = {f.name for f in dataclasses.fields(ServeSettings)}
    values: dict[str, Any] = {}
    replicas, cpus = 1, 1.0
    for key, raw in options.items():
        name = key.replace("-", "_").removeprefix("__")
        try:
            if name == "replicas":
                replicas = int(raw)
            elif name == "replica_cpus":
                cpus = float(raw)
            elif name in ("adapter", "adapters"):
                values["adapters"] = parse_adapter_specs([s for s in str(raw).split(",") if s])
            elif name not in names:
                raise LoraLabError(f"unknown option {key!r} for loralab.serving.ray_serve:app; it takes `loralab "
                                   "serve`'s flags as key=value (model=..., adapter-root=..., replicas=N)")
            elif name in _INTS:
                values[name] = int(raw)
            elif name in _FLOATS:
                values[name] = float(raw)
            elif name == "adapter_root":
                values[name] = Path(raw)
            elif name in ("packed_linears", "ragged_steps"):
                flag = str(raw).strip().lower()
                if flag not in ("true", "false", "1", "0", "yes", "no"):
                    raise LoraLabError(f"option {key!r} must be true or false, got {raw!r}")
                values[name] = flag in ("true", "1", "yes")
            else:
                values[name] = raw
        except LoraLabError:
            raise
        except ValueError:
            raise LoraLabError(f"option {key!r} must be a number, got {raw!r}") from None
    return ServeSettings(**values), replicas, cpus


def app(options: dict[str, str]):
    """The application builder `serve run loralab.serving.ray_serve:app model=... replicas=2` calls."""
    settings, replicas, cpus = settings_from_options(options)
    return deployment(settings, replicas, cpus)


def run(settings: ServeSettings, replicas: int, address: str | None = None) -> int:
    """`loralab serve --ray`: connect to the Ray cluster at `address` (None: start a local one, declaring at
    least replicas × threads CPUs so the replicas can all be placed), serve on settings.host:port until
    SIGINT/SIGTERM, then take the application down (and the local cluster with it)."""
    threads = settings.threads or 1
    local = {} if address else {"num_cpus": max(os.cpu_count() or 1, replicas * threads)}
    ray.init(address=address, ignore_reinit_error=True, log_to_driver=False, **local)
    signal.signal(signal.SIGTERM, signal.default_int_handler)     # SIGTERM ends it as Ctrl-C does
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        serve.run(deployment(settings, replicas, float(threads)), name=APP_NAME, route_prefix="/")
        print(f"loralab serve: {replicas} replica(s) on Ray Serve at http://{settings.host}:{settings.port}",
              file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        with contextlib.suppress(Exception):
            serve.delete(APP_NAME) if address else serve.shutdown()
        ray.shutdown()
    return 0
