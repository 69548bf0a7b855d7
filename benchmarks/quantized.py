"""Quantized frozen bases: one 384->1536 Linear, then whole LoRA training steps of all-MiniLM-L6-v2,
fp32 / bf16 / int8 / NF4 (loralab) beside PEFT fp32, PEFT bf16 and PEFT + bitsandbytes NF4, plus the memory
of the quantized weights. Prints markdown tables; writes the raw numbers as JSON.

    python benchmarks/quantized.py            # about 6 minutes on 2 quiet cores
    python benchmarks/quantized.py --quick    # fewer rounds: a smoke check

Timing: the variants of a table run in turn, round after round (the start rotates), after warm-up; the
tables show the median wall time and, beside it, the median CPU time of this process (less sensitive to
other processes on a shared machine, though not immune: they share caches and memory bandwidth).
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):           # run as a script: make `benchmarks` and `loralab` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks import suites  # noqa: E402

from loralab.quantization import get_scheme, quantize, quantized_memory  # noqa: E402

LAYER_SHAPE = (2048, 384, 1536)         # tokens, d_in, d_out: the probe's layer (an all-MiniLM-L6-v2 FFN up)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).norm() / b.detach().double().norm())


def timed_rounds(runs: dict[str, Callable[[], object]], rounds: int, warmup: int) -> dict[str, dict]:
    """suites.alternate's wall times per run, plus the process CPU time of each call."""
    cpu: dict[str, list[float]] = {name: [] for name in runs}

    def with_cpu(name, fn):
        def run():
            start = time.process_time()
            fn()
            cpu[name].append(time.process_time() - start)
        return run

    wall = suites.alternate({n: with_cpu(n, f) for n, f in runs.items()}, rounds, warmup)
    return {name: {"wall_ms": suites.median_ms(wall[name]), "cpu_ms": suites.median_ms(cpu[name][-rounds:]),
                   "wall_s": wall[name]} for name in runs}


# ----------------------------------------------------------------------------------------------
# One layer
# ----------------------------------------------------------------------------------------------
def _bnb_linear4bit(weight: torch.Tensor, bias: torch.Tensor, compute_dtype: torch.dtype) -> nn.Module:
    import bitsandbytes as bnb

    layer = bnb.nn.Linear4bit(weight.shape[1], weight.shape[0], quant_type="nf4", compress_statistics=False,
                              compute_dtype=compute_dtype)
    layer.load_state_dict({"weight": weight, "bias": bias})
    layer = layer.to("cpu")                 # bitsandbytes quantizes when the layer moves to its device
    layer.requires_grad_(False)
    return layer


def layer_variants(weight: torch.Tensor, bias: torch.Tensor) -> dict[str, nn.Module]:
    """name -> a frozen layer computing x·Wᵀ + b (fp32 in, fp32 out except the plain bf16 layer)."""
    fp32 = nn.Linear(weight.shape[1], weight.shape[0]).requires_grad_(False)
    fp32.weight.copy_(weight)
    fp32.bias.copy_(bias)
    out = {"fp32": fp32, "bf16": copy.deepcopy(fp32).to(torch.bfloat16),
           "int8 (no Wᵀ copy)": get_scheme("int8", transposed_copy=False).quantize_weight(weight, bias),
           "int8 (Wᵀ copy)": get_scheme("int8", transposed_copy=True).quantize_weight(weight, bias),
           "nf4 (torch dequant)": get_scheme("nf4", kernel="torch").quantize_weight(weight, bias),
           "nf4": get_scheme("nf4").quantize_weight(weight, bias)}
    try:
        out["bitsandbytes nf4 (bf16 compute)"] = _bnb_linear4bit(weight, bias, torch.bfloat16)
        out["bitsandbytes nf4 (fp32 compute)"] = _bnb_linear4bit(weight, bias, torch.float32)
    except ImportError:
        pass
    return out


