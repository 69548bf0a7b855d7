"""methods: LoRA against full fine-tuning, BitFit, Houlsby adapters and prefix-tuning (Hu et al. 2021, Tables 2
and 1), all in the same training harness, on the same data, plus the forward-latency study.

Each row: trainable values, peak resident memory of the training process (each run is a child process,
see loralab.experiments.common), seconds per optimizer step, and the task metric. Sizes are matched
roughly to LoRA r=8 on Wq, Wv (2·6·2·384·8 = 73,728 values on MiniLM): Houlsby bottleneck 8 (78,432),
prefix length 16 (6·2·16·384 = 73,728). Learning rates are per method (full fine-tuning needs a far
smaller one); they are fixed, not tuned, and listed in the table.

Every method trains through loralab.training.run_training (TrainConfig.method / method_options), so data,
schedule and evaluation are the same.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loralab.errors import choose
from loralab.experiments.common import RunSpec, data_fields, grid_meta, run_grid, seed_table, with_seeds
from loralab.experiments.rank import ALPHA, metric_name, settings
from loralab.experiments.report import ExperimentReport, Table, bar_figure, write_experiment_report
from loralab.models.loading import resolve_model_spec
from loralab.timing import latency
from loralab.training.config import TrainConfig

# `--data` may be the user's files (loralab.experiments.common.DataFiles): the runs read them as train does.
TAKES_DATA_FILES = True

# name -> (method options, learning rate of the default runs, of the quick runs)
METHOD_GRID: dict[str, tuple[dict[str, Any], float, float]] = {
    "lora": ({"r": 8, "alpha": ALPHA}, 1e-3, 5e-3),
    "full": ({}, 5e-5, 1e-3),
    "bitfit": ({}, 2e-3, 5e-3),
    "houlsby": ({"bottleneck": 8}, 1e-3, 5e-3),
    "prefix": ({"length": 16}, 3e-3, 5e-3),
}
LATENCY_REPEATS = 15


def method_specs(quick: bool, data: str | None, model: str | None, out: Path,
                 methods: tuple[str, ...] | None = None) -> list[RunSpec]:
    model_spec, data_name, train = settings(quick, data, model, out)
    methods = tuple(METHOD_GRID) if methods is None else methods
    specs = []
    for name in methods:
        choose(name, METHOD_GRID, "method")
        options, lr, quick_lr = METHOD_GRID[name]
        # checkpoint_every=0 (at evaluations only): a full fine-tuning checkpoint is ~270 MB, and the
        # other methods get the same schedule so that step times compare.
        fields = dict(train, lr=quick_lr if quick else lr)
        fields.update(model=model_spec, **data_fields(data_name), seed=0, eval_every=0, checkpoint_every=0,
                      progress=False)
        info = {"method": name, "options": ", ".join(f"{k}={v}" for k, v in options.items()), "lr": fields["lr"]}
        if name == "lora":
            specs.append(RunSpec(name, TrainConfig(lora=dict(options), **fields), info))
        else:
            specs.append(RunSpec(name, TrainConfig(method=name, method_options=dict(options), **fields), info))
    return specs


def latency_rows(out: Path, quick: bool, model_spec: str, log: Callable[[str], None]) -> list:
    """The latency study (loralab.timing.latency) for this model; reused when latency.json exists."""
    import json

    existing = out / "latency" / "latency.json"
    if existing.is_file():
        log(f"latency: reading {existing}")
        data = json.loads(existing.read_text(encoding="utf-8"))
        rows = data["rows"] if isinstance(data, dict) and "rows" in data else data
        return [latency.LatencyRow(**{k: v for k, v in row.items() if k in latency.LatencyRow.__dataclass_fields__})
                for row in rows]
    log("latency: measuring forward latency, base vs Houlsby vs LoRA unmerged vs merged")
    if quick:
        return latency.run(out=out / "latency", quick=True)

    return latency.run(model=str(resolve_model_spec(model_spec)), out=out / "latency", repeats=LATENCY_REPEATS,
                       bottleneck=METHOD_GRID["houlsby"][0]["bottleneck"], lora_r=METHOD_GRID["lora"][0]["r"])


def run(out: str | os.PathLike = "runs/experiments/methods", quick: bool = False, data: str | None = None,
        model: str | None = None, log: Callable[[str], None] = print,
        methods: tuple[str, ...] | None = None, seeds: int | None = None,
        runs: list[str] | None = None) -> ExperimentReport:
    """Train (or reuse) one run per method (and seed) in child processes, measure latency, write the report.

    methods / runs: only these methods (e.g. ("lora", "full")); the latency study then runs only if its
    results are already in `out`. seeds: every method with seeds 0..seeds-1 (the `seeds` table)."""
    out = Path(out)
    chosen = tuple(runs) if runs is not None else methods
    specs = with_seeds(method_specs(quick, data, model, out, chosen), seeds or 1)
    results = run_grid(specs, out / "runs", isolate=True, log=log)
    metric = metric_name(results)
    rows = [r.row(metric) for r in results]
    lora_params = next((r.trainable_params for r in results if r.name == "lora"), None)
    for row in rows:
        row["params_vs_lora"] = row["trainable_params"] / lora_params if lora_params else None
    if chosen is None or (out / "latency" / "latency.json").is_file():
        lat = latency_rows(out, quick, specs[0].config.model, log)
    else:
        log("latency: skipped (a subset of the methods was asked for, and no earlier latency results are in --out)")
        lat = []
    lat_rows = [{"config": r.config, "batch": r.batch_size, "seq": r.seq_len, "median_ms": r.median_ms,
                 "iqr_ms": r.iqr_ms, "overhead_pct": r.overhead_pct, "added_params": r.added_params} for r in lat]
    labels = [r.name for r in results]
    figures = {
        "metric_by_method": bar_figure(labels, [r.metric(metric) for r in results], f"dev {metric}", "task metric"),
        "trainable_by_method": bar_figure(labels, [float(r.trainable_params) for r in results], "trainable values",
                                          "trainable parameters (log scale)", log_y=True),
        "memory_by_method": bar_figure(labels, [r.peak_rss_mb or 0.0 for r in results], "MiB",
                                       "peak RSS of the training process"),
        "step_time_by_method": bar_figure(labels, [r.seconds_per_step for r in results], "seconds",
                                          "wall time per optimizer step"),
    }
    main = Table("methods", "LoRA against the baselines, one harness",
                 ["method", "seed", "options", "lr", f"dev_{metric}", f"test_{metric}", "dev_loss", "trainable_params",
                  "params_vs_lora", "peak_rss_mb", "cpu_seconds", "seconds_per_step", "steps", "train_seconds"], rows,
                 "trainable_params includes the classifier head; peak_rss_mb is the training process's "
                 "ru_maxrss (model, data, optimizer state, activations, Python and torch themselves).")
    latency_table = Table("latency", "Forward latency (ms per batch; paper Table 1)",
                          ["config", "batch", "seq", "median_ms", "iqr_ms", "overhead_pct", "added_params"], lat_rows,
                          "Median over interleaved repeats, one thread; overhead relative to the base model at the "
                          "same shape. Merged LoRA is the base architecture, so its overhead is noise.")
    tables = [main, latency_table]
    by_seed = seed_table(results, metric, ["method", "options", "lr"])
    if by_seed is not None:
        tables.append(by_seed)
    meta = grid_meta(quick, specs, results, ["train_limit", "dev_limit", "epochs", "batch_size", "max_length"],
                     metric=metric, methods=list(dict.fromkeys(r.info["method"] for r in results)), seeds=seeds or 1,
                     cpu_cores=os.cpu_count())
    report = ExperimentReport("methods", "Experiment: LoRA vs full fine-tuning, BitFit, adapters, prefix-tuning "
                                         "(paper Tables 2 and 1)",
                              "Each method trained in its own process on the same data with the same schedule.",
                              tables, figures, meta)
    write_experiment_report(report, out)
    return report
