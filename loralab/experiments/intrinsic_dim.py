"""intrinsic-dim: how few trained values reach 90 % of full fine-tuning? (Aghajanyan, Zettlemoyer, Gupta
2020, "Intrinsic Dimensionality Explains the Effectiveness of Language Model Fine-Tuning"; Li et al. 2018.)

Train only z (d values) with θ = θ0 + P·z, P a fixed random D × d Fastfood projection over all D
parameter values (loralab.baselines.intrinsic, method "intrinsic"), for several d; d90 is the smallest d
whose dev metric reaches 90 % of full fine-tuning's. Next to it: LoRA r = 1 on Wq, Wv (its trained
values), and the singular-value spectrum of the full fine-tuning update ΔW = W_ft − W0 of every weight
matrix: is the update that full fine-tuning finds low-rank itself?

    from loralab.experiments.intrinsic_dim import fastfood_projection, subspace_run, d90
    P = fastfood_projection(D=10_000, d=50)           # call P(z) for P·z
    result = subspace_run(200, quick=True)            # trains z for d = 200 on the quick model; result.metric

Default: all-MiniLM-L6-v2 on GLUE MRPC (2,576 training pairs, 1,500 dev pairs, max 64 tokens), every
run MIN_STEPS optimizer steps of 16 (≈ 1.9 epochs of MRPC), one evaluation at the end; `--data sst2`
uses the fixed 8,000-sentence subset of the other experiments (500 steps = 1 epoch). The classifier head
lies inside the subspace (it starts random, as for every method). d90 is also reported against the
majority-class baseline (this MRPC dev split is 66.7 % paraphrases, so 90 % of a full fine-tuning
accuracy near 80 % is barely above always answering "paraphrase"): the smallest d closing 90 % of the
gap majority → full.
"""
from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loralab.analysis.full_update import update_spectrum
from loralab.baselines.fastfood import FastfoodProjection, fastfood_projection
from loralab.errors import LoraLabError
from loralab.experiments.common import (DEFAULT_MODEL, RunResult, RunSpec, grid_meta, majority_fraction,
                                        quick_model_dir, run_grid, select_runs, train_set_size)
from loralab.experiments.methods import METHOD_GRID
from loralab.experiments.rank import ALPHA, metric_name
from loralab.experiments.report import ExperimentReport, Table, line_figure, write_experiment_report
from loralab.experiments.step_time import measure_step_times
from loralab.files import write_json
from loralab.training.config import TrainConfig

# Chosen to bracket d90 for the default model and data: on MiniLM / MRPC at 300 steps the threshold lies
# between 30,000 and 50,000 (docs/experiments.md); d <= 1,000 still answers the majority class there.
DIMS = (100, 1000, 10000, 30000, 50000, 100000)
QUICK_DIMS = (4, 16, 64)
STEP_TIME_DIMS = (10, 1000, 10000)     # the projection's cost grows with log2(d) only
DEFAULT_DATA = "mrpc"
# Adam's learning rate for z: lr(d) = LR_AT_REFERENCE · √(REFERENCE_D / d). Adam moves every coordinate of z
# by about lr per step and P's columns are unit-norm and nearly orthogonal, so one step moves θ by about
# lr·√d: this rule keeps that step the same size for every d. The anchor, 0.1 at d = 300, was the best of
# 1e-2, 3e-2, 1e-1 in a 60-step MRPC trial (dev loss 0.689, 0.676, 0.641).
LR_AT_REFERENCE, QUICK_LR_AT_REFERENCE, REFERENCE_D = 0.1, 0.05, 300
MIN_STEPS, QUICK_STEPS = 300, 8
TRAIN = dict(train_limit=8000, dev_limit=None, max_length=64, batch_size=16, threads=1)
QUICK_TRAIN = dict(train_limit=128, dev_limit=64, max_length=32, batch_size=16, threads=1)
FRACTION = 0.9
# Aghajanyan et al. 2020 (abstract): ~200 trained values reach 90 % of full fine-tuning on MRPC (RoBERTa).
PAPER_NOTE = ("Aghajanyan et al. 2020: about 200 trained values reach 90 % of full fine-tuning's MRPC score "
              "for RoBERTa (their SAID variant adds one scale per layer); larger, longer-pretrained models "
              "have lower intrinsic dimension.")

