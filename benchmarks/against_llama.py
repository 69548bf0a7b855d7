"""`loralab serve` against llama.cpp's `llama-server` on the same CPU, the same GGUF base and the same adapters.

    python benchmarks/serve_bench.py --against llama.cpp            # 45 s phases, 1,000 adapters on disk
    python benchmarks/serve_bench.py --against llama.cpp --quick    # 10 s phases, 100 on disk: a smoke run

Both servers get the builtin SmolLM2-135M-Instruct Q4_1 GGUF (loralab de-quantizes it to fp32 once; llama.cpp
runs Q4_1), the same random r = 8 adapters on q_proj/v_proj (alpha 16), the same threads, the same closed-loop
clients and prompts, greedy completions of `max_tokens` tokens, streamed with usage. Both servers run at
once (the idle one waits on its socket); each load runs on one, then on the other, so a shared machine's
changing load hits both alike (who goes first alternates), after an unrecorded 5 s warm-up on 8
adapters each. Loads: the base model, 1 adapter, 8 adapters (requests spread over them), `distinct` of the
adapters on disk (uniform), and the 8-adapter load again beside a competing busy process
(`python -c "while True: pass"`). Each prints tokens/s, requests/s, p50/p99 latency and p50 time to first
token. llama.cpp's base load goes to a second llama-server started without adapters: requests naming no
adapter on one holding 1,000 ran at a seventh of its speed. `--loralab-quantize int8` serves loralab's base
int8 (llama.cpp runs Q4_1 either way). `--loads 8 busy` runs only those loads (keys: LOAD_KEYS) and
`--repeats N` each of them N times per server, alternating who goes first (rows "<load> #k"): the spread of one
load across phases of one run.

Adapters: loralab folders under a temporary --adapter-root (loralab names them per request, loaded on first
use); for llama.cpp each folder is converted to a GGUF adapter — by loralab's exporter (`loralab export --to
gguf`, loralab/formats/gguf_adapter.py; the default: fast for 1,000) or by llama.cpp's own
`convert_lora_to_gguf.py` from the build's source (`--converter llama.cpp`, one Python process per adapter,
with the de-quantized base folder as --base) — and given to llama-server with one `--lora` each and
`--lora-init-without-apply`; a request names its adapter as `"lora": [{"id": i, "scale": 1}]` (adapters not
listed get scale 0: the base). llama-server gets one slot per client (`-np`), 256 tokens of context each.

llama-server comes from benchmarks/llama_cpp.py (built into loralab's cache on first use; `--no-build` skips
llama.cpp when it is not built). Only 127.0.0.1 is contacted.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASE = "smollm2-135m-instruct"
BASE_ONLY = "llama.cpp, no adapters"   # the llama-server the base load goes to
BUSY = [sys.executable, "-c", "while True: pass"]
PROMPTS = [f"Write one short sentence about {topic}." for topic in (
    "the sea", "mountains", "a red bicycle", "coffee", "winter", "a library", "trains", "the moon", "bread",
    "a small dog", "rain", "music", "a garden", "the city at night", "chess", "a lighthouse")]


@dataclass(frozen=True)
class Config:
    """One comparison: sizes, load and the servers' shared settings."""
    on_disk: int = 1000            # adapters written (the store's folders; llama.cpp loads all of them)
    distinct: int = 100            # the store load spreads requests over the first `distinct`
    clients: int = 16
    seconds: float = 45.0
    max_tokens: int = 32
    threads: int = 2
    r: int = 8
    alpha: float = 16.0
    seed: int = 0
    converter: str = "loralab"     # or "llama.cpp"
    quantize: str | None = None    # loralab serve --quantize (e.g. int8: llama.cpp runs Q4_1); None: fp32
    only: tuple[str, ...] = ()     # LOAD_KEYS of the loads to run (empty: all)
    repeats: int = 1               # each load this many times per server (rows "<load> #k")

    def loads(self) -> list["Load"]:
        every = {"base": Load("base model", 0), "1": Load("1 adapter", 1), "8": Load("8 adapters", 8),
                 "store": Load(f"{self.distinct} of {self.on_disk} adapters", self.distinct),
                 "busy": Load("8 adapters, busy process", 8, busy=True)}
        return [load for key, load in every.items() if not self.only or key in self.only]


LOAD_KEYS = ("base", "1", "8", "store", "busy")    # --loads: base, 1 adapter, 8, the store's, 8 beside a busy process


@dataclass(frozen=True)
class Load:
    label: str
    adapters: int                  # requests spread uniformly over adapters 0..n-1 (0: the base model)
    busy: bool = False


