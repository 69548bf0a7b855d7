"""Mixed-adapter batches and `loralab serve` under load: one command, tables on stdout, raw numbers as JSON.

    python benchmarks/serve_bench.py                 # everything (about 25 min on 2 busy cores)
    python benchmarks/serve_bench.py --quick         # fewer rounds, 20 s load phases: a smoke run
    python benchmarks/serve_bench.py --only mixed    # the in-process comparison only (or: --only server)
    python benchmarks/serve_bench.py --against llama.cpp [--quick]   # side by side with llama-server

`mixed` (benchmarks/mixed.py): 32 rows over 8 adapters, MiniLM classification forward and SmolLM2 decoding
steps: loralab mixed batch (per strategy) vs one adapter vs PEFT's adapter_names vs switching per sub-batch.
`server` (benchmarks/loadtest.py): a `loralab serve` process per base on 127.0.0.1, N concurrent clients,
every answer checked against its adapter's offline output. `--against llama.cpp` (benchmarks/against_llama.py):
`loralab serve` and llama.cpp's `llama-server` on the same GGUF base, adapters, threads, clients and prompts —
base, 1 adapter, 8 adapters, 100 of 1,000 adapters, and 8 adapters beside a busy process. Results:
docs/serving.md.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):           # run as a script: make `benchmarks` and `loralab` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks import against_llama, loadtest, mixed  # noqa: E402
from benchmarks.run import write_json  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", choices=["mixed", "server"], default=["mixed", "server"])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and 20 s load phases")
    parser.add_argument("--threads", type=int, default=2, help="torch threads, every variant and the servers")
    parser.add_argument("--rounds", type=int, help="timed rounds per variant (default 20, quick 5)")
    parser.add_argument("--seconds", type=float, help="seconds per load phase (default 120, quick 20)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--models", nargs="+", choices=["minilm", "smollm2"], default=["minilm", "smollm2"],
                        help="the in-process workloads to run")
    parser.add_argument("--against", choices=["llama.cpp"], help="compare `loralab serve` with llama-server "
                        "(benchmarks/against_llama.py) instead of the sections above")
    parser.add_argument("--converter", choices=["loralab", "llama.cpp"], default="loralab",
                        help="--against: who converts the adapters to GGUF (default: loralab export --to gguf)")
    parser.add_argument("--no-build", action="store_true", help="--against: skip llama.cpp when it is not built yet")
    parser.add_argument("--loralab-quantize", choices=["int8", "nf4"], help="--against: loralab serve --quantize "
                        "(default: the fp32 de-quantized base; llama.cpp runs the GGUF's Q4_1)")
    parser.add_argument("--on-disk", type=int, help="--against: adapters written (default 1000, quick 100)")
    parser.add_argument("--distinct", type=int, help="--against: the store load's adapters (default 100, quick 20)")
    parser.add_argument("--loads", nargs="+", choices=against_llama.LOAD_KEYS,
                        help="--against: only these loads (base, 1 adapter, 8, the store's, 8 beside a busy process)")
    parser.add_argument("--repeats", type=int, default=1, help="--against: each load this many times per server, "
                        "alternating (rows '<load> #k')")
    parser.add_argument("--json", help="raw numbers (default benchmarks/results/serve-latest.json, "
                        "--against: llama-latest.json)")
    args = parser.parse_args(argv)
    if args.json is None:
        args.json = str(Path(__file__).parent / "results" / ("llama-latest.json" if args.against else
                                                              "serve-latest.json"))
    return args


def mixed_table(results: dict) -> str:
    lines = ["| workload | variant | ms per call | rows/s | vs one adapter | vs PEFT mixed |", "|---|---|---|---|---|---|"]
    for workload, r in results.items():
        ms = r["ms"]
        for name, value in ms.items():
            one = ms["loralab one adapter"] / value
            peft = f"{ms['PEFT mixed'] / value:.2f}×" if "PEFT mixed" in ms else "–"
            lines.append(f"| {workload} | {name} | {value:.1f} | {r['rows_per_s'][name]:.0f} | {one:.2f}× | {peft} |")
    return "\n".join(lines)


def server_table(results: dict) -> str:
    lines = ["| load | requests | errors | mismatches | req/s | gen tokens/s | p50 s | p95 s | p99 s |",
             "|---|---|---|---|---|---|---|---|---|"]
    rows = [(f"generation, {k}", v) for k, v in results.get("generation", {}).items() if isinstance(v, dict)]
    if "classification" in results:
        rows.append(("classification, 8 adapters", results["classification"]))
    for label, r in rows:
        lines.append(f"| {label} | {r['requests']} | {r['errors']} | {r['mismatches']} | {r['requests_per_s']:.2f} | "
                     f"{r['tokens_per_s']:.1f} | {r['p50_s']:.2f} | {r['p95_s']:.2f} | {r['p99_s']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    if args.against:
        return against_llama.main(args, log)
    started = time.time()
    results: dict = {"load_average_start": os.getloadavg(), "threads": args.threads}
    if "mixed" in args.only:
        rounds = args.rounds or (5 if args.quick else 20)
        results["mixed"] = {m: mixed.measure(mixed.MixedConfig(m, rounds=rounds), log=log) for m in args.models}
        results["mixed_table"] = mixed_table(results["mixed"])
        print(results["mixed_table"], flush=True)
    if "server" in args.only:
        config = loadtest.LoadConfig(clients=args.clients, threads=args.threads,
                                     seconds=args.seconds or (20.0 if args.quick else 120.0))
        server = {"generation": asyncio.run(loadtest.generation_load(config, log)),
                  "classification": asyncio.run(loadtest.classification_load(config, log))}
        results["server"] = server
        results["server_table"] = server_table(server)
        print(results["server_table"], flush=True)
    results["load_average_end"] = os.getloadavg()
    results["total_seconds"] = time.time() - started
    write_json(Path(args.json), results)
    print(f"\nload average (1, 5, 15 min) at start {results['load_average_start']}, at end "
          f"{results['load_average_end']}; {results['total_seconds']:.0f} s; raw numbers in {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
