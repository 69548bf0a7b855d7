"""The server's decoding loop in-process, before vs after: torch's default linear kernel vs oneDNN's packed
weights (loralab/generation/packed.py), in the same process, rounds alternating.

    python -m benchmarks.decode                  # 3 loads × 2 paths, 3 rounds of 48 requests, 1 thread
    python -m benchmarks.decode --quick          # 1 round of 16 requests: a smoke run
    python -m benchmarks.decode --profile        # also the top ops of 5 decoding steps on each path
    python -m benchmarks.decode --server 60      # `loralab serve` with and without --no-packed-linears instead

Before is this branch's starting point: torch's linear kernel and `per_row_adapters` walking the model's
modules around every forward (its cache dropped before each); after: packed linears and the walk kept
(loralab/adapters/per_row.py). The workload is `loralab serve`'s model thread without HTTP: builtin SmolLM2-135M-Instruct in fp32 with 8
random r = 8 adapters on q_proj/v_proj (benchmarks/mixed.py), one BatchDecoder with 16 rows, the side-by-side's
16 prompts (benchmarks/against_llama.py), greedy, exactly 32 new tokens per request; requests join as rows
finish (their prefill included in the time), each row's adapters through the engine's own
`adapters_context`. Loads: base (no adapter), 1 adapter (every row a0), 8 adapters (row i uses a(i mod 8)).
Printed: generated tokens/s per load and path, after/before, and whether every request's tokens were equal
on both paths. Other jobs on a shared machine weigh on both paths alike (rounds alternate); compare ratios
within one run only.

`--server SECONDS`: two `loralab serve` processes on loopback (benchmarks/loadtest.py), one with
`--no-packed-linears`, 16 closed-loop clients sending the same prompts greedily (32 tokens), the loads and
the servers alternating in slices for SECONDS per load and server in all; every answer is compared with the
offline greedy output of its adapter (or the base), as the load test does.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):           # run as a script: make `benchmarks` and `loralab` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.against_llama import PROMPTS  # noqa: E402
from benchmarks.run import write_json  # noqa: E402

LOADS = ("base", "1 adapter", "8 adapters")
PATHS = {"before (torch's kernel)": False, "after (packed)": True}


def names_for(load: str, rows: int) -> list[str | None]:
    """Each request's adapter under `load` (request i of `rows`)."""
    if load == "base":
        return [None] * rows
    return ["a0"] * rows if load == "1 adapter" else [f"a{i % 8}" for i in range(rows)]


def run_requests(model, tokenizer, prompts: list[list[int]], names: list[str | None], packed,
                 batch: int = 16, tokens: int = 32) -> tuple[float, int, list[list[int]]]:
    """Decode every prompt (request i with adapter names[i]) through one BatchDecoder; (seconds, generated
    tokens, each request's tokens)."""
    from loralab.adapters.per_row import ROW_MODULES_ATTR
    from loralab.generation import BatchDecoder, SamplingParams
    from loralab.serving.engine import adapters_context

    def context(ids):
        if not packed.enabled:                           # before: per_row_adapters walked the model every forward
            model.__dict__.pop(ROW_MODULES_ATTR, None)
        return adapters_context(model, [names[i] for i in ids])
    decoder = BatchDecoder(model, tokenizer, max_batch_size=batch, packed=packed, forward_context=context)
    for i, prompt in enumerate(prompts):
        decoder.add(i, prompt, SamplingParams(max_new_tokens=tokens, min_new_tokens=tokens))
    out: list[list[int]] = [[] for _ in prompts]
    start = time.perf_counter()
    while decoder.has_work:
        for step in decoder.step():
            out[step.request_id].append(step.token_id)
    return time.perf_counter() - start, sum(map(len, out)), out


def profile_steps(model, tokenizer, prompt: list[int], packed, steps: int = 5, rows: int = 16) -> str:
    """torch.profiler's top ops (self CPU time) of `steps` decoding steps of `rows` rows on adapter a0."""
    from torch.profiler import ProfilerActivity, profile

    from loralab.generation import BatchDecoder, SamplingParams
    from loralab.serving.engine import adapters_context

    decoder = BatchDecoder(model, tokenizer, max_batch_size=rows, packed=packed,
                           forward_context=lambda ids: adapters_context(model, ["a0"] * len(ids)))
    for i in range(rows):
        decoder.add(i, prompt, SamplingParams(max_new_tokens=100, min_new_tokens=100))
    for _ in range(4):                                   # prefill and a few steps
        decoder.step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            decoder.step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10)