__all__ = ["DIMS", "FastfoodProjection", "SubspaceRun", "d90", "fastfood_projection", "intrinsic_specs", "run",
           "subspace_lr", "subspace_run", "update_spectrum"]


@dataclass
class SubspaceRun:
    """One trained subspace: d, the dev metric (name and value), trained values, wall seconds per step, and
    the run folder (None when it was a temporary one, already removed)."""

    d: int
    metric_name: str
    metric: float
    trainable_params: int
    seconds_per_step: float
    folder: Path | None


def _settings(quick: bool, data: str | None, model: str | None, out: Path) -> tuple[str, str, dict[str, Any]]:
    data_name = data or DEFAULT_DATA
    if quick:
        return model or str(quick_model_dir(out.parent / "_quick-model")), data_name, dict(QUICK_TRAIN)
    return model or DEFAULT_MODEL, data_name, dict(TRAIN)


def _config(quick: bool, data: str | None, model: str | None, out: Path, lr: float, steps: int | None = None,
            **method: Any):
    """One run's TrainConfig; steps: optimizer steps (default: the experiment's rule, at least MIN_STEPS)."""
    model_spec, data_name, train = _settings(quick, data, model, out)
    train_size = train.pop("train_limit")
    if steps is None:
        examples = train_size if quick else min(train_size, train_set_size(data_name))
        steps = QUICK_STEPS if quick else max(MIN_STEPS, math.ceil(examples / train["batch_size"]))
    return TrainConfig(model=model_spec, data=data_name, train_limit=train_size, epochs=1.0, max_steps=steps,
                       lr=lr, seed=0, eval_every=steps, checkpoint_every=0, progress=False, **train, **method)


def subspace_lr(d: int, quick: bool = False) -> float:
    """The learning rate of z for dimension d (see LR_AT_REFERENCE), rounded to 3 significant digits."""
    anchor = QUICK_LR_AT_REFERENCE if quick else LR_AT_REFERENCE
    return float(f"{anchor * math.sqrt(REFERENCE_D / d):.3g}")


def subspace_spec(d: int, quick: bool, data: str | None, model: str | None, out: Path,
                  lr: float | None = None, steps: int | None = None) -> RunSpec:
    """One random-subspace run; lr and steps default to the experiment's (subspace_lr(d), the step rule)."""
    lr = lr or subspace_lr(d, quick)
    config = _config(quick, data, model, out, lr, steps, method="intrinsic", method_options={"d": d})
    return RunSpec(f"d{d}", config, {"method": "intrinsic", "d": d, "lr": lr})


def intrinsic_specs(quick: bool, data: str | None, model: str | None, out: Path,
                    dims: Sequence[int] | None = None, steps: int | None = None) -> list[RunSpec]:
    """Full fine-tuning, LoRA r=1 on Wq, Wv, then one random-subspace run per d; steps: every run's optimizer
    steps (default: the experiment's rule)."""
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise LoraLabError(f"max steps must be a positive integer, got {steps!r}")
    full_lr = METHOD_GRID["full"][2 if quick else 1]
    lora_lr = METHOD_GRID["lora"][2 if quick else 1]
    specs = [RunSpec("full", _config(quick, data, model, out, full_lr, steps, method="full"),
                     {"method": "full", "d": None, "lr": full_lr}),
             RunSpec("lora-r1", _config(quick, data, model, out, lora_lr, steps, lora={"r": 1, "alpha": ALPHA}),
                     {"method": "lora r=1", "d": None, "lr": lora_lr})]
    for d in dims or (QUICK_DIMS if quick else DIMS):
        if not isinstance(d, int) or d < 1:
            raise LoraLabError(f"subspace dimensions must be positive integers, got {d!r}")
        specs.append(subspace_spec(d, quick, data, model, out, steps=steps))
    return specs