@dataclass
class Tally:
    """One phase's requests: latencies and times to first token (seconds), tokens, errors, wall time."""
    latency: list[float] = field(default_factory=list)
    first_token: list[float] = field(default_factory=list)
    tokens: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    wall: float = 0.0

    def summary(self) -> dict:
        done = len(self.latency)
        return {"requests": done, "errors": self.errors, "tokens_per_s": self.tokens / self.wall if self.wall else 0.0,
                "requests_per_s": done / self.wall if self.wall else 0.0, "p50_s": percentile(self.latency, 50),
                "p99_s": percentile(self.latency, 99), "ttft_p50_s": percentile(self.first_token, 50),
                "error_samples": self.error_samples[:3]}


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile by nearest rank (nan for no values)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered), max(1, math.ceil(q / 100 * len(ordered)))) - 1]


def adapter_name(i: int) -> str:
    return f"a{i:04d}"


def request_body(server: str, adapter: int | None, prompt: str, max_tokens: int) -> dict:
    """The /v1/completions body for adapter number `adapter` (None: the base) on `server`
    ("loralab": the adapter's folder name as the model; "llama.cpp": its --lora index in "lora")."""
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    if server == "loralab":
        return {**body, "model": BASE if adapter is None else adapter_name(adapter)}
    return {**body, "model": BASE, "lora": [] if adapter is None else [{"id": adapter, "scale": 1.0}]}


def llama_server_command(server: Path, gguf: Path, loras: Sequence[Path], threads: int, clients: int,
                         port: int, context_per_client: int = 256) -> list[str]:
    """llama-server on 127.0.0.1:port: the base, every adapter loaded unapplied, one slot per client."""
    cmd = [str(server), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-t", str(threads),
           "-tb", str(threads), "-np", str(clients), "-c", str(clients * context_per_client), "-ngl", "0",
           "--no-webui", "--log-disable"]
    for lora in loras:
        cmd += ["--lora", str(lora)]
    return [*cmd, "--lora-init-without-apply"] if loras else cmd


def loralab_command(root: Path, threads: int, clients: int, port: int, max_adapters: int,
                    quantize: str | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "loralab", "serve", "--model", BASE, "--adapter-root", str(root), "--port", str(port),
           "--threads", str(threads), "--max-batch-size", str(max(32, clients)), "--max-queue", "1024",
           "--max-adapters", str(max_adapters), "--max-cold-loads-per-second", "1000", "--log-level", "warning"]
    return [*cmd, "--quantize", quantize] if quantize else cmd


def table(results: dict[str, dict[str, dict]]) -> str:
    """Markdown: one row per load, both servers side by side, loralab's tokens/s over llama.cpp's."""
    lines = ["| load | llama.cpp tokens/s | req/s | p50 / p99 s | TTFT p50 s | loralab tokens/s | req/s | "
             "p50 / p99 s | TTFT p50 s | loralab / llama.cpp |", "|---|---|---|---|---|---|---|---|---|---|"]
    labels = list(next(iter(results.values())))
    for label in labels:
        cells = []
        for server in ("llama.cpp", "loralab"):
            r = results.get(server, {}).get(label)
            cells += ["–"] * 4 if r is None else [
                f"{r['tokens_per_s']:.1f}" + (f" ({r['errors']} errors)" if r["errors"] else ""),
                f"{r['requests_per_s']:.2f}", f"{r['p50_s']:.2f} / {r['p99_s']:.2f}", f"{r['ttft_p50_s']:.2f}"]
        ours, theirs = results.get("loralab", {}).get(label), results.get("llama.cpp", {}).get(label)
        ratio = f"{ours['tokens_per_s'] / theirs['tokens_per_s']:.2f}×" if ours and theirs and \
            theirs["tokens_per_s"] else "–"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------
def write_adapters(root: Path, config: Config, log: Callable[[str], None]) -> Path:
    """config.on_disk random adapters as loralab folders root/a0000, ...; returns the base's fp32 folder."""
    import torch

    import loralab
    from loralab.models import load_model, resolve_model_source

    source = resolve_model_source(BASE)
    model = load_model(BASE).eval()
    loralab.inject(model, loralab.LoraConfig(r=config.r, alpha=config.alpha, targets=["q_proj", "v_proj"]), adapter="x")
    log(f"writing {config.on_disk} adapters ...")
    for i in range(config.on_disk):
        generator = torch.Generator().manual_seed(config.seed + 100 + i)
        with torch.no_grad():
            for _, layer in loralab.lora_layers(model):
                f = layer.lora_adapters["x"]
                f.A.normal_(0, 0.05, generator=generator)
                f.B.normal_(0, 0.05, generator=generator)
        path = root / adapter_name(i)
        loralab.save_adapter(model, path, adapter="x")
        (path / "loralab-task.json").write_text(json.dumps({"task": "causal-lm"}))
    return Path(source.folder)


