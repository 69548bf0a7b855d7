"""Ragged steps against decode-then-prefill, in-process: `loralab serve`'s model thread without HTTP.

    python -m benchmarks.ragged                 # 3 loads × 2 paths, 3 rounds of 20 s each, 1 thread
    python -m benchmarks.ragged --quick         # 1 round of 5 s: a smoke run

The workload is the side-by-side's (benchmarks/against_llama.py): builtin SmolLM2-135M-Instruct in fp32 with
packed linears, 8 random r = 8 adapters on q_proj/v_proj (benchmarks/mixed.py), the side-by-side's 16 prompts,
greedy completions of at most 32 tokens that stop at EOS. 16 closed-loop "clients": one BatchDecoder of 16 rows
in which a new request is added the moment one finishes (its prompt and, for the 8-adapter load, its adapter
drawn at random), so requests join all the time, as under a server's load. Loads: base (no adapter), 1 adapter
(every request a0), 8 adapters (each request one of a0..a7). Paths: `ragged=False` (a decoding forward, then
the joining prompts' prefill forward: the path before) and `ragged=True` (one forward a step,
loralab/generation/ragged.py). Rounds alternate the paths' order.

Printed: generated tokens/s and requests/s per load and path (totals over the rounds), ragged / before, and
how many finished requests' tokens differ from the same request decoded alone (greedy: none should).
Compare ratios within one run only.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

if __package__ in (None, ""):           # run as a script: make `benchmarks` and `loralab` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.against_llama import PROMPTS  # noqa: E402
from benchmarks.decode import LOADS  # noqa: E402  (the same three loads as the packed-linears comparison)
from benchmarks.run import write_json  # noqa: E402

PATHS = {"decode, then prefill (before)": False, "ragged steps": True}


def adapter_for(load: str, rng: random.Random) -> str | None:
    return None if load == "base" else "a0" if load == "1 adapter" else f"a{rng.randrange(8)}"


def closed_loop(model, tokenizer, prompts: list[list[int]], load: str, ragged: bool, seconds: float, seed: int,
                packed, rows: int = 16, max_tokens: int = 32) -> tuple[dict, list[tuple]]:
    """`rows` requests always in flight for `seconds`; ({tokens, requests, seconds}, finished requests as
    (adapter, prompt index, tokens))."""
    from loralab.generation import BatchDecoder, SamplingParams
    from loralab.serving.engine import adapters_context

    rng = random.Random(seed)
    adapter_of: dict[int, tuple[str | None, int]] = {}
    decoder = BatchDecoder(model, tokenizer, max_batch_size=rows, packed=packed, ragged=ragged,
                           forward_context=lambda ids: adapters_context(model, [adapter_of[i][0] for i in ids]))
    counter = iter(range(10**9))

    def new_request() -> None:
        request = next(counter)
        adapter_of[request] = (adapter_for(load, rng), rng.randrange(len(prompts)))
        decoder.add(request, prompts[adapter_of[request][1]], SamplingParams(max_new_tokens=max_tokens))
    for _ in range(rows):
        new_request()
    tokens: dict[int, list[int]] = {}
    finished, generated = [], 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for out in decoder.step():
            generated += 1
            tokens.setdefault(out.request_id, []).append(out.token_id)
            if out.finished:
                finished.append((*adapter_of[out.request_id], tokens.pop(out.request_id)))
                new_request()
    return {"tokens": generated, "requests": len(finished), "seconds": time.perf_counter() - start}, finished


def alone(model, tokenizer, prompts: list[list[int]], adapter: str | None, index: int, packed,
          max_tokens: int = 32) -> list[int]:
    """One request decoded by itself (the reference a finished request's tokens must equal)."""
    from loralab.generation import BatchDecoder, SamplingParams
    from loralab.serving.engine import adapters_context

    decoder = BatchDecoder(model, tokenizer, packed=packed, ragged=False,
                           forward_context=lambda ids: adapters_context(model, [adapter] * len(ids)))
    decoder.add(0, prompts[index], SamplingParams(max_new_tokens=max_tokens))
    out: list[int] = []
    while decoder.has_work:
        out += [o.token_id for o in decoder.step()]
    return out


def table(results: dict) -> str:
    before, after = PATHS
    lines = [f"| load | {before} tokens/s | req/s | {after} tokens/s | req/s | ragged / before | requests checked "
             "| differing |", "|---|---|---|---|---|---|---|---|"]
    for load, r in results.items():
        b, a = r[before], r[after]
        lines.append(f"| {load} | {b['tokens_per_s']:.1f} | {b['requests_per_s']:.2f} | {a['tokens_per_s']:.1f} | "
                     f"{a['requests_per_s']:.2f} | {a['tokens_per_s'] / b['tokens_per_s']:.2f}× | "
                     f"{b['checked'] + a['checked']} | {b['differing'] + a['differing']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 5 s per load and path")
    parser.add_argument("--rounds", type=int, help="alternating rounds (default 3, quick 1)")
    parser.add_argument("--seconds", type=float, help="seconds per load, path and round (default 20, quick 5)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--loads", nargs="+", choices=LOADS, default=list(LOADS))
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "ragged-latest.json"))
    args = parser.parse_args(argv)
    rounds, seconds = args.rounds or (1 if args.quick else 3), args.seconds or (5.0 if args.quick else 20.0)
    torch.set_num_threads(args.threads)
    from benchmarks.mixed import MixedConfig, load_base, with_adapters

    from loralab.generation.packed import PackedLinears
    from loralab.models import load_tokenizer

    load_avg = os.getloadavg()
    config = MixedConfig("smollm2", adapters=8)
    model = with_adapters(load_base(config), config)
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    prompts = [tokenizer(p)["input_ids"] for p in PROMPTS]
    packed = PackedLinears(model)
    totals = {load: {path: {"tokens": 0, "requests": 0, "seconds": 0.0, "checked": 0, "differing": 0}
                     for path in PATHS} for load in args.loads}
    references: dict[tuple, list[int]] = {}
    with torch.inference_mode():
        for turn in range(rounds):
            for load in args.loads:
                for path in (list(PATHS) if turn % 2 == 0 else list(PATHS)[::-1]):
                    print(f"round {turn + 1}/{rounds}, {load}, {path} ...", file=sys.stderr, flush=True)
                    counts, finished = closed_loop(model, tokenizer, prompts, load, PATHS[path], seconds,
                                                   seed=turn, packed=packed)
                    total = totals[load][path]
                    for key in ("tokens", "requests", "seconds"):
                        total[key] += counts[key]
                    for adapter, index, tokens in finished:
                        key = (adapter, index)
                        if key not in references:
                            references[key] = alone(model, tokenizer, prompts, adapter, index, packed)
                        total["checked"] += 1
                        total["differing"] += tokens != references[key]
    results = {load: {path: {**t, "tokens_per_s": t["tokens"] / t["seconds"],
                             "requests_per_s": t["requests"] / t["seconds"]} for path, t in paths.items()}
               for load, paths in totals.items()}
    text = table(results)
    print(text)
    print(f"\n{args.threads} thread(s), 16 rows, {rounds} round(s) of {seconds:g} s per load and path; load average "
          f"at start {load_avg}, at end {os.getloadavg()}; compare ratios within one run only")
    write_json(Path(args.json), {"results": results, "table": text, "threads": args.threads, "rounds": rounds,
                                 "seconds": seconds, "load_average_start": load_avg,
                                 "load_average_end": os.getloadavg()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
