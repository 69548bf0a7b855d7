"""The adapter store under load, on a tiny random LLaMA (a quick check of the machinery, not of model speed).

    python benchmarks/serve_store.py --adapters 1000 --distinct 100            # uniform over 100 of 1,000
    python benchmarks/serve_store.py --adapters 1000 --distinct 1000 --zipf 1.1
    python benchmarks/serve_store.py --adapters 1000 --distinct 1                # all on one adapter
    python benchmarks/serve_store.py --suite [--quick]      # the four above (Zipf over all 1,000) in one run

`--suite` writes the folders once and runs each spread against a fresh server (nothing resident at start),
printing one table with each spread's requests/s against the one-adapter run of the same process.

Writes N adapter folders (r = 8 on q_proj/v_proj, random factors) under a temporary --adapter-root, serves the
base in-process with the store on, and sends --requests streamed greedy completions from --clients
concurrent clients, each naming an adapter drawn from the first --distinct (uniformly, or Zipf with --zipf S).
Prints the hit ratio, loads and evictions per second, the mean load time (read to on the model) and the
time to first token of requests whose adapter was resident when sent vs not (p50, p99). The SmolLM2 numbers
the issue asks for come from benchmarks/serve_bench.py's server phases.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

if __package__ in (None, ""):           # run as a script: make `loralab` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
import torch  # noqa: E402

import loralab  # noqa: E402
from loralab.serving.server import make_server  # noqa: E402
from loralab.serving.settings import ServeSettings  # noqa: E402
from loralab.testing import fill_adapter  # noqa: E402

WORDS = "the a cat dog sat ran on mat big small red blue and then it was good bad very not hello world".split()


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--adapters", type=int, default=1000, help="adapter folders on disk")
    parser.add_argument("--distinct", type=int, default=100, help="requests spread over the first N of them")
    parser.add_argument("--zipf", type=float, help="Zipf exponent over the distinct adapters (default: uniform)")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-adapters", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--suite", action="store_true", help="uniform over 100, uniform over all, Zipf over all, "
                        "one adapter: one table")
    parser.add_argument("--quick", action="store_true", help="--suite with 100 adapters on disk, 10 distinct, "
                        "80 requests: a smoke run")
    return parser.parse_args(argv)


SUITE = (("uniform over 100", 100, None), ("uniform over all", None, None), ("Zipf 1.1 over all", None, 1.1),
         ("one adapter", 1, None))


def suite_runs(adapters: int, quick: bool) -> list[tuple[str, int, float | None]]:
    """(label, distinct, zipf) of the suite's spreads over `adapters` folders (quick: 10 instead of 100)."""
    runs = []
    for label, distinct, zipf in SUITE:
        if distinct == 100 and quick:
            label, distinct = "uniform over 10", 10
        runs.append((label, min(distinct or adapters, adapters), zipf))
    return runs


def suite_table(rows: list[dict]) -> str:
    """Markdown table of suite results; throughput against the one-adapter row (same run)."""
    one = next((r["requests_per_s"] for r in rows if r["label"] == "one adapter"), float("nan"))
    lines = ["| spread | requests/s | vs one adapter | hit ratio | loads/s | evictions/s | mean load ms | "
             "first token resident p50 / p99 ms | first token cold p50 / p99 ms |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['requests_per_s']:.1f} | {r['requests_per_s'] / one:.2f}× | "
                     f"{r['hit_ratio']:.3f} | {r['loads_per_s']:.1f} | {r['evictions_per_s']:.1f} | "
                     f"{r['mean_load_ms']:.1f} | {r['resident']} | {r['cold']} |")
    return "\n".join(lines)


