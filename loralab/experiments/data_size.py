"""data-size: LoRA against full fine-tuning, prefix-tuning and Houlsby adapters on growing training subsets
(Hu et al. 2021, Appendix F.3, Table 16: the low-data regime).

The paper (GPT-3 175B on MNLI subsets of 100 / 1k / 10k / 392k examples) finds LoRA at or above full
fine-tuning at every size, and prefix-tuning far behind on the small sets. Here: all-MiniLM-L6-v2 on SST-2
subsets of 100, 1,000 and 8,000 sentences and all 67,349, scored on the whole dev set (872 sentences).

Schedule per size n (batch 16): one epoch, but at least MIN_STEPS and at most MAX_STEPS optimizer steps,
so a 100-sentence run (7 batches an epoch, the last one of 4) passes over its data 28.6 times and the
"all" run stops after MAX_STEPS steps (24,000 sentences, 36 % of an epoch: a cap forced by the CPU budget,
stated in the table's `epochs` column: optimizer steps over batches per epoch).
One evaluation, at the end (no checkpoint selection on dev). Small sets (≤ SMALL_SET) are trained with
SMALL_SET_SEEDS seeds and reported as median and min–max; the seeds change initialisation and batch
order, not the subset (subsets are one fixed draw, and nested: the 100 lie inside the 1,000).
Methods, sizes (matched to LoRA r=8 on Wq, Wv) and learning rates are those of the `methods` experiment
(loralab.experiments.methods.METHOD_GRID), the same at every size.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from loralab.experiments.common import (DEFAULT_MODEL, RunSpec, grid_meta, quick_model_dir, run_grid, seed_summary,
                                        select_runs, train_set_size, with_seeds)
from loralab.experiments.methods import METHOD_GRID
from loralab.experiments.rank import metric_name
from loralab.experiments.report import ExperimentReport, Table, line_figure, write_experiment_report
from loralab.training.config import TrainConfig

METHODS = ("lora", "full", "prefix", "houlsby")
SIZES = (100, 1000, 8000, None)        # None: the whole training split
QUICK_SIZES = (32, 96)
MIN_STEPS, MAX_STEPS = 200, 1500
QUICK_MIN_STEPS, QUICK_MAX_STEPS = 4, 8
SMALL_SET, SMALL_SET_SEEDS = 1000, 3
QUICK_SMALL_SET, QUICK_SMALL_SET_SEEDS = 32, 2
BATCH_SIZE = 16
DEFAULT_DATA = "sst2"
# GPT-3 175B on MNLI-m (validation accuracy), Hu et al. 2021 Table 16, as read from arXiv 2106.09685
# (values quoted from the project's reference notes; check the paper before relying on a digit).
PAPER_SIZES = (100, 1000, 10000, 392702)
PAPER_TABLE16 = {"full": (60.2, 85.8, 88.9, 89.5), "PrefixEmbed": (37.6, 75.2, 79.5, 88.6),
                 "PrefixLayer": (48.3, 82.5, 85.9, 89.6), "lora": (63.8, 85.6, 89.2, 91.7)}


def steps_for(size: int, quick: bool = False) -> int:
    """Optimizer steps for a training set of `size` examples: one epoch, clamped to [MIN_STEPS, MAX_STEPS]."""
    low, high = (QUICK_MIN_STEPS, QUICK_MAX_STEPS) if quick else (MIN_STEPS, MAX_STEPS)
    return min(high, max(low, math.ceil(size / BATCH_SIZE)))


def size_label(size: int, everything: bool) -> str:
    return f"all ({size:,})" if everything else f"{size:,}"


def data_size_specs(quick: bool, data: str | None, model: str | None, out: Path, seeds: int | None = None,
                    runs: Sequence[str] | None = None) -> list[RunSpec]:
    """One run per (method, size, seed); sizes at or above the training set collapse into "all".
    runs: the base run names to keep ("lora-n100", "full-nall", ...; default all)."""
    data_name = data or DEFAULT_DATA
    if quick:
        model_spec, sizes, available = model or str(quick_model_dir(out.parent / "_quick-model")), QUICK_SIZES, None
    else:
        model_spec, sizes, available = model or DEFAULT_MODEL, SIZES, train_set_size(data_name)
    chosen: list[tuple[int, bool]] = []   # (examples, is the whole split)
    for size in sizes:
        if available is not None and (size is None or size >= available):
            if (available, True) not in chosen:
                chosen.append((available, True))
        else:
            chosen.append((size, False))
    small = QUICK_SMALL_SET if quick else SMALL_SET
    base, counts = [], {}
    for size, everything in chosen:       # size-major: a grid stopped early lacks the largest sets only
        for method in METHODS:
            options, lr, quick_lr = METHOD_GRID[method]
            steps = steps_for(size, quick)
            fields = dict(model=model_spec, data=data_name, train_limit=None if everything else size,
                          dev_limit=64 if quick else None, max_length=32 if quick else 64, epochs=1.0,
                          max_steps=steps, batch_size=BATCH_SIZE, lr=quick_lr if quick else lr, threads=1,
                          seed=0, eval_every=steps, checkpoint_every=0 if quick else 500, progress=False)
            if method == "lora":
                config = TrainConfig(lora=dict(options), **fields)
            else:
                config = TrainConfig(method=method, method_options=dict(options), **fields)
            info = {"method": method, "size": size, "size_label": size_label(size, everything),
                    "steps": steps, "epochs": round(steps / math.ceil(size / BATCH_SIZE), 2), "lr": fields["lr"]}
            name = f"{method}-n{'all' if everything else size}"
            base.append(RunSpec(name, config, info))
            counts[name] = seeds or ((QUICK_SMALL_SET_SEEDS if quick else SMALL_SET_SEEDS) if size <= small else 1)
    return [spec for one in select_runs(base, runs) for spec in with_seeds([one], counts[one.name])]


def pivot(summary: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Methods as rows, sizes as columns (median over seeds, in %), like the paper's Table 16."""
    rows = []
    for method in dict.fromkeys(row["method"] for row in summary):
        row: dict[str, Any] = {"method": method}
        for entry in (r for r in summary if r["method"] == method):
            value = entry[f"dev_{metric}_median"]
            row[entry["size_label"]] = round(100 * value, 2) if metric == "accuracy" else value
        rows.append(row)
    return rows


