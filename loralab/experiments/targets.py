"""targets: which weight matrices to adapt under one fixed budget of trainable values (Hu et al. 2021, Table 5).

Seven runs with the same number of LoRA values 2·L·d·r·(number of matrix types) = 16·L·d:
Wq r=8, Wk r=8, Wv r=8, Wo r=8, Wq+Wk r=4, Wq+Wv r=4, Wq+Wk+Wv+Wo r=2 (Wo: the attention output
projection). Data and training settings as in the rank experiment (loralab.experiments.rank).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from loralab.budget.shapes import load_config
from loralab.errors import LoraLabError
from loralab.experiments.common import (RunSpec, data_fields, grid_meta, run_grid, seed_medians, seed_table,
                                        select_runs, with_seeds)
from loralab.experiments.rank import ALPHA, metric_name, settings
from loralab.experiments.report import ExperimentReport, Table, bar_figure, write_experiment_report
from loralab.models.architectures import architecture, architectures
from loralab.models.loading import resolve_model_spec
from loralab.training.config import TrainConfig

# `--data` may be the user's files (loralab.experiments.common.DataFiles): the runs read them as train does.
TAKES_DATA_FILES = True

# (label, matrix types, r): the paper's Table 5 grid.
GRID = (("Wq", ("q",), 8), ("Wk", ("k",), 8), ("Wv", ("v",), 8), ("Wo", ("o",), 8),
        ("Wq,Wk", ("q", "k"), 4), ("Wq,Wv", ("q", "v"), 4), ("Wq,Wk,Wv,Wo", ("q", "k", "v", "o"), 2))


def lora_targets(model_spec: str) -> dict[str, dict]:
    """{grid label: LoraConfig fields} adapting each row's matrices in the model's family: targets, plus
    fused_slices where the family fuses q, k, v (GPT-2, Phi-3). Names from loralab.models.architectures."""
    config = load_config(resolve_model_spec(model_spec))
    arch = architecture(config.model_type)
    if arch is None or not set("qkvo") <= set(arch.roles):
        known = sorted(t for a in architectures() if set("qkvo") <= set(a.roles) for t in a.model_types)
        raise LoraLabError(f"the targets experiment knows the q/k/v/o modules of {', '.join(known)}, "
                           f"not {config.model_type!r}; pass one of those with --model")
    fields = {}
    for label, roles, _ in GRID:
        resolved = arch.lora_targets(roles, config)
        fields[label] = {"targets": resolved.targets,
                         **({"fused_slices": resolved.fused_slices} if resolved.fused_slices else {})}
    return fields


def target_specs(quick: bool, data: str | None, model: str | None, out: Path) -> list[RunSpec]:
    model_spec, data_name, train = settings(quick, data, model, out)
    lora = lora_targets(model_spec)
    specs = []
    for label, _, r in GRID:
        config = TrainConfig(model=model_spec, **data_fields(data_name), lora={"r": r, "alpha": ALPHA, **lora[label]},
                             seed=0, eval_every=0, checkpoint_every=50, progress=False, **train)
        specs.append(RunSpec(label.replace(",", "-"), config, {"targets": label, "r": r}))
    return specs


def run(out: str | os.PathLike = "runs/experiments/targets", quick: bool = False, data: str | None = None,
        model: str | None = None, log: Callable[[str], None] = print, seeds: int | None = None,
        runs: list[str] | None = None) -> ExperimentReport:
    """Train (or reuse) the Table 5 grid. seeds: every row with seeds 0..seeds-1 (median in the figure,
    spread in the `seeds` table); runs: only these rows ("Wq", "Wq-Wv", ...)."""
    out = Path(out)
    specs = with_seeds(select_runs(target_specs(quick, data, model, out), runs), seeds or 1)
    results = run_grid(specs, out / "runs", log=log)
    metric = metric_name(results)
    rows = [r.row(metric) for r in results]
    budgets = {r.adapter_params for r in results}
    note = ("Every row trains the same number of LoRA values (adapter_params) plus the classifier head."
            if len(budgets) == 1 else f"adapter_params differ between rows ({sorted(budgets)}): the matrices "
                                      "of this model are not all the same shape.")
    medians = seed_medians(results, metric)
    labels = {r.info["base_run"]: r.info["targets"] for r in results}
    figures = {"metric_by_targets": bar_figure(list(labels.values()), [medians[name] for name in labels],
                                               f"dev {metric}" + (" (median over seeds)" if (seeds or 1) > 1 else ""),
                                               "task metric by adapted matrices (fixed budget)")}
    table = Table("targets", "Task metric by adapted weight matrices, fixed budget",
                  ["run", "targets", "r", "seed", f"dev_{metric}", f"test_{metric}", "dev_loss", "adapter_params",
                   "trainable_params", "seconds_per_step", "train_seconds"], rows, note)
    tables = [table]
    by_seed = seed_table(results, metric, ["targets", "r"])
    if by_seed is not None:
        tables.append(by_seed)
    meta = grid_meta(quick, specs, results, ["train_limit", "dev_limit", "epochs", "batch_size", "lr"],
                     alpha=ALPHA, metric=metric, seeds=seeds or 1)
    report = ExperimentReport("targets", "Experiment: which weight matrices (paper Table 5)",
                              "LoRA on different attention matrices with the same number of trainable values.",
                              tables, figures, meta)
    write_experiment_report(report, out)
    return report
