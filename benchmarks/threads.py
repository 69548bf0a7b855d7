"""Thread settings on a shared machine: decoding tokens/s idle and beside a competing busy process.

    python -m benchmarks.threads                 # 3 settings × (idle, busy), 4 alternating slices of 15 s each
    python -m benchmarks.threads --quick         # 2 slices of 6 s: a smoke run

Each setting runs in its own process (OpenMP reads OMP_WAIT_POLICY once, when torch loads it):
  `threads=N wait=default`   torch's OpenMP as shipped (GNU libgomp spins a while before sleeping)
  `threads=N wait=passive`   OMP_WAIT_POLICY=PASSIVE, what `loralab serve` sets: waiting threads sleep at once
  `threads=1`                one thread: nothing to wait for
The workload is the server's: SmolLM2-135M-Instruct, 8 adapters of r = 8, 16 rows decoding greedily in one
mixed-adapter BatchDecoder, 32 new tokens each, refilled as rows finish, for the slice's seconds. The busy
phase runs `python -c "while True: pass"` (`--busy` copies) beside it; idle and busy slices alternate, so the
other jobs of a shared machine weigh on both alike. Tokens/s per phase and the busy/idle ratio are printed;
compare ratios within one run only.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUSY = [sys.executable, "-c", "while True: pass"]


@dataclass(frozen=True)
class Setting:
    """One thread setting: torch threads and OMP_WAIT_POLICY (None: unset, OpenMP's default)."""
    threads: int
    wait: str | None = None

    @property
    def label(self) -> str:
        return f"threads={self.threads}" + (f" wait={self.wait.lower()}" if self.wait else
                                            (" wait=default" if self.threads > 1 else ""))

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
        if self.wait:
            env["OMP_WAIT_POLICY"] = self.wait
        return {**env, "PYTHONPATH": str(REPO)}


def ratio(busy: float, idle: float) -> float:
    """busy/idle tokens/s (nan when idle measured nothing)."""
    return busy / idle if idle > 0 else float("nan")


def table(results: dict[str, dict[str, float]]) -> str:
    lines = ["| setting | idle tokens/s | with a busy process | busy / idle |", "|---|---|---|---|"]
    for label, r in results.items():
        lines.append(f"| {label} | {r['idle']:.1f} | {r['busy']:.1f} | {ratio(r['busy'], r['idle']):.2f} |")
    return "\n".join(lines)


def worker(threads: int, slices: int, seconds: float, busy: int) -> dict[str, float]:
    """In this process: load the model and time alternating idle and busy slices; {phase: tokens/s}."""
    import torch

    from benchmarks.mixed import MixedConfig, load_base, with_adapters

    import loralab
    from loralab.generation import BatchDecoder, SamplingParams
    from loralab.models import load_tokenizer

    torch.set_num_threads(threads)
    config = MixedConfig("smollm2", adapters=8)
    model = with_adapters(load_base(config), config)
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    names = loralab.list_adapters(model)
    prompt = tokenizer("Write one short sentence about the sea.")["input_ids"]
    rows: dict[int, str] = {}

    def context(ids):
        return loralab.per_row_adapters(model, [rows[i] for i in ids])
    decoder = BatchDecoder(model, tokenizer, max_batch_size=16, forward_context=context)
    counter = iter(range(10**9))

    def refill() -> None:
        while len(decoder.row_ids) + len(decoder.waiting_ids) < 16:
            rid = next(counter)
            rows[rid] = names[rid % len(names)]
            decoder.add(rid, prompt, SamplingParams(max_new_tokens=32, min_new_tokens=32))

    tokens = {"idle": 0, "busy": 0}
    spent = {"idle": 0.0, "busy": 0.0}
    refill()
    for _ in range(3):                                    # warm-up steps
        decoder.step()
    for turn in range(slices):
        for phase in ("idle", "busy"):
            hogs = [subprocess.Popen(BUSY) for _ in range(busy if phase == "busy" else 0)]
            try:
                time.sleep(0.5 if hogs else 0)             # let the hogs start spinning
                end = time.monotonic() + seconds
                start = time.monotonic()
                while time.monotonic() < end:
                    refill()
                    tokens[phase] += len(decoder.step())          # one token per running row
                spent[phase] += time.monotonic() - start
            finally:
                for hog in hogs:
                    hog.kill()
                    hog.wait()
    return {phase: tokens[phase] / spent[phase] for phase in tokens}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 slices of 6 s per phase: a smoke run")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="threads of the multi-thread "
                        "settings (default: the cores, what torch picks)")
    parser.add_argument("--busy", type=int, default=1, help="busy processes in the busy phase (default 1)")
    parser.add_argument("--slices", type=int, help="idle/busy alternations (default 4, quick 2)")
    parser.add_argument("--seconds", type=float, help="seconds per slice (default 15, quick 6)")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "threads-latest.json"))
    args = parser.parse_args(argv)
    slices, seconds = args.slices or (2 if args.quick else 4), args.seconds or (6.0 if args.quick else 15.0)
    if args.worker is not None:
        print(json.dumps(worker(args.worker, slices, seconds, args.busy)), flush=True)
        return 0
    settings = [Setting(args.threads), Setting(args.threads, "PASSIVE"), Setting(1)]
    results: dict = {}
    load = os.getloadavg()
    for setting in settings:
        print(f"{setting.label} ...", file=sys.stderr, flush=True)
        cmd = [sys.executable, "-m", "benchmarks.threads", "--worker", str(setting.threads), "--slices", str(slices),
               "--seconds", str(seconds), "--busy", str(args.busy)]
        done = subprocess.run(cmd, env=setting.env(), cwd=REPO, capture_output=True, text=True, check=True)
        results[setting.label] = json.loads(done.stdout.strip().splitlines()[-1])
    text = table(results)
    print(text)
    print(f"\nload average (1, 5, 15 min) at start {load}, at end {os.getloadavg()}; {os.cpu_count()} cores; "
          f"{slices} × {seconds:g} s per phase, {args.busy} busy process(es)")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"results": results, "load_average": load, "table": text}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