def one_layer(rounds: int, warmup: int = 2, shape: tuple[int, int, int] = LAYER_SHAPE) -> dict:
    """Forward, and forward + input-gradient backward (what a frozen layer costs in a LoRA step), per variant;
    relative errors of output and input gradient vs fp32."""
    tokens, d_in, d_out = shape
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(d_out, d_in, generator=gen) / d_in ** 0.5
    bias = torch.randn(d_out, generator=gen) * 0.01
    x, g = torch.randn(tokens, d_in, generator=gen), torch.randn(tokens, d_out, generator=gen)
    layers = layer_variants(weight, bias)

    def forward(layer, dtype):
        def run():
            with torch.no_grad():
                return layer(x.to(dtype))
        return run

    def step(layer, dtype):
        def run():
            xg = x.clone().requires_grad_(True)
            layer(xg.to(dtype)).backward(g.to(dtype))
            return xg.grad
        return run

    dtypes = {name: torch.bfloat16 if name == "bf16" else torch.float32 for name in layers}
    ref_out, ref_grad = forward(layers["fp32"], torch.float32)(), step(layers["fp32"], torch.float32)()
    result = {"shape": {"tokens": tokens, "d_in": d_in, "d_out": d_out}, "variants": {}}
    fwd = timed_rounds({n: forward(l, dtypes[n]) for n, l in layers.items()}, rounds, warmup)
    both = timed_rounds({n: step(l, dtypes[n]) for n, l in layers.items()}, rounds, warmup)
    for name, layer in layers.items():
        result["variants"][name] = {
            "forward": fwd[name], "forward_backward": both[name],
            "output_error": _rel(forward(layer, dtypes[name])(), ref_out),
            "input_grad_error": _rel(step(layer, dtypes[name])(), ref_grad),
            "weight_bytes": _layer_bytes(layer), "fp32_bytes": 4 * d_in * d_out}
    return result


def _layer_bytes(layer: nn.Module) -> int:
    """Bytes held for the weight (bias excluded): our storage_bytes, else the weight tensor and, for
    bitsandbytes, its absmax."""
    if hasattr(layer, "storage_bytes"):
        return layer.storage_bytes()
    state = getattr(layer.weight, "quant_state", None)
    return layer.weight.nbytes + (state.absmax.nbytes if state is not None else 0)


# ----------------------------------------------------------------------------------------------
# Whole LoRA training steps on all-MiniLM-L6-v2
# ----------------------------------------------------------------------------------------------
def _autocast(step: Callable[[], float]) -> Callable[[], float]:
    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return step()
    return run


def _peft_bnb_nf4(setup: suites.Setup) -> nn.Module:
    """PEFT LoRA on a base whose Linear layers (not the head) are bitsandbytes Linear4bit NF4, bf16 compute."""
    from peft import get_peft_model

    base = setup.base()
    for name, module in list(base.named_modules()):
        if type(module) is nn.Linear and not name.endswith("classifier"):
            parent, _, child = name.rpartition(".")
            setattr(base.get_submodule(parent), child,
                    _bnb_linear4bit(module.weight.detach(), module.bias.detach(), torch.bfloat16))
    torch.manual_seed(setup.seed + 1)
    return get_peft_model(base, setup.peft_config())


def _peft_bf16(setup: suites.Setup) -> nn.Module:
    from peft import get_peft_model

    base = setup.base().to(torch.bfloat16)
    torch.manual_seed(setup.seed + 1)
    return get_peft_model(base, setup.peft_config())


def _loralab_dtype_bf16(setup: suites.Setup) -> nn.Module:
    """What `loralab train --dtype bf16` builds: the base's weights in bf16 (nn.Linear stays), LoRA factors and
    the trained head fp32 (loralab.precision), run under bf16 autocast."""
    from loralab.precision import Precision

    model = setup.loralab_model(model=setup.base().to(torch.bfloat16))
    return Precision.resolve("cpu", "bf16").prepare(model)


