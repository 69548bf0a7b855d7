"""loralab vs PEFT on all-MiniLM-L6-v2: training step, SST-2 throughput and time to accuracy, forward
latency, adapter switch/load, peak memory. Prints a markdown table and writes the raw numbers as JSON.

    python benchmarks/run.py            # the full run (about 8 minutes on 2 idle CPU cores, estimated)
    python benchmarks/run.py --quick    # fewer rounds and steps (about 3 minutes): a smoke check

See benchmarks/README.md for what each row measures and docs/benchmarks.md for results.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):           # run as a script: make `benchmarks` and `loralab` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks import suites  # noqa: E402

SECTIONS = ("machine", "step", "sst2", "forward", "adapters", "memory")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer rounds and training steps")
    p.add_argument("--model", default=None, help="model folder (default: all-MiniLM-L6-v2 from its package)")
    p.add_argument("--data", default=None, help="folder with SST-2 train.tsv and dev.tsv "
                                                "(default: ../shared/data/glue/SST-2 next to the repo)")
    p.add_argument("--json", default=str(Path(__file__).parent / "results" / "latest.json"),
                   help="where to write the raw results")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    p.add_argument("--compile", action="store_true", help="also time loralab's step under torch.compile")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--rounds", type=int, default=None, help="timing rounds (default 10, quick 3)")
    p.add_argument("--sst2-steps", type=int, default=None, help="SST-2 training steps per library "
                                                                "(default 300, quick 40)")
    p.add_argument("--train-limit", type=int, default=None, help="use only the first N SST-2 train examples")
    p.add_argument("--dev-limit", type=int, default=None, help="use only the first N SST-2 dev examples")
    p.add_argument("--memory-steps", type=int, default=3)
    p.add_argument("--memory-child", choices=suites.MEMORY_VARIANTS, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def make_setup(args: argparse.Namespace) -> suites.Setup:
    data = Path(args.data) if args.data else suites.REPO.parent / "shared" / "data" / "glue" / "SST-2"
    return suites.Setup(model_dir=args.model or suites.default_model_dir(), data_dir=data, compile=args.compile)


def run_all(args: argparse.Namespace, log=print) -> dict:
    """Run the chosen sections; returns everything measured (what goes into the JSON)."""
    setup = make_setup(args)
    rounds = args.rounds or (3 if args.quick else 10)
    steps = args.sst2_steps or (40 if args.quick else 300)
    only = set(args.only or SECTIONS)
    results: dict = {"config": {"model": setup.model_dir, "r": setup.r, "alpha": setup.alpha,
                                "targets": list(setup.targets), "trained_head": list(setup.head),
                                "batch": args.batch, "seq": args.seq, "rounds": rounds, "sst2_steps": steps,
                                "threads": torch.get_num_threads(), "quick": args.quick},
                     "versions": versions()}
    started = time.perf_counter()

    def section(name, fn):
        if name in only:
            t0 = time.perf_counter()
            log(f"[{name}] ...")
            results[name] = fn()
            log(f"[{name}] done in {time.perf_counter() - t0:.0f} s")

    section("machine", lambda: suites.matmul_gflops(rounds=max(rounds, 5)))
    gflops = results.get("machine", {}).get("gflops_median")
    section("step", lambda: suites.training_step(setup, args.batch, args.seq, rounds, gflops=gflops))
    if "sst2" in only:
        data = suites.load_sst2(setup, args.train_limit, args.dev_limit)
        section("sst2", lambda: {
            "run": suites.sst2_training(setup, data, steps, eval_every=max(steps // 10, 5), batch=args.batch),
            "same_batches": suites.same_batches_throughput(setup, data, steps=max(steps // 10, 3), batch=args.batch)})
    section("forward", lambda: suites.forward_latency(setup, (1, args.batch), args.seq,
                                                      rounds={1: rounds * 10, args.batch: rounds}))
    section("adapters", lambda: suites.adapter_ops(setup, rounds=max(rounds * 2, 5)))
    section("memory", lambda: suites.peak_memory(setup, args.batch, args.seq, args.memory_steps))
    results["total_seconds"] = time.perf_counter() - started
    return results


def versions() -> dict:
    import peft
    import transformers

    import loralab
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "loralab": loralab.__version__, "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count()}


# ----------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------
COLUMNS = ("Benchmark", "loralab", "PEFT", "PEFT ÷ loralab", "Reference", "Notes")


def _fmt(value, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}{unit}"


def _ratio(peft, ll) -> str:
    return "—" if not ll or peft is None else f"{peft / ll:.2f}×"


def table_rows(results: dict) -> list[tuple[str, ...]]:
    """One tuple per row, in COLUMNS order. Times: lower is better, so PEFT ÷ loralab > 1 means loralab wins;
    for tokens/s the ratio is inverted (loralab ÷ PEFT shown the same way: > 1 means loralab wins)."""
    rows = []
    gflops = results.get("machine", {}).get("gflops_median")
    if "machine" in results:
        m = results["machine"]
        rows.append(("fp32 matmul throughput (GFLOP/s)", "", "", "", _fmt(m["gflops_median"]),
                     f"median of torch.mm {m['n']}×{m['n']}, {m['threads']} threads; best {_fmt(m['gflops_best'])}"))
    if "step" in results:
        s = results["step"]
        ms = s["median_ms"]
        shape = f"{s['batch']}×{s['seq']}"
        rows.append((f"Training step, {shape} tokens (ms)", _fmt(ms["loralab"]), _fmt(ms["peft"]),
                     _ratio(ms["peft"], ms["loralab"]), _fmt(ms["full"]) + " full FT",
                     f"LoRA {s['flops']['lora'] / 1e9:.1f} GFLOP, full FT {s['flops']['full'] / 1e9:.1f} GFLOP "
                     "(forward + backward matmuls, benchmarks/flops.py)"))
        if "roofline_fraction" in s:
            rf = s["roofline_fraction"]
            rows.append(("Training step, fraction of roofline", _fmt(100 * rf["loralab"], " %", 0),
                         _fmt(100 * rf["peft"], " %", 0), "", _fmt(100 * rf["full"], " %", 0) + " full FT",
                         f"roofline = FLOPs ÷ {gflops:.0f} GFLOP/s: LoRA {s['roofline_ms']['lora']:.0f} ms, "
                         f"full {s['roofline_ms']['full']:.0f} ms"))
        if "loralab_compiled" in ms:
            rows.append((f"Training step, {shape}, loralab + torch.compile (ms)", _fmt(ms["loralab_compiled"]),
                         _fmt(ms["peft"]), _ratio(ms["peft"], ms["loralab_compiled"]), "",
                         "whole model compiled (inductor); PEFT eager"))
    if "sst2" in results:
        run, same = results["sst2"]["run"], results["sst2"]["same_batches"]
        ll, pf = run["libraries"]["loralab"], run["libraries"]["peft"]
        rows.append(("SST-2 training throughput (real tokens/s)", _fmt(ll["tokens_per_s"], digits=0),
                     _fmt(pf["tokens_per_s"], digits=0), _ratio(ll["tokens_per_s"], pf["tokens_per_s"]), "",
                     f"loralab: length-grouped batches, {100 * ll['pad_fraction']:.0f} % pad; PEFT: random batches "
                     f"(HF Trainer default), {100 * pf['pad_fraction']:.0f} % pad; both pad to the batch's longest"))
        st = same["tokens_per_s"]
        rows.append(("SST-2 throughput, same grouped batches (real tokens/s)", _fmt(st["loralab"], digits=0),
                     _fmt(st["peft"], digits=0), _ratio(st["loralab"], st["peft"]), "",
                     f"{same['steps']} identical batches for both: the libraries alone"))
        rows.append((f"Time to {100 * run['threshold']:.1f} % dev accuracy (s)",
                     _fmt(ll["time_to_threshold_s"]), _fmt(pf["time_to_threshold_s"]),
                     _ratio(pf["time_to_threshold_s"], ll["time_to_threshold_s"]), "",
                     f"90 % of the best dev accuracy of the pair ({100 * run['best_accuracy']:.1f} %); training "
                     f"time only; {run['steps']} steps each, lr {run['lr']:g}; steps to reach: "
                     f"{ll['steps_to_threshold']} vs {pf['steps_to_threshold']}; best: "
                     f"{100 * ll['best_accuracy']:.1f} % vs {100 * pf['best_accuracy']:.1f} %"))
    if "forward" in results:
        f = results["forward"]
        for bs, ms in f["median_ms"].items():
            base = ms["base"]
            for tag in ("unmerged", "merged"):
                ll, pf = ms[f"loralab_{tag}"], ms[f"peft_{tag}"]
                rows.append((f"Forward, batch {bs}×{f['seq']}, LoRA {tag} (ms)", _fmt(ll, digits=2),
                             _fmt(pf, digits=2), _ratio(pf, ll), _fmt(base, digits=2) + " base",
                             f"vs base: loralab {100 * (ll / base - 1):+.1f} %, PEFT {100 * (pf / base - 1):+.1f} %"))
    if "adapters" in results:
        a = results["adapters"]
        rows.append(("Adapter switch on a merged model (ms)", _fmt(a["switch_ms"]["loralab"], digits=2),
                     _fmt(a["switch_ms"]["peft"], digits=2), _ratio(a["switch_ms"]["peft"], a["switch_ms"]["loralab"]),
                     "", "unmerge one adapter, merge another (loralab.set_adapter; PEFT unmerge/set/merge)"))
        rows.append(("Adapter load from disk (ms)", _fmt(a["load_ms"]["loralab"], digits=2),
                     _fmt(a["load_ms"]["peft"], digits=2), _ratio(a["load_ms"]["peft"], a["load_ms"]["loralab"]),
                     "", f"safetensors folder, {a['adapter_bytes'] / 1024:.0f} KiB; includes delete afterwards"))
    if "memory" in results:
        mem = results["memory"]
        rows.append(("Peak RSS, training (MiB)", _fmt(mem["loralab"]["peak_mib"], digits=0),
                     _fmt(mem["peft"]["peak_mib"], digits=0),
                     _ratio(mem["peft"]["peak_mib"], mem["loralab"]["peak_mib"]),
                     _fmt(mem["full"]["peak_mib"], digits=0) + " full FT",
                     "VmHWM of a fresh process (imports + model + steps); after loading: "
                     f"{mem['loralab']['loaded_mib']:.0f} / {mem['peft']['loaded_mib']:.0f} / "
                     f"{mem['full']['loaded_mib']:.0f} MiB"))
    return rows


def markdown_table(rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: Path, data: dict) -> None:
    """Atomic write: a temp file in the same folder, then os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=1, default=str)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_child:
        setup = make_setup(args)
        print(json.dumps(suites.memory_child(setup, args.memory_child, args.batch, args.seq, args.memory_steps)))
        return 0
    results = run_all(args, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    results["table"] = markdown_table(table_rows(results))
    write_json(Path(args.json), results)
    print(results["table"])
    print(f"\n{results['total_seconds']:.0f} s; raw numbers in {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