def write_files(folder: Path, adapters: int) -> tuple[Path, Path]:
    """A tiny LLaMA with a word-level tokenizer, and `adapters` folders of r = 8 adapters under root/."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<s>", "</s>", "<unk>", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", unk_token="<unk>")
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=96, max_position_embeddings=128, bos_token_id=1,
                         eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    base, root = folder / "base", folder / "root"
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    loralab.inject(model, loralab.LoraConfig(r=8, alpha=16, targets=["q_proj", "v_proj"]), adapter="x")
    for i in range(adapters):
        fill_adapter(model, "x", seed=i, std=0.3)
        path = root / f"customer-{i:04d}"
        loralab.save_adapter(model, path, adapter="x")
        (path / "loralab-task.json").write_text(json.dumps({"model": str(base), "task": "causal-lm"}))
    return base, root


def pick(rng: random.Random, distinct: int, zipf: float | None) -> int:
    if zipf is None:
        return rng.randrange(distinct)
    weights = [1.0 / (k + 1) ** zipf for k in range(distinct)]
    return rng.choices(range(distinct), weights)[0]


async def one_request(c: httpx.AsyncClient, model: str, max_tokens: int) -> float:
    """Seconds to the first streamed token."""
    start = time.monotonic()
    body = {"model": model, "prompt": "the cat sat on", "max_tokens": max_tokens, "temperature": 0, "stream": True}
    first = None
    async with c.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{model}: {r.status_code} {(await r.aread()).decode()}")
        async for line in r.aiter_lines():
            if first is None and line.startswith("data: {"):
                first = time.monotonic() - start
    return first


async def load(url: str, service, args: argparse.Namespace) -> dict[str, list[float]]:
    rng = random.Random(args.seed)
    names = [f"customer-{pick(rng, args.distinct, args.zipf):04d}" for _ in range(args.requests)]
    ttft: dict[str, list[float]] = {"resident": [], "cold": []}
    queue = iter(names)

    async def client() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=600) as c:
            for name in queue:
                kind = "resident" if name in service.adapters else "cold"
                ttft[kind].append(await one_request(c, name, args.max_tokens))
    await asyncio.gather(*(client() for _ in range(args.clients)))
    return ttft


def quantiles(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return f"p50 {1000 * statistics.median(ordered):.1f} ms, p99 {1000 * p99:.1f} ms ({len(values)})"


def p50_p99(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{1000 * statistics.median(ordered):.1f} / {1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]:.1f}"


def run_one(base: Path, root: Path, args: argparse.Namespace) -> dict:
    """One fresh in-process server with the store on root; the load of `args`; its numbers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = ServeSettings(model=str(base), adapter_root=root, max_adapters=args.max_adapters, port=port,
                             max_cold_loads_per_second=1e6, threads=args.threads)
    server, service = make_server(settings, log_level="error")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    started = time.monotonic()
    try:
        ttft = asyncio.run(load(f"http://127.0.0.1:{port}", service, args))
    finally:
        wall = time.monotonic() - started
        server.should_exit = True
        thread.join(30)
        service.stop(30)
    m = service.metrics
    loads, evictions = m.value("loralab_adapter_loads_total"), m.value("loralab_adapter_evictions_total")
    count = m.value("loralab_adapter_load_seconds")
    mean_load = 1000 * m.total("loralab_adapter_load_seconds") / count if count else 0.0
    return {"wall": wall, "requests_per_s": args.requests / wall, "hit_ratio": m.value("loralab_adapter_hit_ratio"),
            "loads": loads, "evictions": evictions, "loads_per_s": loads / wall, "evictions_per_s": evictions / wall,
            "mean_load_ms": mean_load, "ttft": ttft, "resident": p50_p99(ttft["resident"]), "cold": p50_p99(ttft["cold"])}


def suite(args: argparse.Namespace) -> int:
    if args.quick:
        args.adapters, args.requests = min(args.adapters, 100), min(args.requests, 80)
    with tempfile.TemporaryDirectory() as folder:
        started = time.monotonic()
        base, root = write_files(Path(folder), args.adapters)
        print(f"wrote {args.adapters} adapters in {time.monotonic() - started:.1f} s", flush=True)
        rows = []
        for label, distinct, zipf in suite_runs(args.adapters, args.quick):
            run_args = argparse.Namespace(**{**vars(args), "distinct": distinct, "zipf": zipf})
            print(f"{label} ...", file=sys.stderr, flush=True)
            rows.append({"label": label, **run_one(base, root, run_args)})
    print(f"{args.requests} requests per spread over {args.adapters} adapters on disk, {args.clients} clients, "
          f"--max-adapters {args.max_adapters}, {args.threads} thread(s), tiny random LLaMA:")
    print(suite_table(rows))
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.suite or args.quick:
        return suite(args)
    with tempfile.TemporaryDirectory() as folder:
        started = time.monotonic()
        base, root = write_files(Path(folder), args.adapters)
        print(f"wrote {args.adapters} adapters in {time.monotonic() - started:.1f} s")
        r = run_one(base, root, args)
    spread = f"Zipf {args.zipf} over {args.distinct}" if args.zipf else f"uniform over {args.distinct}"
    print(f"{args.requests} requests, {spread} of {args.adapters} adapters, {args.clients} clients, "
          f"--max-adapters {args.max_adapters}: {r['wall']:.1f} s, {r['requests_per_s']:.1f} requests/s")
    print(f"hit ratio {r['hit_ratio']:.3f}; loads {r['loads']:.0f} ({r['loads_per_s']:.1f}/s), "
          f"evictions {r['evictions']:.0f} ({r['evictions_per_s']:.1f}/s)")
    if r["mean_load_ms"]:
        print(f"mean load (read to on the model): {r['mean_load_ms']:.1f} ms")
    print(f"first token, adapter resident when sent: {quantiles(r['ttft']['resident'])}")
    print(f"first token, adapter not resident when sent: {quantiles(r['ttft']['cold'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