def step_models(setup: suites.Setup, with_bnb: bool) -> dict[str, tuple[nn.Module, bool]]:
    """name -> (model, runs under bf16 autocast)."""
    ll = setup.loralab_model
    models = {
        "loralab fp32": (ll(), False),
        "loralab --dtype bf16": (_loralab_dtype_bf16(setup), True),
        "loralab bf16 (weights + autocast)": (ll(model=quantize(setup.base(), "bf16")), True),
        "loralab int8 (no Wᵀ copy)": (ll(model=quantize(setup.base(), "int8", transposed_copy=False)), False),
        "loralab int8 (no Wᵀ copy) + bf16 autocast":
            (ll(model=quantize(setup.base(), "int8", transposed_copy=False)), True),
        "loralab int8 (Wᵀ copy)": (ll(model=quantize(setup.base(), "int8", transposed_copy=True)), False),
        "loralab nf4": (ll(model=quantize(setup.base(), "nf4")), False),
        "loralab nf4 + bf16 autocast": (ll(model=quantize(setup.base(), "nf4")), True),
        "PEFT fp32": (setup.peft_model(), False),
        "PEFT bf16 (weights)": (_peft_bf16(setup), False),
    }
    if with_bnb:
        models["PEFT + bitsandbytes nf4 (bf16 compute)"] = (_peft_bnb_nf4(setup), False)
    return models


def _model_bytes(model: nn.Module) -> dict:
    memory = quantized_memory(model)
    out = {"resident_bytes": memory.model_bytes}
    if memory.layers:
        out.update({"weight_bytes": memory.weight_bytes, "weight_fp32_bytes": memory.weight_fp32_bytes,
                    "model_bytes": memory.model_bytes, "model_fp32_bytes": memory.model_fp32_bytes})
    return out


def step_peak_bytes(step: Callable[[], float]) -> int:
    """Most bytes of tensors a (warmed-up) training step creates and holds at once: activations, gradients,
    temporaries (loralab.timing.tensor_memory.TensorMemory; the weights and optimizer state are not counted)."""
    from loralab.timing.tensor_memory import TensorMemory

    with TensorMemory() as memory:
        step()
    return memory.peak_bytes


def _optimizer_bytes(model: nn.Module) -> int:
    """AdamW's two fp32-or-parameter-dtype moments per trained value."""
    return sum(2 * p.nbytes for p in model.parameters() if p.requires_grad)


def training_steps(setup: suites.Setup, batch: int, seq: int, rounds: int, warmup: int = 2) -> dict:
    """Median step time (forward + backward + AdamW) of each variant on one fixed batch; the loss and
    the last hidden states at the start (B = 0: every variant is its base model) vs the fp32 base's."""
    try:
        import bitsandbytes  # noqa: F401
        with_bnb = True
    except ImportError:
        with_bnb = False
    data = suites.fixed_batch(setup.base().config.vocab_size, batch, seq, setup.seed)
    start = {}
    # On models of their own, in eval mode (dropout off): bitsandbytes repacks its CPU weights for inference
    # on the first eval-mode forward, and such layers cannot train afterwards.
    for name, (model, autocast) in step_models(setup, with_bnb).items():
        model.eval()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(**data, output_hidden_states=True)
        start[name] = (float(out.loss), out.hidden_states[-1].float())
    models = step_models(setup, with_bnb)
    ref_loss, ref_hidden = start["loralab fp32"]
    runs = {}
    for name, (model, autocast) in models.items():
        step = suites._trainer(model, data)
        runs[name] = _autocast(step) if autocast else step
    times = timed_rounds(runs, rounds, warmup)
    peaks = {name: step_peak_bytes(run) for name, run in runs.items()}
    return {"batch": batch, "seq": seq, "rounds": rounds, "variants": {
        name: {**times[name], "start_loss": start[name][0], "start_loss_diff": start[name][0] - ref_loss,
               "start_hidden_error": _rel(start[name][1], ref_hidden), **_model_bytes(models[name][0]),
               "step_peak_bytes": peaks[name], "optimizer_bytes": _optimizer_bytes(models[name][0])}
        for name in models}}


