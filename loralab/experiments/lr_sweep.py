"""lr-sweep: a learning-rate sweep for LoRA at several ranks, on the preset targets (Wq, Wv) and on every
linear layer ("all-linear": attention and MLP), and for full fine-tuning, on the data and schedule of the
`rank` and `methods` experiments (Hu et al. tuned the learning rate of every method; the `methods` experiment
fixes one per method).

Configurations (CONFIGS): `lora` (r=8, Wq, Wv: the run names of earlier sweeps), `lora-r1`, `lora-r64`,
`lora-all-r1`, `lora-all-r8`, `lora-all-r64`, and `full`; α = 16 for every rank (the scale α/r, the "1/r
scaling" under which "LoRA Without Regret" (Schulman and Thinking Machines Lab, 2025) finds LoRA's best rate
about independent of rank). Rates (LEARNING_RATES): five per method, LoRA 1e-4 … 1e-2 and full fine-tuning
1e-5 … 3e-4, wide enough for the optimum to fall inside. Reported: the metric at each rate, the best rate per
configuration, and each LoRA configuration's best rate over full fine-tuning's (the `lr_ratio` table) next to
that paper's rule of thumb, LoRA's optimum about 10× full fine-tuning's; a best rate at the edge of its grid
makes the ratio a bound, and the table says so. With seeds, medians over seeds. Runs train in child processes
(their CPU time is recorded), quick ones in this process.

On the user's own files (`--train-file`), the runs keep `loralab train`'s own schedule for such files
(TrainConfig's defaults: every example, 3 epochs, the model's length limit; USER_FILE_TRAIN) instead of the
builtin sets' 1-epoch subset, and the configuration `loralab train` uses with no flags (`default_config()`)
also trains at train's default rate. The `train_default` table then answers "how far is a run with no flags
from the best rate of the sweep" (issue 23's goal: within 1 point of accuracy or 0.01 of Pearson correlation).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from loralab.experiments.common import (DataFiles, RunSpec, data_fields, data_label, grid_meta, run_grid, seed_medians,
                                        seed_table, select_runs, with_seeds)
from loralab.experiments.methods import METHOD_GRID
from loralab.experiments.rank import ALPHA, metric_name, settings
from loralab.experiments.report import ExperimentReport, Table, line_figure, write_experiment_report
from loralab.training.config import TrainConfig, train_field_default

# `--data` may be the user's files (loralab.experiments.common.DataFiles): the runs read them as train does.
TAKES_DATA_FILES = True

# method -> learning rates of the default runs, of the quick runs
LEARNING_RATES: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "lora": ((1e-4, 3e-4, 1e-3, 3e-3, 1e-2), (1e-3, 5e-3)),
    "full": ((1e-5, 2e-5, 5e-5, 1e-4, 3e-4), (3e-4, 1e-3)),
}
# configuration -> (method, LoRA fields or baseline options, the table's r and targets columns)
CONFIGS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "lora": ("lora", {"r": 8, "alpha": ALPHA}, {"r": 8, "targets": "Wq,Wv"}),
    "lora-r1": ("lora", {"r": 1, "alpha": ALPHA}, {"r": 1, "targets": "Wq,Wv"}),
    "lora-r64": ("lora", {"r": 64, "alpha": ALPHA}, {"r": 64, "targets": "Wq,Wv"}),
    "lora-all-r1": ("lora", {"r": 1, "alpha": ALPHA, "targets": "all-linear"}, {"r": 1, "targets": "all-linear"}),
    "lora-all-r8": ("lora", {"r": 8, "alpha": ALPHA, "targets": "all-linear"}, {"r": 8, "targets": "all-linear"}),
    "lora-all-r64": ("lora", {"r": 64, "alpha": ALPHA, "targets": "all-linear"},
                     {"r": 64, "targets": "all-linear"}),
    "full": ("full", {}, {"r": None, "targets": "every weight"}),
}
# --quick trains these (one rank each way and both target sets; seconds on the tiny model)
QUICK_CONFIGS = ("lora", "lora-r1", "lora-all-r8", "full")
# "LoRA Without Regret": LoRA's best learning rate is about this many times full fine-tuning's.
PAPER_RATIO = 10.0
# The runs on a user's files: `loralab train`'s schedule for them (TrainConfig's defaults), one thread each.
USER_FILE_TRAIN: dict[str, Any] = dict(threads=1)
# The goal for a run with no flags: its dev metric within this of the sweep's best (1 point of accuracy, 0.01
# of Pearson correlation).
DEFAULT_GAP_GOAL = 0.01


def default_config() -> str | None:
    """The configuration `loralab train` trains with no flags: the CONFIGS entry whose LoRA fields are
    TrainConfig's default `lora` fields (one source of truth for train's default adapter); None if no entry
    has them (then the sweep holds no no-flag run and writes no train_default table)."""
    wanted = train_field_default("lora")
    return next((name for name, (method, options, _) in CONFIGS.items() if method == "lora" and options == wanted),
                None)


def rates_of(name: str, quick: bool, data: str | DataFiles) -> tuple[float, ...]:
    """The learning rates configuration `name` trains at; on a user's files train's default rate joins the grid
    of the default configuration, so the sweep holds the run `loralab train` makes with no flags."""
    rates, quick_rates = LEARNING_RATES[CONFIGS[name][0]]
    chosen = quick_rates if quick else rates
    if isinstance(data, DataFiles) and name == default_config():
        chosen = tuple(sorted(set(chosen) | {train_field_default("lr")}))
    return chosen


def sweep_specs(quick: bool, data: str | None, model: str | None, out: Path) -> list[RunSpec]:
    model_spec, data_name, train = settings(quick, data, model, out)
    user_files = isinstance(data_name, DataFiles) and not quick     # train's own schedule and precision
    if user_files:
        train = dict(USER_FILE_TRAIN)
    specs = []
    for name in (QUICK_CONFIGS if quick else CONFIGS):
        method, options, columns = CONFIGS[name]
        for lr in rates_of(name, quick, data_name):
            fields = dict(train, lr=lr, model=model_spec, **data_fields(data_name), seed=0, eval_every=0,
                          checkpoint_every=0, progress=False)
            config = (TrainConfig(lora=dict(options), **fields) if method == "lora"
                      else TrainConfig(method=method, method_options=dict(options), **fields))
            specs.append(RunSpec(f"{name}-lr{lr:g}", config, {"config": name, "method": method, **columns, "lr": lr},
                                 train_defaults=user_files))
    return specs


def ratio_rows(best: list[dict[str, Any]], grid: dict[str, list[float]]) -> list[dict[str, Any]]:
    """Per LoRA configuration: its best rate over full fine-tuning's, next to PAPER_RATIO. A best rate at the
    low (high) edge of its grid is only an upper (lower) bound on the optimum; `bound` says which ratio that
    makes ("=" when both optima are inside their grids). [] without a full fine-tuning row."""
    full = next((row for row in best if row["method"] == "full"), None)
    if full is None:
        return []
    rows = []
    for row in best:
        if row["method"] == "full":
            continue
        lora_edge, full_edge = _edge(row["best_lr"], grid[row["config"]]), _edge(full["best_lr"], grid["full"])
        # the true ratio is above the measured one when LoRA's optimum may be higher or full FT's lower
        above = lora_edge == "high" or full_edge == "low"
        below = lora_edge == "low" or full_edge == "high"
        bound = "=" if not (above or below) else "?" if above and below else ">=" if above else "<="
        rows.append({"config": row["config"], "r": row["r"], "targets": row["targets"], "best_lr": row["best_lr"],
                     "full_best_lr": full["best_lr"], "ratio": row["best_lr"] / full["best_lr"], "bound": bound,
                     "paper_ratio": PAPER_RATIO})
    return rows


def train_default_row(base: dict[str, dict[str, Any]], medians: dict[str, float], metric: str,
                      run_config: TrainConfig) -> dict[str, Any] | None:
    """The run `loralab train` makes with no flags (default_config() at TrainConfig's default lr) against the best
    rate of its configuration and the best run of the sweep; None when the sweep did not train it (builtin data sets,
    or --runs left it out). base: {base run: info}; medians: {base run: dev metric (median over seeds)};
    run_config: any run's TrainConfig (whose train_file says whether the data are the user's files)."""
    config, lr = default_config(), train_field_default("lr")
    default = next((name for name, info in base.items() if info["config"] == config and info["lr"] == lr), None)
    if default is None or not run_config.train_file:
        return None
    same = max((n for n, info in base.items() if info["config"] == config), key=lambda n: medians[n])
    anywhere = max(base, key=lambda n: medians[n])
    gap = medians[same] - medians[default]
    return {"config": config, "default_lr": lr, f"dev_{metric}": medians[default],
            "best_same_config_lr": base[same]["lr"], f"best_same_config_dev_{metric}": medians[same],
            "gap": gap, "best_any_run": anywhere, f"best_any_dev_{metric}": medians[anywhere],
            "gap_any": medians[anywhere] - medians[default], "goal_met": gap <= DEFAULT_GAP_GOAL}


def _edge(lr: float, rates: list[float]) -> str | None:
    if len(rates) > 1 and lr == min(rates):
        return "low"
    if len(rates) > 1 and lr == max(rates):
        return "high"
    return None


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
    configs = list(dict.fromkeys(info["config"] for info in base.values()))
    grid = {c: sorted(info["lr"] for info in base.values() if info["config"] == c) for c in configs}
    best = []
    for config in configs:
        mine = {name: medians[name] for name, info in base.items() if info["config"] == config}
        winner = max(mine, key=lambda name: mine[name])
        method = base[winner]["method"]
        fixed = METHOD_GRID[method][2 if quick else 1]
        best.append({"config": config, "method": method, "r": base[winner]["r"], "targets": base[winner]["targets"],
                     "best_lr": base[winner]["lr"], f"dev_{metric}": mine[winner], "fixed_lr": fixed,
                     f"dev_{metric}_at_fixed_lr": next((v for n, v in mine.items() if base[n]["lr"] == fixed), None)})
    figures = {"metric_vs_lr": line_figure(
        {config: ([info["lr"] for name, info in base.items() if info["config"] == config],
                  [medians[name] for name, info in base.items() if info["config"] == config])
         for config in configs},
        "learning rate (log scale)", f"dev {metric}" + (" (median over seeds)" if (seeds or 1) > 1 else ""),
        "task metric against learning rate", log_x=True, log_base=10)}
    tables = [Table("lr_sweep", "Task metric by learning rate",
                    ["run", "config", "method", "r", "targets", "lr", "seed", f"dev_{metric}", "dev_loss",
                     "trainable_params", "seconds_per_step", "cpu_seconds"],
                    [r.row(metric) for r in results]),
              Table("best_lr", "Best learning rate per configuration", list(best[0]), best,
                    f"Data: {data_label(specs[0].config)}; dev {metric}. "
                    "fixed_lr: the rate the methods, rank and data-size experiments use.")]
    ratios = ratio_rows(best, grid)
    if ratios:
        tables.append(Table("lr_ratio", "LoRA's best learning rate over full fine-tuning's", list(ratios[0]), ratios,
                            "paper_ratio: about 10x, the rule of 'LoRA Without Regret' (Thinking Machines, 2025). "
                            "bound: '=' both optima inside their grids; '>=' or '<=' the true ratio is at least or "
                            "at most this (a best rate at the edge of its grid); '?' both ways."))
    default_row = train_default_row(base, medians, metric, specs[0].config)
    if default_row is not None:
        tables.append(Table("train_default", "`loralab train` with no flags against the sweep's best",
                            list(default_row), [default_row],
                            f"default: the run of {default_row['config']} at train's default rate "
                            f"{default_row['default_lr']:g}; best_same_config: that configuration's best rate; "
                            "best_any: the best run of the sweep. goal_met: within "
                            f"{DEFAULT_GAP_GOAL:g} of best_same_config (issue 23: 1 point or 0.01 correlation)."))
    by_seed = seed_table(results, metric, ["config", "lr"])
    if by_seed is not None:
        tables.append(by_seed)
    meta = grid_meta(quick, specs, results, ["train_limit", "epochs", "batch_size", "max_length"], metric=metric,
                     seeds=seeds or 1)
    report = ExperimentReport("lr-sweep", "Experiment: learning-rate sweep, LoRA and full fine-tuning",
                              f"Data: {data_label(specs[0].config)}, scored by dev {metric}. The same schedule as "
                              "`methods`; only the learning rate, the rank and the targets change.",
                              tables, figures, meta)
    write_experiment_report(report, out)
    return report