async def server_ab(seconds: float, threads: int, slices: int, log) -> dict:
    """Generated tokens/s (and mismatches) of `loralab serve` with and without packed linears, per load."""
    import contextlib
    from dataclasses import replace

    from benchmarks import loadtest

    import loralab
    from loralab.generation import BatchDecoder, SamplingParams

    config = loadtest.LoadConfig(clients=16, threads=threads, seconds=seconds, slices=slices)
    model, names, tokenizer, spec = loadtest.adapted("smollm2", config)
    log("offline greedy references ...")
    with torch.inference_mode():
        reference = {(n, i): t for n in names[:8] for i, t in
                     enumerate(loadtest.offline_texts(model, tokenizer, n, loadtest.PROMPTS, config.max_tokens))}
        with loralab.disabled(model):
            decoder = BatchDecoder(model, tokenizer, max_batch_size=16)
            texts = {i: "" for i in range(len(loadtest.PROMPTS))}
            for i, prompt in enumerate(loadtest.PROMPTS):
                decoder.add(i, tokenizer(prompt)["input_ids"], SamplingParams(max_new_tokens=config.max_tokens))
            while decoder.has_work:
                for out in decoder.step():
                    texts[out.request_id] += out.text
        reference.update({(None, i): t for i, t in texts.items()})

    def check(key, answer):
        return answer["choices"][0]["text"] == reference[key], answer["usage"]["completion_tokens"]
    pools = {"base": [None], "1 adapter": names[:1], "8 adapters": names[:8]}
    tallies = {(path, load): loadtest.Tally(latencies=[], error_samples=[]) for path in PATHS for load in pools}
    part = replace(config, seconds=seconds / slices)
    async with contextlib.AsyncExitStack() as stack:
        servers = {path: (await stack.enter_async_context(loadtest.serving(
            model, spec, replace(config, packed_linears=on), "causal-lm")))[0] for path, on in PATHS.items()}
        for turn in range(slices):
            for load, pool in pools.items():
                for path in (list(PATHS) if turn % 2 == 0 else list(PATHS)[::-1]):
                    def make(rng, pool=pool):
                        adapter, i = rng.choice(pool), rng.randrange(len(loadtest.PROMPTS))
                        return "/v1/completions", {"model": adapter or spec, "prompt": loadtest.PROMPTS[i],
                                                   "temperature": 0, "max_tokens": config.max_tokens}, (adapter, i)
                    log(f"server, {load}, {path}, part {turn + 1}/{slices} ...")
                    tallies[path, load].add(await loadtest.run_clients(servers[path].url, replace(
                        part, seed=config.seed + turn), make, check))
    return {load: {path: tallies[path, load].summary() for path in PATHS} for load in pools}


def server_table(results: dict) -> str:
    before, after = PATHS
    lines = [f"| load | {before} tokens/s | {after} tokens/s | after / before | p50 / p99 s before | p50 / p99 s after "
             "| errors | mismatches |", "|---|---|---|---|---|---|---|---|"]
    for load, r in results.items():
        b, a = r[before], r[after]
        lines.append(f"| {load} | {b['tokens_per_s']:.1f} | {a['tokens_per_s']:.1f} | "
                     f"{a['tokens_per_s'] / b['tokens_per_s']:.2f}× | {b['p50_s']:.2f} / {b['p99_s']:.2f} | "
                     f"{a['p50_s']:.2f} / {a['p99_s']:.2f} | {b['errors'] + a['errors']} | "
                     f"{b['mismatches'] + a['mismatches']} |")
    return "\n".join(lines)