def paper_rows() -> list[dict[str, Any]]:
    labels = [f"{n:,}" for n in PAPER_SIZES]
    return [{"method": method, **dict(zip(labels, values))} for method, values in PAPER_TABLE16.items()]


def figure(summary: list[dict[str, Any]], metric: str) -> bytes:
    series, spans = {}, {}
    for method in dict.fromkeys(row["method"] for row in summary):
        mine = [r for r in summary if r["method"] == method]
        xs = [r["size"] for r in mine]
        series[method] = (xs, [r[f"dev_{metric}_median"] for r in mine])
        spans[method] = ([r[f"dev_{metric}_min"] for r in mine], [r[f"dev_{metric}_max"] for r in mine])
    return line_figure(series, "training examples (log scale)", f"dev {metric} (median; bars: min–max over seeds)",
                       "task metric against training-set size", log_x=True, spans=spans, log_base=10)


def run(out: str | os.PathLike = "runs/experiments/data-size", quick: bool = False, data: str | None = None,
        model: str | None = None, log: Callable[[str], None] = print, seeds: int | None = None,
        runs: Sequence[str] | None = None) -> ExperimentReport:
    """Train (or reuse) every (method, size, seed) run, then write the report. Each default run is a child
    process (its peak memory is measured); quick runs train in this process (seconds, no memory column).

    seeds: seeds for every size (default: SMALL_SET_SEEDS for sets of at most SMALL_SET examples, 1 above);
    runs: base run names to train (e.g. ["lora-n100", "full-n100"]; default all)."""
    out = Path(out)
    specs = data_size_specs(quick, data, model, out, seeds, runs)
    results = run_grid(specs, out / "runs", isolate=not quick, log=log)
    metric = metric_name(results)
    summary = seed_summary(results, metric)
    columns = ["run", "method", "size_label", "steps", "epochs", "lr", "seeds", f"dev_{metric}_median",
               f"dev_{metric}_min", f"dev_{metric}_max", f"dev_{metric}_std", f"dev_{metric}_by_seed",
               "trainable_params", "seconds_per_step"]
    main = Table("data_size", "Task metric against training-set size (median over seeds)", columns, summary,
                 f"Steps per size: one epoch clamped to [{QUICK_MIN_STEPS if quick else MIN_STEPS}, "
                 f"{QUICK_MAX_STEPS if quick else MAX_STEPS}] (batch {BATCH_SIZE}); epochs < 1 means the run "
                 "stopped at the step cap before seeing every example. One evaluation at the end.")
    wide = pivot(summary, metric)
    wide_table = Table("by_size", f"dev {metric} by method and training-set size (median over seeds)",
                       ["method", *list(dict.fromkeys(r["size_label"] for r in summary))], wide)
    paper = Table("paper_table16", "Paper, Table 16: GPT-3 175B on MNLI subsets (validation accuracy, %)",
                  ["method", *[f"{n:,}" for n in PAPER_SIZES]], paper_rows(),
                  "As read from arXiv 2106.09685 (Hu et al. 2021), Appendix F.3; check the paper before quoting.")
    per_run = Table("runs", "Every run", ["run", "method", "size_label", "seed", f"dev_{metric}", "dev_loss",
                                          "steps", "seconds_per_step", "peak_rss_mb", "cpu_seconds"],
                    [r.row(metric) for r in results])
    methods = list(dict.fromkeys(r["method"] for r in summary))
    meta = grid_meta(quick, specs, results, ["max_length"], metric=metric, batch_size=BATCH_SIZE,
                     min_steps=QUICK_MIN_STEPS if quick else MIN_STEPS, max_steps=QUICK_MAX_STEPS if quick else MAX_STEPS,
                     methods=methods, method_options={m: METHOD_GRID[m][0] for m in methods},
                     train_seconds_total=round(sum(r.train_seconds for r in results), 1),
                     cpu_seconds_total=round(sum(r.cpu_seconds for r in results if r.cpu_seconds), 1))
    report = ExperimentReport("data-size", "Experiment: training-set size (paper Appendix F.3, Table 16)",
                              "LoRA, full fine-tuning, prefix-tuning and Houlsby adapters trained on growing subsets "
                              "of the same data, each with its own fixed learning rate.",
                              [main, wide_table, paper, per_run], {f"{metric}_vs_size": figure(summary, metric)}, meta)
    write_experiment_report(report, out)
    return report
