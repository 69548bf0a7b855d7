"""Putting an adapter on a served model, as the adapter store does between two decoding steps.

    python -m benchmarks.adapter_insert                                  # tiny random LLaMA, ~10 s
    python -m benchmarks.adapter_insert --model smollm2-135m-instruct    # SmolLM2-135M, r = 8 on q/v (60 layers)

An adapter file (r = 8 on q_proj and v_proj) is read once; then, `--rounds` times, it is inserted as a new
adapter (`insert_adapter`), made ready for decoding (`ready_for_serving`: eval mode, its per-row slots written;
the two are what the server's adapter store does on the model thread, `insert_for_serving`) and deleted again (`delete_adapter`, what an eviction does). The
model already holds `--resident` other adapters (each count a row of the table), as a server's does. Every
time is a median over the rounds, in milliseconds of wall time on one thread (the stall each cold load or
eviction puts on every running request), with the process's CPU milliseconds in parentheses: steadier than wall
time when other jobs share the machine.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import loralab  # noqa: E402
from loralab.adapters.operations import delete_adapter  # noqa: E402
from loralab.adapters.per_row import reserve_row_slots  # noqa: E402
from loralab.formats.peft import insert_adapter, read_adapter  # noqa: E402
from loralab.serving.service import insert_for_serving, ready_for_serving  # noqa: E402


def tiny_llama(layers: int = 4) -> torch.nn.Module:
    """A random LLaMA (hidden 64, `layers` layers) in eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=128, hidden_size=64, num_hidden_layers=layers, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=96, max_position_embeddings=128)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def measure(model: torch.nn.Module, residents: list[int], rounds: int, max_adapters: int = 64) -> list[dict]:
    """For each count of resident adapters: median insert, ready (eval + slots) and delete milliseconds."""
    folder = Path(tempfile.mkdtemp())
    loralab.inject(model, loralab.LoraConfig(r=8, alpha=16, targets=["q_proj", "v_proj"]), adapter="resident0")
    loralab.save_adapter(model, folder / "a", adapter="resident0")
    file = read_adapter(folder / "a")
    model.eval()
    reserve_row_slots(model, max_adapters)
    held, rows = 1, []
    for resident in residents:
        while held < resident:
            insert_for_serving(model, file, f"resident{held}")
            held += 1
        times: dict[str, list[float]] = {key: [] for key in KEYS}
        for i in range(rounds + 1):                     # the first round warms up
            t = [(time.perf_counter(), time.process_time())]
            insert_adapter(model, file, adapter=f"new{i}", trainable=False)
            t.append((time.perf_counter(), time.process_time()))
            ready_for_serving(model, f"new{i}")
            t.append((time.perf_counter(), time.process_time()))
            delete_adapter(model, f"new{i}")
            t.append((time.perf_counter(), time.process_time()))
            if i:
                for j, step in enumerate(("insert", "ready", "delete")):
                    times[step].append(1000 * (t[j + 1][0] - t[j][0]))
                    times[step + "_cpu"].append(1000 * (t[j + 1][1] - t[j][1]))
        rows.append({"resident": resident, **{key: statistics.median(v) for key, v in times.items()}})
    return rows


KEYS = ("insert", "ready", "delete", "insert_cpu", "ready_cpu", "delete_cpu")


def table(rows: list[dict]) -> str:
    """Wall ms, and in parentheses the process's CPU ms (steadier when other jobs share the cores)."""
    lines = ["| adapters already resident | insert ms | eval + slots ms | insert + eval + slots ms | delete ms |",
             "|---|---|---|---|---|"]
    for r in rows:
        cells = [(r["insert"], r["insert_cpu"]), (r["ready"], r["ready_cpu"]),
                 (r["insert"] + r["ready"], r["insert_cpu"] + r["ready_cpu"]), (r["delete"], r["delete_cpu"])]
        lines.append(f"| {r['resident']} | " + " | ".join(f"{wall:.1f} ({cpu:.1f})" for wall, cpu in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a model name or folder (default: a tiny random LLaMA)")
    parser.add_argument("--resident", type=int, nargs="+", default=[1, 63],
                        help="adapters already on the model, one table row each (default: 1 63)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.model is None:
        model, label = tiny_llama(), "tiny random LLaMA (4 layers, r = 8 on q/v: 8 adapted layers)"
    else:
        from loralab.models import load_model
        model, label = load_model(args.model, task="causal-lm"), f"{args.model} (r = 8 on q_proj, v_proj)"
    rows = measure(model, sorted(args.resident), args.rounds)
    print(f"{label}, median of {args.rounds} rounds, {args.threads} thread(s), wall ms (CPU ms):")
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