def table(results: dict) -> str:
    before, after = PATHS
    lines = [f"| load | {before} tokens/s | {after} tokens/s | after / before | same tokens |", "|---|---|---|---|---|"]
    for load, r in results.items():
        b, a = r["tokens_per_s"][before], r["tokens_per_s"][after]
        lines.append(f"| {load} | {b:.1f} | {a:.1f} | {a / b:.2f}× | {r['same_tokens']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 16 requests per load and path")
    parser.add_argument("--rounds", type=int, help="alternating rounds (default 3, quick 1)")
    parser.add_argument("--requests", type=int, help="requests per round (default 48, quick 16)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--loads", nargs="+", choices=LOADS, default=list(LOADS))
    parser.add_argument("--profile", action="store_true", help="print the top ops of 5 steps on each path")
    parser.add_argument("--server", type=float, metavar="SECONDS", help="the `loralab serve` comparison instead: "
                        "SECONDS per load and server")
    parser.add_argument("--slices", type=int, default=2, help="--server: alternations per load (default 2)")
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "decode-latest.json"))
    args = parser.parse_args(argv)
    rounds, requests = args.rounds or (1 if args.quick else 3), args.requests or (16 if args.quick else 48)
    torch.set_num_threads(args.threads)
    if args.server:
        import asyncio

        log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
        load_avg = os.getloadavg()
        results = asyncio.run(server_ab(args.server, args.threads, args.slices, log))
        text = server_table(results)
        print(text)
        write_json(Path(args.json), {"server": results, "table": text, "threads": args.threads,
                                     "load_average_start": load_avg, "load_average_end": os.getloadavg()})
        print(f"\n`loralab serve --threads {args.threads}`, 16 clients, {args.server:g} s per load and server in "
              f"{args.slices} slices; load average at start {load_avg}, at end {os.getloadavg()}; compare ratios "
              "within one run only")
        return 0
    from benchmarks.mixed import MixedConfig, load_base, with_adapters

    from loralab.generation.packed import PackedLinears
    from loralab.models import load_tokenizer

    load_avg = os.getloadavg()
    model = with_adapters(load_base(MixedConfig("smollm2", adapters=8)), MixedConfig("smollm2", adapters=8))
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    prompts = [tokenizer(PROMPTS[i % len(PROMPTS)])["input_ids"] for i in range(requests)]
    shared = {label: PackedLinears(model, enabled=on) for label, on in PATHS.items()}
    started = time.perf_counter()
    pack_start = time.perf_counter()                     # the first packed forward packs: timed apart
    run_requests(model, tokenizer, prompts[:1], [None], shared["after (packed)"], tokens=1)
    pack_s = time.perf_counter() - pack_start
    results: dict = {}
    for load in args.loads:
        names = names_for(load, requests)
        seconds = {label: [] for label in PATHS}
        count = {label: 0 for label in PATHS}
        outputs: dict = {}
        for turn in range(rounds):
            order = list(PATHS) if turn % 2 == 0 else list(PATHS)[::-1]
            for label in order:
                spent, n, out = run_requests(model, tokenizer, prompts, names, shared[label])
                seconds[label].append(spent)
                count[label] += n
                outputs[label] = out
        same = sum(a == b for a, b in zip(*outputs.values()))
        results[load] = {"tokens_per_s": {label: count[label] / sum(seconds[label]) for label in PATHS},
                         "seconds": seconds, "same_tokens": f"{same}/{requests}",
                         "median_round_s": {label: statistics.median(s) for label, s in seconds.items()}}
        print(f"{load}: {results[load]['tokens_per_s']}", file=sys.stderr, flush=True)
    text = table(results)
    print(text)
    if args.profile:
        for label, packed in shared.items():
            print(f"\n{label}: 5 decoding steps, 16 rows on a0\n" + profile_steps(model, tokenizer, prompts[0], packed))
    report = {"results": results, "table": text, "threads": args.threads, "rounds": rounds, "requests": requests,
              "first_packed_forward_s": pack_s, "packed_layers": shared["after (packed)"].layers,
              "packed_bytes": shared["after (packed)"].packed_bytes(), "load_average_start": load_avg,
              "load_average_end": os.getloadavg(), "total_seconds": time.perf_counter() - started}
    write_json(Path(args.json), report)
    print(f"\n{args.threads} thread(s), {rounds} round(s) of {requests} requests × 32 tokens per load and path, "
          "16 rows; "
          f"{report['packed_layers']} packed layers ({report['packed_bytes'] / 1e6:.0f} MB, first packed forward "
          f"{pack_s:.2f} s); load average at start {load_avg}, at end {report['load_average_end']}; compare ratios "
          "within one run only")
    return 0


if __name__ == "__main__":
    sys.exit(main())
