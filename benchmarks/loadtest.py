"""Load test of `loralab serve` over loopback: a server process per base model, N concurrent clients.

Generation (SmolLM2-135M-Instruct, 8 adapters): every client loops, sending /v1/completions for a random
adapter and prompt (greedy, max_tokens tokens) until the time is up or the request budget is spent; every
answer is compared with the offline greedy output of its adapter (BatchDecoder with that adapter alone,
set_adapter). The same load then runs with all requests on one adapter, for the tokens/s ratio.
Classification (all-MiniLM-L6-v2, 8 adapters with their own heads): clients send /v1/classify with 1-4
texts; every probability is compared with the adapter's offline forward (within 1e-4).

Only 127.0.0.1 is contacted; request loops are bounded in count and time and stop by themselves.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from benchmarks.mixed import MixedConfig, load_base, with_adapters

import loralab

REPO = Path(__file__).resolve().parents[1]
PROMPTS = [f"Write one short sentence about {topic}." for topic in (
    "the sea", "mountains", "a red bicycle", "coffee", "winter", "a library", "trains", "the moon", "bread",
    "a small dog", "rain", "music", "a garden", "the city at night", "chess", "a lighthouse")]
TEXTS = ["what a lovely day", "this is terrible", "the movie was fine I guess", "I love the new design",
         "the service was slow and the food was cold", "absolutely wonderful", "not my taste", "meh",
         "best purchase ever", "I want my money back", "it works", "could be better"]


@dataclass(frozen=True)
class LoadConfig:
    clients: int = 16
    seconds: float = 120.0
    max_requests: int = 20_000
    max_tokens: int = 32
    adapters: int = 8
    max_batch_size: int = 32
    threads: int = 2
    seed: int = 0
    slices: int = 4            # generation: the 8-adapter and 1-adapter loads alternate in this many parts each
    packed_linears: bool = True    # False: the server runs with --no-packed-linears (benchmarks/decode.py --server)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def save_adapters(model, folder: Path, task: str, labels: list[str] | None = None) -> dict[str, Path]:
    from loralab.data.labels import LabelMap

    paths = {}
    for name in loralab.list_adapters(model):
        path = folder / name
        loralab.save_adapter(model, path, adapter=name)
        (path / "loralab-task.json").write_text(json.dumps({"task": task}))
        if labels:
            LabelMap(tuple(labels)).save(path / "labels.json")
        paths[name] = path
    return paths


class ServerProcess:
    """`python -m loralab serve` on a free loopback port; stopped with SIGTERM (graceful)."""

    def __init__(self, model: str, adapters: dict[str, Path], config: LoadConfig, task: str):
        self.port = free_port()
        args = [sys.executable, "-m", "loralab", "serve", "--model", model, "--task", task, "--port", str(self.port),
                "--max-batch-size", str(config.max_batch_size), "--threads", str(config.threads),
                "--max-queue", "1024", "--log-level", "warning"]
        if not config.packed_linears:
            args.append("--no-packed-linears")
        for name, path in adapters.items():
            args += ["--adapter", f"{name}={path}"]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.process = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True)
        self.url = f"http://127.0.0.1:{self.port}"

    async def wait_ready(self, timeout: float = 600) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the server exited: {self.process.stderr.read()[-2000:]}")
                try:
                    if (await client.get(self.url + "/health")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.5)
        raise RuntimeError("the server did not start in time")

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(120)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return -9


# ------------------------------------------------------------------------------------------------
# Offline references
# ------------------------------------------------------------------------------------------------
def offline_texts(model, tokenizer, adapter: str, prompts: list[str], max_tokens: int) -> list[str]:
    """Each prompt's greedy continuation with `adapter` alone (set_adapter), as the server's text."""
    from loralab.generation import BatchDecoder, SamplingParams

    loralab.set_adapter(model, adapter)
    decoder = BatchDecoder(model, tokenizer, max_batch_size=len(prompts))
    texts = {i: "" for i in range(len(prompts))}
    for i, prompt in enumerate(prompts):
        decoder.add(i, tokenizer(prompt)["input_ids"], SamplingParams(max_new_tokens=max_tokens))
    while decoder.has_work:
        for out in decoder.step():
            texts[out.request_id] += out.text
    return [texts[i] for i in range(len(prompts))]


def offline_probs(model, tokenizer, adapter: str, texts: list[str]) -> list[list[float]]:
    loralab.set_adapter(model, adapter)
    out = []
    with torch.inference_mode():
        for text in texts:
            out.append(torch.softmax(model(**tokenizer(text, return_tensors="pt")).logits[0], -1).tolist())
    return out


# ------------------------------------------------------------------------------------------------
# Clients
# ------------------------------------------------------------------------------------------------
@dataclass
class Tally:
    latencies: list[float]
    tokens: int = 0
    requests: int = 0
    errors: int = 0
    mismatches: int = 0
    wall: float = 0.0
    error_samples: list | None = None

    def add(self, other: "Tally") -> None:
        self.latencies += other.latencies
        for name in ("tokens", "requests", "errors", "mismatches", "wall"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.error_samples += other.error_samples or []

    def summary(self) -> dict:
        q = statistics.quantiles(self.latencies, n=100) if len(self.latencies) >= 2 else [float("nan")] * 99
        return {"requests": self.requests, "errors": self.errors, "mismatches": self.mismatches,
                "seconds": round(self.wall, 1), "requests_per_s": self.requests / self.wall,
                "tokens_per_s": self.tokens / self.wall, "p50_s": q[49], "p95_s": q[94], "p99_s": q[98],
                "error_samples": (self.error_samples or [])[:3]}


async def run_clients(url: str, config: LoadConfig, make_request, check) -> Tally:
    """config.clients loops sending make_request(rng) -> (endpoint, body, key) until time or budget ends;
    check(key, answer) -> (ok, tokens)."""
    import httpx

    tally = Tally(latencies=[], error_samples=[])
    budget = [config.max_requests]
    end = time.monotonic() + config.seconds

    async def client_loop(index: int) -> None:
        rng = random.Random(config.seed * 1000 + index)
        async with httpx.AsyncClient(base_url=url, timeout=300) as client:
            while time.monotonic() < end and budget[0] > 0:
                budget[0] -= 1
                endpoint, body, key = make_request(rng)
                start = time.monotonic()
                try:
                    r = await client.post(endpoint, json=body)
                    answer = r.json()
                    ok_status = r.status_code == 200
                except Exception as exc:  # noqa: BLE001 - counted as an error
                    ok_status, answer = False, {"error": repr(exc)}
                tally.latencies.append(time.monotonic() - start)
                tally.requests += 1
                if not ok_status:
                    tally.errors += 1
                    tally.error_samples.append(answer)
                    continue
                ok, tokens = check(key, answer)
                tally.tokens += tokens
                tally.mismatches += not ok

    started = time.monotonic()
    await asyncio.gather(*(client_loop(i) for i in range(config.clients)))
    tally.wall = time.monotonic() - started
    return tally


@contextlib.asynccontextmanager
async def serving(model, spec: str, config: LoadConfig, task: str, labels: list[str] | None = None):
    """The model's adapters saved to a temporary folder and served by a `loralab serve` process on `spec`;
    yields (server, results dict), and records the server's exit status (SIGTERM) in the results."""
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(spec, save_adapters(model, Path(tmp), task, labels), config, task)
        results: dict = {}
        try:
            await server.wait_ready()
            yield server, results
        finally:
            results["exit_status"] = server.stop()