# ----------------------------------------------------------------------------------------------
# fbgemm's packed int8 weights: their real size, by RSS, in a fresh process
# ----------------------------------------------------------------------------------------------
def packed_int8_child(model_dir: str, transposed_copy: bool) -> dict:
    """Pack every Linear weight of the model for fbgemm (and Wᵀ too with transposed_copy) from int8 values
    made beforehand, keeping the packed objects: the RSS growth is their size, padding included."""
    from transformers import AutoModel

    from loralab.quantization.int8 import _prepack, dequantize_per_channel, quantize_per_channel

    model = AutoModel.from_pretrained(model_dir)
    matrices = [quantize_per_channel(m.weight) for m in model.modules() if type(m) is nn.Linear]
    if transposed_copy:
        matrices += [quantize_per_channel(dequantize_per_channel(q, s, torch.float32).t()) for q, s in matrices]
    _release_free_memory()
    before = _rss_bytes()
    kept = [_prepack(q, s) for q, s in matrices]
    _release_free_memory()
    grown = _rss_bytes() - before
    fp32 = sum(4 * q.numel() for q, _ in matrices) // (2 if transposed_copy else 1)
    nominal = sum(q.numel() + s.nbytes for q, s in matrices)
    return {"layers": len(kept), "rss_bytes": grown, "nominal_bytes": nominal, "fp32_bytes": fp32}


def _release_free_memory() -> None:
    """Return freed heap pages to the OS (glibc malloc_trim), so that RSS growth counts only new data."""
    import ctypes

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def packed_int8_memory(model_dir: str) -> dict:
    out = {}
    for copy_t in (True, False):
        cmd = [sys.executable, __file__, "--packed-child", "1" if copy_t else "0", "--model", model_dir]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if proc.returncode != 0:
            raise RuntimeError(f"packed-size child failed:\n{proc.stderr[-2000:]}")
        out["with Wᵀ copy" if copy_t else "no Wᵀ copy"] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


# ----------------------------------------------------------------------------------------------
# Tables and command line
# ----------------------------------------------------------------------------------------------
def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f} %"


def layer_table(result: dict) -> str:
    s, v = result["shape"], result["variants"]
    base = v["fp32"]["forward_backward"]
    lines = [f"One {s['d_in']}→{s['d_out']} Linear over {s['tokens']:,} tokens (ms and ratios: median wall / CPU)",
             "", "| path | forward | forward + input grad | fp32 ÷ this (fwd+grad) | output error | "
             "input-grad error | weight memory vs fp32 |", "|---|---|---|---|---|---|---|"]
    for name, r in v.items():
        f, b = r["forward"], r["forward_backward"]
        lines.append(f"| {name} | {f['wall_ms']:.1f} / {f['cpu_ms']:.1f} | {b['wall_ms']:.1f} / {b['cpu_ms']:.1f} | "
                     f"{base['wall_ms'] / b['wall_ms']:.2f}× / {base['cpu_ms'] / b['cpu_ms']:.2f}× | "
                     f"{100 * r['output_error']:.2f} % | "
                     f"{100 * r['input_grad_error']:.2f} % | {_pct(r['weight_bytes'], r['fp32_bytes'])} |")
    return "\n".join(lines)


