"""rank: how small can r be? LoRA on Wq, Wv with r ∈ {1, 2, 4, 8, 64} (Hu et al. 2021, Table 6), plus the
subspace similarity φ between the r=8 and r=64 adapters (§7.2, Fig. 3/4).

Default: all-MiniLM-L6-v2 on a fixed 8,000-sentence subset of GLUE SST-2 train, scored on the whole SST-2
dev set (872 sentences, the split the paper reports), 1 epoch (500 steps), batch 16, lr 1e-3, one thread, α = 16 for every r
(the scale α/r changes with r, as in the paper). --quick: a 2-layer random BERT (hidden 32) on 300
sentences (1 thread), r ∈ {1, 2, 4, 8, 16}, φ between r=8 and r=16.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loralab.analysis import analyze_adapters, write_report
from loralab.experiments.common import (DEFAULT_MODEL, RunResult, RunSpec, data_fields, grid_meta, one_thread,
                                        quick_model_dir, run_grid, seed_medians, seed_table, select_runs, with_seeds)
from loralab.experiments.report import ExperimentReport, Table, line_figure, write_experiment_report
from loralab.training.config import TrainConfig

# `--data` may be the user's files (loralab.experiments.common.DataFiles): the runs read them as train does.
TAKES_DATA_FILES = True

RANKS = (1, 2, 4, 8, 64)
QUICK_RANKS = (1, 2, 4, 8, 16)
ALPHA = 16.0
DEFAULT_DATA = "sst2"
# Training settings of the default runs: 500 optimizer steps; ~3 min a run at the 0.26 s/step of a trial,
# 4-9 min a run (35 min for the experiment) measured on the 2-core machine under a load average of 7.
# One thread: with cores shared with other processes, two torch threads wait for the busy core at every
# parallel op (we measured 3.7 s per MiniLM step with 2 threads against 0.26 s with 1, same load).
DEFAULT_TRAIN = dict(train_limit=8000, dev_limit=None, max_length=64, epochs=1.0, batch_size=16, lr=1e-3, threads=1)
QUICK_TRAIN = dict(train_limit=200, dev_limit=64, max_length=32, epochs=1.0, batch_size=16, lr=5e-3, threads=1)


def settings(quick: bool, data: str | None, model: str | None, out: Path) -> tuple[str, str, dict[str, Any]]:
    """(model spec, data set name, TrainConfig fields) shared by rank-based experiments."""
    if quick:
        return (model or str(quick_model_dir(out.parent / "_quick-model"))), (data or DEFAULT_DATA), dict(QUICK_TRAIN)
    return (model or DEFAULT_MODEL), (data or DEFAULT_DATA), dict(DEFAULT_TRAIN)


def rank_specs(quick: bool, data: str | None, model: str | None, out: Path) -> list[RunSpec]:
    """One LoRA run per rank on the preset targets (Wq, Wv for BERT)."""
    model_spec, data_name, train = settings(quick, data, model, out)
    specs = []
    for r in (QUICK_RANKS if quick else RANKS):
        config = TrainConfig(model=model_spec, **data_fields(data_name), lora={"r": r, "alpha": ALPHA}, seed=0,
                             eval_every=0, checkpoint_every=50, progress=False, **train)
        specs.append(RunSpec(f"r{r}", config, {"r": r, "targets": "Wq,Wv", "alpha": ALPHA}))
    return specs


def metric_name(results: list[RunResult]) -> str:
    """The task metric of these runs: accuracy for classification, pearson for regression, loss otherwise."""
    dev = results[0].dev
    return next((m for m in ("accuracy", "pearson") if m in dev), "loss")


def subspace_rows(similarity) -> list[dict[str, Any]]:
    """Per module: φ of the top directions, its random baseline, and the mean φ over the (i, j) grid."""
    rows = []
    for s in similarity:
        phi_1_8 = s.phi[0][min(7, s.r2 - 1)]
        rows.append({"module": s.name, "dim": s.dim, "r1": s.r1, "r2": s.r2,
                     "phi(1,1)": s.top_overlap, "phi(1,1) random": s.random_mean[0][0],
                     "phi(1,8)": phi_1_8, "phi(1,8) random": s.random_mean[0][min(7, s.r2 - 1)],
                     "mean phi": s.mean_phi, "mean phi random": s.mean_expected})
    return rows


def _subspace(results: list[RunResult], r_small: int, r_large: int, out: Path, log: Callable[[str], None]):
    """φ between the seed-0 adapters of ranks r_small and r_large (None when either run is not in the grid)."""
    by_rank = {r.info["r"]: r for r in results if r.info.get("seed", 0) == 0}
    if r_small not in by_rank or r_large not in by_rank:
        log(f"subspace similarity skipped: the r={r_small} and r={r_large} runs are not both in this grid")
        return None
    log(f"subspace similarity φ between r={r_small} and r={r_large}")
    with one_thread():
        analysis = analyze_adapters([by_rank[r_small].folder / "adapter", by_rank[r_large].folder / "adapter"],
                                    trials=20, seed=0)
    write_report(analysis, out / "analysis")
    return subspace_rows(analysis.similarity)


def run(out: str | os.PathLike = "runs/experiments/rank", quick: bool = False, data: str | None = None,
        model: str | None = None, log: Callable[[str], None] = print, seeds: int | None = None,
        runs: list[str] | None = None) -> ExperimentReport:
    """Train (or reuse) the rank grid, compare the two φ adapters, write the report into `out`.
    seeds: train every rank with seeds 0..seeds-1 (median and spread in the `seeds` table); runs: only
    these ranks ("r1", "r4", ...)."""
    out = Path(out)
    specs = with_seeds(select_runs(rank_specs(quick, data, model, out), runs), seeds or 1)
    results = run_grid(specs, out / "runs", log=log)
    metric = metric_name(results)
    rows = [r.row(metric) for r in results]
    r_small, r_large = (8, QUICK_RANKS[-1]) if quick else (8, 64)
    sub_rows = _subspace(results, r_small, r_large, out, log)

    medians = seed_medians(results, metric)
    ranks = list(dict.fromkeys(r.info["r"] for r in results))
    figures = {"metric_vs_rank": line_figure(
        {"Wq,Wv": (ranks, [medians[f"r{r}"] for r in ranks])},
        "rank r", f"dev {metric}" + (" (median over seeds)" if (seeds or 1) > 1 else ""),
        "task metric against LoRA rank", log_x=True)}
    if sub_rows:
        names = [row["module"] for row in sub_rows]
        figures["phi_top"] = line_figure(
            {"φ(1,1) measured": (list(range(len(names))), [row["phi(1,1)"] for row in sub_rows]),
             "φ(1,1) random": (list(range(len(names))), [row["phi(1,1) random"] for row in sub_rows])},
            "module (index into the subspace table)", "φ", f"top-direction overlap, r={r_small} vs r={r_large}")
    main = Table("rank", f"Task metric against rank (LoRA on Wq, Wv, α = {ALPHA:g})",
                 ["run", "r", "seed", "targets", f"dev_{metric}", f"test_{metric}", "dev_loss", "trainable_params",
                  "adapter_params", "steps", "seconds_per_step", "train_seconds"], rows,
                 "adapter_params = LoRA factor values = 2·L̂·d·r; trainable_params adds the classifier head.")
    tables = [main]
    if sub_rows is not None:
        tables.append(Table("subspace", f"Subspace similarity φ between the r={r_small} and r={r_large} adapters "
                            f"(right-singular vectors of A)",
                            ["module", "dim", "r1", "r2", "phi(1,1)", "phi(1,1) random", "phi(1,8)", "phi(1,8) random",
                             "mean phi", "mean phi random"], sub_rows,
                            "φ(i,j) = ‖U_iᵀU_j‖²_F / min(i,j); random = mean over 20 pairs of Gaussian matrices of "
                            "the same shapes. Paper: the top direction overlaps (φ > 0.5), the rest is near random. "
                            "Full heatmaps: analysis/report.html."))
    by_seed = seed_table(results, metric, ["r", "targets"])
    if by_seed is not None:
        tables.append(by_seed)
    meta = grid_meta(quick, specs, results, ["train_limit", "dev_limit", "epochs", "batch_size", "lr", "max_length"],
                     alpha=ALPHA, metric=metric, seeds=seeds or 1)
    report = ExperimentReport("rank", "Experiment: rank (paper Table 6 and §7.2)",
                              "LoRA on Wq and Wv at several ranks; then the subspace similarity between the "
                              f"r={r_small} and r={r_large} adapters, next to random subspaces.",
                              tables, figures, meta,
                              extra_html='<p>Spectra, φ heatmaps per module: <a href="analysis/report.html">'
                                         'analysis/report.html</a>.</p>' if sub_rows is not None else "")
    write_experiment_report(report, out)
    return report