def adapted(model_kind: str, config: LoadConfig):
    """(model with config.adapters random adapters, their names, tokenizer)."""
    from loralab.models import load_tokenizer

    mc = MixedConfig(model_kind, adapters=config.adapters, seed=config.seed)
    model = with_adapters(load_base(mc), mc)
    spec = "smollm2-135m-instruct" if model_kind == "smollm2" else "all-minilm-l6-v2"
    return model, loralab.list_adapters(model), load_tokenizer(spec), spec


async def generation_load(config: LoadConfig, log=print) -> dict:
    model, names, tokenizer, spec = adapted("smollm2", config)
    log("offline greedy references ...")
    with torch.inference_mode():
        reference = {(n, i): t for n in names
                     for i, t in enumerate(offline_texts(model, tokenizer, n, PROMPTS, config.max_tokens))}
    def check(key, answer):
        return answer["choices"][0]["text"] == reference[key], answer["usage"]["completion_tokens"]

    pools = {"8 adapters": names, "1 adapter": names[:1]}
    tallies = {label: Tally(latencies=[], error_samples=[]) for label in pools}
    part = replace(config, seconds=config.seconds / config.slices)
    async with serving(model, spec, config, "causal-lm") as (server, results):
        for turn in range(config.slices):          # the two loads alternate: the machine's load hits both alike
            for label, pool in pools.items():
                def make(rng, pool=pool):
                    adapter, i = rng.choice(pool), rng.randrange(len(PROMPTS))
                    return "/v1/completions", {"model": adapter, "prompt": PROMPTS[i], "temperature": 0,
                                               "max_tokens": config.max_tokens}, (adapter, i)
                log(f"generation load, {label}, part {turn + 1}/{config.slices}: {config.clients} clients for "
                    f"{part.seconds:g} s ...")
                tallies[label].add(await run_clients(server.url, replace(part, seed=config.seed + turn), make, check))
        results.update({label: tally.summary() for label, tally in tallies.items()})
        log(f"  {results}")
    return results


async def classification_load(config: LoadConfig, log=print) -> dict:
    model, names, tokenizer, spec = adapted("minilm", config)
    reference = {(n, t): p for n in names for t, p in zip(TEXTS, offline_probs(model, tokenizer, n, TEXTS))}
    async with serving(model, spec, config, "classification", labels=["no", "yes"]) as (server, results):
        def make(rng):
            adapter = rng.choice(names)
            texts = rng.sample(TEXTS, rng.randint(1, 4))
            return "/v1/classify", {"model": adapter, "input": texts}, (adapter, texts)

        def check(key, answer):
            adapter, texts = key
            ok = all(max(abs(a - b) for a, b in zip(item["probs"].values(), reference[(adapter, t)])) < 1e-4
                     for item, t in zip(answer["data"], texts))
            return ok, 0
        log(f"classification load: {config.clients} clients for {config.seconds:g} s ...")
        results.update((await run_clients(server.url, config, make, check)).summary())
        log(f"  {results}")
    return results