def convert(root: Path, out: Path, count: int, base_folder: Path, converter: str, build,
            log: Callable[[str], None]) -> list[Path]:
    """GGUF adapters of root/a0000.. a{count-1} in out/, by loralab's exporter or llama.cpp's converter."""
    from transformers import AutoConfig

    import loralab
    from loralab.formats.gguf_adapter import write_gguf_adapter

    out.mkdir(parents=True, exist_ok=True)
    config = AutoConfig.from_pretrained(base_folder)
    paths = []
    log(f"converting {count} adapters to GGUF with {converter}'s converter ...")
    for i in range(count):
        folder, target = root / adapter_name(i), out / f"{adapter_name(i)}.gguf"
        if converter == "llama.cpp":
            subprocess.run([sys.executable, str(build.lora_converter), "--base", str(base_folder), "--outfile",
                            str(target), "--outtype", "f32", str(folder)], check=True, capture_output=True,
                           env={**os.environ, "PYTHONPATH": str(build.source / "gguf-py")})
        else:
            write_gguf_adapter(loralab.read_adapter(folder), config, target)
        paths.append(target)
    return paths


# ------------------------------------------------------------------------------------------------
# Servers and clients
# ------------------------------------------------------------------------------------------------
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def running(cmd: list[str], port: int, env: dict | None = None, timeout: float = 900):
    """A server process until /health answers 200; stopped with SIGTERM (then killed) on exit."""
    import httpx

    log_file = tempfile.TemporaryFile()
    process = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient() as client:
            while True:
                if process.poll() is not None:
                    log_file.seek(0)
                    raise RuntimeError(f"{cmd[0]} exited: {log_file.read()[-2000:].decode(errors='replace')}")
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(url + "/health")).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{cmd[0]} did not start in {timeout:g} s")
                await asyncio.sleep(0.5)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log_file.close()


async def one_request(client, body: dict, tally: Tally) -> None:
    """One streamed completion into `tally`. A kept-alive connection the server closed before answering
    (cpp-httplib closes after a number of requests per connection) is retried once, timed from the retry."""
    import httpx

    for attempt in (1, 2):
        try:
            return await _one_request(client, body, tally, retry=attempt == 1)
        except httpx.RemoteProtocolError:
            continue


async def _one_request(client, body: dict, tally: Tally, retry: bool) -> None:
    import httpx

    start = time.monotonic()
    first, tokens, chunks = None, None, 0
    try:
        async with client.stream("POST", "/v1/completions", json=body) as r:
            if r.status_code != 200:
                raise RuntimeError(f"{r.status_code} {(await r.aread())[:300]!r}")
            async for line in r.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                event = json.loads(line[6:])
                if event.get("usage"):
                    tokens = event["usage"].get("completion_tokens", tokens)
                if any(c.get("text") for c in event.get("choices") or ()):
                    chunks += 1
                    if first is None:
                        first = time.monotonic() - start
    except httpx.RemoteProtocolError as exc:
        if retry and first is None:
            raise
        tally.errors += 1
        tally.error_samples.append(repr(exc)[:300])
        return
    except Exception as exc:  # noqa: BLE001 - counted and sampled
        tally.errors += 1
        tally.error_samples.append(repr(exc)[:300])
        return
    tally.latency.append(time.monotonic() - start)
    tally.first_token.append(first if first is not None else tally.latency[-1])
    tally.tokens += tokens if tokens is not None else chunks


async def phase(url: str, server: str, load: Load, config: Config) -> Tally:
    """config.clients closed-loop clients for config.seconds (beside a busy process when load.busy)."""
    import httpx

    tally = Tally()
    end = time.monotonic() + config.seconds
    hog = subprocess.Popen(BUSY) if load.busy else None

    async def client_loop(index: int) -> None:
        rng = random.Random(config.seed * 1000 + index)
        async with httpx.AsyncClient(base_url=url, timeout=600) as client:
            while time.monotonic() < end:
                adapter = rng.randrange(load.adapters) if load.adapters else None
                await one_request(client, request_body(server, adapter, rng.choice(PROMPTS), config.max_tokens), tally)
    started = time.monotonic()
    try:
        await asyncio.gather(*(client_loop(i) for i in range(config.clients)))
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    tally.wall = time.monotonic() - started
    return tally