def subspace_run(d: int, quick: bool = True, data: str | None = None, model: str | None = None,
                 out: str | os.PathLike | None = None, lr: float | None = None, steps: int | None = None,
                 log: Callable[[str], None] = print) -> SubspaceRun:
    """Train z for one d and return the dev metric. quick: the 2-layer random BERT on 128 MRPC pairs, 8 steps
    (seconds; it learns little); otherwise all-MiniLM-L6-v2 with the experiment's settings (MIN_STEPS steps,
    minutes) unless `steps` says fewer. data: a builtin data set (default MRPC). out: the runs folder (a
    finished run of the same d there is read back, not retrained); default a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="loralab-subspace-") as scratch:
        folder = Path(out) if out is not None else Path(scratch)
        spec = subspace_spec(d, quick, data, model, folder / "_spec", lr, steps)
        result = run_grid([spec], folder, log=log)[0]
        name = metric_name([result])
        return SubspaceRun(d, name, result.metric(name), result.trainable_params, result.seconds_per_step,
                           result.folder if out is not None else None)


def d90(metric_by_d: dict[int, float], reference: float, floor: float = 0.0, fraction: float = FRACTION) -> int | None:
    """Smallest d whose metric reaches floor + fraction·(reference − floor); None if none does.
    floor = 0 is Aghajanyan et al.'s d90 (90 % of the full fine-tuning metric)."""
    target = floor + fraction * (reference - floor)
    reached = [d for d, value in metric_by_d.items() if math.isfinite(value) and value >= target]
    return min(reached) if reached else None


def _spectrum_figure(rows: list[dict[str, Any]]) -> bytes:
    """Share of ‖ΔW‖_F² in the top k directions, for the matrices of the middle layer and a Gaussian."""
    import re

    layers = sorted({int(m.group(1)) for r in rows if (m := re.search(r"\.(\d+)\.", r["matrix"]))})
    middle = f".{layers[len(layers) // 2]}." if layers else ""
    chosen = [r for r in rows if middle in r["matrix"]] or rows[:4]
    series = {}
    for row in chosen:
        energy = [s * s for s in row["singular_values"]]
        total = sum(energy) or 1.0
        cumulative, running = [], 0.0
        for value in energy:
            running += value
            cumulative.append(running / total)
        series[row["matrix"].split(middle, 1)[-1] if middle else row["matrix"]] = (
            list(range(1, len(cumulative) + 1)), cumulative)
    title = f"full fine-tuning ΔW, layer {middle.strip('.')}: energy in the top k directions" if middle else \
        "full fine-tuning ΔW: energy in the top k directions"
    return line_figure(series, "k (log scale)", "share of ‖ΔW‖_F²", title, log_x=True, hline=(FRACTION, "90 %"))


def _result_rows(results: list[RunResult], metric: str, reference: float) -> list[dict[str, Any]]:
    full_step = next((r.seconds_per_step for r in results if r.name == "full"), math.nan)
    rows = []
    for r in results:
        row = r.row(metric)
        value = r.metric(metric)
        row.update(trained_values=r.trainable_params, percent_of_full=100 * value / reference if reference else None,
                   step_time_vs_full=r.seconds_per_step / full_step if full_step else None)
        rows.append(row)
    return rows


