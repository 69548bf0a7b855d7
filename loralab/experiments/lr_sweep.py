"""lr-sweep: a small learning-rate sweep for LoRA (r=8 on Wq, Wv) and full fine-tuning, on the data and
schedule of the `rank` and `methods` experiments (Hu et al. tuned the learning rate of every method;
the `methods` experiment fixes one per method).

Rates (LEARNING_RATES): LoRA 3e-4, 1e-3, 3e-3 and full fine-tuning 2e-5, 5e-5, 1e-4, each set around the
fixed rate of `methods` (loralab.experiments.methods.METHOD_GRID: 1e-3 and 5e-5). Reported per method: the
metric at each rate and the best rate; with seeds, medians over seeds. Runs train in child processes
(their CPU time is recorded), quick ones in this process.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from loralab.experiments.common import RunSpec, grid_meta, run_grid, seed_medians, seed_table, select_runs, with_seeds
from loralab.experiments.methods import METHOD_GRID
from loralab.experiments.rank import metric_name, settings
from loralab.experiments.report import ExperimentReport, Table, line_figure, write_experiment_report
from loralab.training.config import TrainConfig

# method -> learning rates of the default runs, of the quick runs
LEARNING_RATES: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "lora": ((3e-4, 1e-3, 3e-3), (1e-3, 5e-3)),
    "full": ((2e-5, 5e-5, 1e-4), (3e-4, 1e-3)),
}


def sweep_specs(quick: bool, data: str | None, model: str | None, out: Path) -> list[RunSpec]:
    model_spec, data_name, train = settings(quick, data, model, out)
    specs = []
    for method, (rates, quick_rates) in LEARNING_RATES.items():
        options = METHOD_GRID[method][0]
        for lr in quick_rates if quick else rates:
            fields = dict(train, lr=lr, model=model_spec, data=data_name, seed=0, eval_every=0, checkpoint_every=0,
                          progress=False)
            config = (TrainConfig(lora=dict(options), **fields) if method == "lora"
                      else TrainConfig(method=method, method_options=dict(options), **fields))
            specs.append(RunSpec(f"{method}-lr{lr:g}", config, {"method": method, "lr": lr}))
    return specs


def run(out: str | os.PathLike = "runs/experiments/lr-sweep", quick: bool = False, data: str | None = None,
        model: str | None = None, log: Callable[[str], None] = print, seeds: int | None = None,
        runs: Sequence[str] | None = None) -> ExperimentReport:
    """Train (or reuse) every (method, learning rate, seed) run in child processes; write the report."""
    out = Path(out)
    specs = with_seeds(select_runs(sweep_specs(quick, data, model, out), runs), seeds or 1)
    results = run_grid(specs, out / "runs", isolate=not quick, log=log)
    metric = metric_name(results)
    medians = seed_medians(results, metric)
    base = {r.info["base_run"]: r.info for r in results}
    best = []
    for method in dict.fromkeys(info["method"] for info in base.values()):
        mine = {name: medians[name] for name, info in base.items() if info["method"] == method}
        winner = max(mine, key=lambda name: mine[name])
        best.append({"method": method, "best_lr": base[winner]["lr"], f"dev_{metric}": mine[winner],
                     "fixed_lr": METHOD_GRID[method][2 if quick else 1],
                     f"dev_{metric}_at_fixed_lr": next((v for n, v in mine.items()
                                                        if base[n]["lr"] == METHOD_GRID[method][2 if quick else 1]),
                                                       None)})
    figures = {"metric_vs_lr": line_figure(
        {method: ([info["lr"] for name, info in base.items() if info["method"] == method],
                  [medians[name] for name, info in base.items() if info["method"] == method])
         for method in dict.fromkeys(info["method"] for info in base.values())},
        "learning rate (log scale)", f"dev {metric}" + (" (median over seeds)" if (seeds or 1) > 1 else ""),
        "task metric against learning rate", log_x=True, log_base=10)}
    tables = [Table("lr_sweep", "Task metric by learning rate", ["run", "method", "lr", "seed", f"dev_{metric}",
                                                                 "dev_loss", "trainable_params", "seconds_per_step",
                                                                 "cpu_seconds"],
                    [r.row(metric) for r in results]),
              Table("best_lr", "Best learning rate per method", list(best[0]), best,
                    "fixed_lr: the rate the methods, rank and data-size experiments use.")]
    by_seed = seed_table(results, metric, ["method", "lr"])
    if by_seed is not None:
        tables.append(by_seed)
    meta = grid_meta(quick, specs, results, ["train_limit", "epochs", "batch_size", "max_length"], metric=metric,
                     seeds=seeds or 1)
    report = ExperimentReport("lr-sweep", "Experiment: learning-rate sweep, LoRA and full fine-tuning",
                              "The same data and schedule as `methods`; only the learning rate changes.",
                              tables, figures, meta)
    write_experiment_report(report, out)
    return report