def step_table(result: dict) -> str:
    v = result["variants"]
    peft = {n: r for n, r in v.items() if n.startswith("PEFT")}
    fastest_peft = min(peft, key=lambda n: peft[n]["cpu_ms"])

    def ratio(reference: dict, r: dict) -> str:
        return f"{reference['wall_ms'] / r['wall_ms']:.2f}× / {reference['cpu_ms'] / r['cpu_ms']:.2f}×"

    lines = [f"LoRA training step (r=8 on query/value, classifier trained), all-MiniLM-L6-v2, batch "
             f"{result['batch']}×{result['seq']} tokens (ms and ratios: median wall / CPU of {result['rounds']} "
             "rounds)", "", f"| variant | step | PEFT fp32 ÷ this | {fastest_peft} ÷ this | start loss − fp32 | "
             "last hidden state error | quantized weights vs fp32 | whole model vs fp32 |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in v.items():
        weights = _pct(r["weight_bytes"], r["weight_fp32_bytes"]) if "weight_bytes" in r else "—"
        whole = _pct(r["model_bytes"], r["model_fp32_bytes"]) if "model_bytes" in r else "—"
        lines.append(f"| {name} | {r['wall_ms']:.0f} / {r['cpu_ms']:.0f} | {ratio(peft['PEFT fp32'], r)} | "
                     f"{ratio(peft[fastest_peft], r)} | {r['start_loss_diff']:+.4f} | "
                     f"{100 * r['start_hidden_error']:.2f} % | {weights} | {whole} |")
    return "\n".join(lines)


def step_memory_table(result: dict) -> str:
    v = result["variants"]
    mib = 2 ** 20

    def total(r: dict) -> int:
        return r["resident_bytes"] + r["optimizer_bytes"] + r["step_peak_bytes"]

    ref = total(v["loralab fp32"])
    lines = [f"Memory of the same training steps (MiB): the model's parameters and buffers (quantized storage as "
             f"stored), AdamW's moments, and the most tensor bytes one step holds at once (activations, gradients, "
             f"temporaries; TensorMemory)", "",
             "| variant | model | AdamW | step peak | sum | sum vs loralab fp32 |", "|---|---|---|---|---|---|"]
    for name, r in v.items():
        lines.append(f"| {name} | {r['resident_bytes'] / mib:.1f} | {r['optimizer_bytes'] / mib:.2f} | "
                     f"{r['step_peak_bytes'] / mib:.1f} | {total(r) / mib:.1f} | {_pct(total(r), ref)} |")
    return "\n".join(lines)


def packed_table(result: dict) -> str:
    lines = ["int8 weights of all-MiniLM-L6-v2's Linear layers (36 + pooler) as fbgemm holds them (RSS growth "
             "of a fresh process while packing; scales included)", "",
             "| int8 | nominal (int8 + scales) vs fp32 | measured (RSS) vs fp32 |", "|---|---|---|"]
    for name, r in result.items():
        nominal, measured = _pct(r["nominal_bytes"], r["fp32_bytes"]), _pct(r["rss_bytes"], r["fp32_bytes"])
        lines.append(f"| {name} | {nominal} | {measured} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer rounds")
    p.add_argument("--rounds", type=int, default=None, help="timing rounds (default 10, quick 3)")
    p.add_argument("--repeat", type=int, default=1, help="run the timed sections this many times")
    p.add_argument("--only", nargs="+", choices=("layer", "step", "packed"), help="run only these sections")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--model", default=None, help="model folder (default: all-MiniLM-L6-v2 from its package)")
    p.add_argument("--json", default=str(Path(__file__).parent / "results" / "quantized.json"))
    p.add_argument("--packed-child", choices=("0", "1"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from loralab.files import write_json

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model_dir = args.model or suites.default_model_dir()
    if args.packed_child is not None:
        print(json.dumps(packed_int8_child(model_dir, args.packed_child == "1")))
        return
    rounds = args.rounds or (3 if args.quick else 10)
    only = set(args.only or ("layer", "step", "packed"))
    setup = suites.Setup(model_dir=model_dir, data_dir=Path("."))
    results: dict = {"threads": args.threads, "runs": []}
    print(f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs. Other processes may share "
          f"this machine: absolute times are noisy, compare ratios within one table.")
    for i in range(args.repeat):
        run: dict = {"load_before": os.getloadavg()[0]}
        print(f"\n## Run {i + 1} of {args.repeat} (1-minute load average {run['load_before']:.1f})\n")
        if "layer" in only:
            run["layer"] = one_layer(rounds * 2)
            print(layer_table(run["layer"]) + "\n")
        if "step" in only:
            run["step"] = training_steps(setup, args.batch, args.seq, rounds)
            print(step_table(run["step"]) + "\n")
            print(step_memory_table(run["step"]) + "\n")
        run["load_after"] = os.getloadavg()[0]
        results["runs"].append(run)
    if "packed" in only:
        results["packed"] = packed_int8_memory(model_dir)
        print(packed_table(results["packed"]))
    write_json(args.json, results)
    print(f"\nraw numbers in {args.json}")


if __name__ == "__main__":
    main()