def step_times(out: Path, quick: bool, model_spec: str, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """CPU and wall time of one training step: full fine-tuning, LoRA r=1, subspaces of several d, measured
    side by side (loralab.experiments.step_time); read back from out/step_time.json when it exists."""
    import json

    saved = out / "step_time.json"
    if saved.is_file():
        log(f"step time: reading {saved}")
        return json.loads(saved.read_text(encoding="utf-8"))
    log("step time: full fine-tuning vs LoRA r=1 vs random subspaces, one batch, side by side")
    methods = [("full", "full", {}), ("lora r=1", "lora", {"r": 1, "alpha": ALPHA})]
    methods += [(f"intrinsic d={d}", "intrinsic", {"d": d}) for d in (QUICK_DIMS if quick else STEP_TIME_DIMS)]
    rows = measure_step_times(model_spec, methods, seq_len=32 if quick else 64, rounds=3 if quick else 5)
    write_json(saved, rows)
    return rows


def run(out: str | os.PathLike = "runs/experiments/intrinsic-dim", quick: bool = False, data: str | None = None,
        model: str | None = None, log: Callable[[str], None] = print, dims: Sequence[int] | None = None,
        runs: Sequence[str] | None = None, max_steps: int | None = None) -> ExperimentReport:
    """Train (or reuse) full fine-tuning, LoRA r=1 and one subspace per d; d90; the spectrum of full FT's ΔW.
    max_steps: every run's optimizer steps instead of the default rule (a cheaper, shorter sweep: give it
    its own `out`, finished runs there are read back whatever their steps)."""
    out = Path(out)
    specs = select_runs(intrinsic_specs(quick, data, model, out, dims, max_steps), runs)
    results = run_grid(specs, out / "runs", isolate=not quick, log=log)
    metric = metric_name(results)
    by_name = {r.name: r for r in results}
    reference = by_name["full"].metric(metric) if "full" in by_name else math.nan
    floor = majority_fraction(specs[0].config) if metric == "accuracy" else 0.0
    by_d = {r.info["d"]: r.metric(metric) for r in results if r.info["method"] == "intrinsic"}
    summary = {"metric": metric, "full_fine_tuning": reference, "majority_baseline": floor,
               "d90": d90(by_d, reference), "d90_above_majority": d90(by_d, reference, floor),
               "lora_r1": by_name["lora-r1"].metric(metric) if "lora-r1" in by_name else None,
               "lora_r1_lora_values": by_name["lora-r1"].adapter_params if "lora-r1" in by_name else None,
               "lora_r1_trained_values": by_name["lora-r1"].trainable_params if "lora-r1" in by_name else None}
    log(f"d90 = {summary['d90']}, above the majority baseline: {summary['d90_above_majority']} "
        f"(full fine-tuning {reference:.4f}, majority {floor:.4f})")
    rows = _result_rows(results, metric, reference)
    main = Table("intrinsic_dim", f"dev {metric} against the subspace dimension d",
                 ["run", "method", "d", "lr", f"dev_{metric}", "percent_of_full", "dev_loss", "trained_values",
                  "steps", "seconds_per_step", "step_time_vs_full"], rows,
                 f"d90 = {summary['d90']} (90 % of full fine-tuning's {reference:.4f}); d90 above the majority "
                 f"baseline ({floor:.4f}) = {summary['d90_above_majority']}. {PAPER_NOTE}")
    figures = {"metric_vs_d": line_figure(
        {"random subspace (x = d)": (list(by_d), list(by_d.values())),
         **({"LoRA r=1 (x = its LoRA values)": ([summary["lora_r1_lora_values"]], [summary["lora_r1"]])}
            if summary["lora_r1"] is not None else {})},
        "trained values (log scale)", f"dev {metric}", "random-subspace training against d", log_x=True,
        log_base=10, hline=(FRACTION * reference, "90 % of full fine-tuning") if math.isfinite(reference) else None)}
    tables = [main]
    if "full" in by_name:
        spectrum = update_spectrum(by_name["full"].folder / "adapter" / "trainable.safetensors",
                                   specs[0].config.model)
        columns = ["matrix", "shape", "full_rank", "delta_fro", "relative_change", "effective_rank", "stable_rank",
                   "rank_50", "rank_90", "top1_energy", "gaussian_effective_rank", "gaussian_rank_90"]
        tables.append(Table("update_spectrum", "Spectrum of the full fine-tuning update ΔW = W_ft − W0", columns,
                            [{k: row[k] for k in columns} for row in spectrum],
                            "rank_90: directions holding 90 % of ‖ΔW‖_F²; gaussian_*: a random matrix of the same "
                            "shape. LoRA r=1 and r=8 fit 1 and 8 directions per matrix."))
        figures["update_spectrum"] = _spectrum_figure(spectrum)
        ranks = sorted(r["rank_90"] for r in spectrum)
        summary["median_update_rank_90"] = ranks[len(ranks) // 2] if ranks else None
    tables.append(Table("step_time", "Time of one training step (batch 16, measured side by side)",
                        ["method", "trained_values", "cpu_ms_per_step", "wall_ms_per_step", "cpu_vs_first",
                         "wall_vs_first"], step_times(out, quick, specs[0].config.model, log),
                        "Forward, backward and AdamW step on one fixed batch, median of interleaved repeats; CPU "
                        "time of the process (robust to other jobs). A subspace step is a full backward pass "
                        "plus the projection P·z and its transpose over all D values."))
    first = specs[0].config
    meta = grid_meta(quick, specs, results, ["train_limit", "max_length"], steps=first.max_steps,
                     batch_size=first.batch_size, summary=summary)
    report = ExperimentReport("intrinsic-dim", "Experiment: intrinsic dimension (Aghajanyan et al. 2020)",
                              "Only z (d values) trains: θ = θ0 + P·z with a fixed random Fastfood projection P over "
                              "all parameters. Full fine-tuning and LoRA r=1 are the references.",
                              tables, figures, meta)
    write_experiment_report(report, out)
    return report