async def compare(config: Config, build, log: Callable[[str], None]) -> dict:
    """Both servers through every load; {server: {load label: summary}}."""
    results: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        base_folder = write_adapters(root, config, log)
        servers: list[tuple[str, list[str], dict | None, int]] = []
        port = free_port()
        servers.append(("loralab", loralab_command(root, config.threads, config.clients, port,
                                                   max(64, config.distinct + 8), config.quantize),
                        {**os.environ, "PYTHONPATH": str(REPO)}, port))
        if build is not None:
            from loralab.models import builtin_model_dir

            loras = convert(root, Path(tmp) / "gguf", config.on_disk, base_folder, config.converter, build, log)
            port = free_port()
            servers.append(("llama.cpp", llama_server_command(build.server, Path(builtin_model_dir(BASE)), loras,
                                                              config.threads, config.clients, port), None, port))
            # the base load goes to a llama-server holding no adapters: with 1,000 loaded, llama.cpp's requests
            # naming none ran at a seventh of its speed (docs/serving.md), not what a base-only user sees
            port = free_port()
            servers.append((BASE_ONLY, llama_server_command(build.server, Path(builtin_model_dir(BASE)), [],
                                                            config.threads, config.clients, port), None, port))
        async with contextlib.AsyncExitStack() as stack:
            urls = {}
            for server, cmd, env, port in servers:
                log(f"starting {server} ...")
                urls[server] = await stack.enter_async_context(running(cmd, port, env))
            warm = Config(**{**vars(config), "seconds": min(5.0, config.seconds)})
            for server, url in urls.items():            # not recorded: first requests, caches, adapter loads
                warm_load = Load("warm-up", 0 if server == BASE_ONLY else 8)
                log(f"{server}: warm-up, {warm_load.adapters or 'no'} adapters, {warm.seconds:g} s ...")
                await phase(url, "llama.cpp" if server == BASE_ONLY else server, warm_load, warm)
            turns = [(load, k) for load in config.loads() for k in range(config.repeats)]
            for i, (load, k) in enumerate(turns):     # both servers per load, back to back (who goes first
                order = [(server, urls[BASE_ONLY] if server == "llama.cpp" and not load.adapters and BASE_ONLY in urls
                          else url) for server, url in urls.items() if server != BASE_ONLY]
                label = load.label if config.repeats == 1 else f"{load.label} #{k + 1}"
                for server, url in order[::-1] if i % 2 else order:   # alternates): shared load hits both alike
                    log(f"{server}: {label}, {config.clients} clients for {config.seconds:g} s ...")
                    summary = (await phase(url, server, load, config)).summary()
                    results.setdefault(server, {})[label] = summary
                    log(f"  {summary['tokens_per_s']:.1f} tokens/s, {summary['requests']} requests, "
                        f"{summary['errors']} errors {summary['error_samples'][:1]}")
    return results


def main(args, log=print) -> int:
    """Entry from serve_bench.py --against llama.cpp: `args` holds quick, threads, clients, seconds,
    converter, no_build, on_disk, distinct, json."""
    from benchmarks import llama_cpp
    from benchmarks.run import write_json

    quick = args.quick
    config = Config(on_disk=args.on_disk or (100 if quick else 1000), distinct=args.distinct or (20 if quick else 100),
                    clients=args.clients, seconds=args.seconds or (10.0 if quick else 45.0), threads=args.threads,
                    converter=args.converter, quantize=getattr(args, "loralab_quantize", None),
                    only=tuple(getattr(args, "loads", None) or ()), repeats=getattr(args, "repeats", 1) or 1)
    build = llama_cpp.find_build()
    if build is None and not args.no_build:
        build = llama_cpp.build(log=log)
    if build is None:
        log("llama.cpp is not built (--no-build): loralab's side only")
    load = os.getloadavg()
    results = asyncio.run(compare(config, build, log))
    text = table(results)
    print(text)
    print(f"\nload average (1, 5, 15 min) at start {load}, at end {os.getloadavg()}; {os.cpu_count()} cores; "
          f"{config.threads} thread(s) each, {config.clients} clients, {config.seconds:g} s per load, max_tokens "
          f"{config.max_tokens}, {config.on_disk} adapters on disk, GGUF adapters by {config.converter}'s converter, "
          f"loralab base {config.quantize or 'fp32'}, llama.cpp base Q4_1 (its base load: a llama-server without "
          f"adapters)")
    write_json(Path(args.json), {"config": vars(args), "results": results, "table": text, "load_average": load})
    return 0
