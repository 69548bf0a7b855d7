"""variants: LoRA, rsLoRA, DoRA, PiSSA and LoRA+ side by side at one trainable budget, on SST-2 and MRPC.

Every variant adapts the preset targets (Wq, Wv for BERT) at r = 8, α = 16, one learning rate for all; they
differ only in what loralab's registries and TrainConfig already offer:

    lora        plain LoRA, scale α/r, Kaiming-uniform A, B = 0                     (Hu et al. 2021)
    rslora      scale α/√r instead of α/r (LoraConfig.rslora)                        (Kalajdzievski 2023)
    dora        magnitude-direction split (LoraConfig.variant="dora")                (Liu et al. 2024)
    pissa       A, B from W0's top-r singular triplets, W0 keeps the residual        (Meng et al. 2024)
                (LoraConfig.init="pissa")
    lora-plus   B's learning rate × 16 (TrainConfig.lora_plus_ratio; 2^4 is the usual choice, Hayou et al. 2024)
    lora-plus-x2, -x4, -x8   LoRA+ at other ratios: only when --runs names them ("sst2-lora-plus-x4")

Budget: DoRA's magnitude vector adds d values per adapted matrix. `match_budget` lowers the rank of the first
adapted matrices (plan order) by one, one matrix at a time, until DoRA trains no more LoRA values than plain
LoRA; on MiniLM (Wq, Wv: 12 matrices of 384 × 384) six matrices at r = 7 and six at r = 8 give exactly the
same count. Every count comes from loralab's own plan of the injection (`loralab.budget.count.planned_modules`);
the table states the budget of each row and its difference to plain LoRA's.

Measured per run: the dev metric at the end (`dev_<metric>`) and the best on the evaluation curve (the saved
adapter, which the forgetting probe loads), forgetting (loralab.experiments.forgetting: the base encoder's
paraphrase ROC-AUC on MRPC dev before − after), steps to 90 % of the best dev score (the first evaluation at or
above 0.9 × the best score of any run on that data set; and of the run's own best), seconds per optimizer step.
`--seeds N`: medians and spreads. `--data sst2` (or mrpc, or "sst2,mrpc", the default) picks the data sets.

`--data e2e`: the same five variants on a causal LM, SmolLM2-135M-Instruct, trained as the e2e and forgetting
experiments train it (E2E NLG's prompt, 320 examples, one epoch of batch 8 = 40 steps, lr 5e-4, LoRA α 32,
dropout 0.1) at r = 8 on Wq, Wv; the dev metric is the loss on 100 held-out test.txt MRs (lower is better: a
run reaches "90 % of the best" at the first evaluation whose loss is at most best / 0.9), evaluated every
E2E_EVAL_EVERY steps, and forgetting is the general-text probe of the forgetting experiment (loss after − loss
before on the 2012 convention speeches). Causal and encoder data sets train different models, so e2e runs alone.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from loralab.budget.count import lora_config_class, planned_modules
from loralab.budget.skeleton import build_skeleton
from loralab.errors import LoraLabError
from loralab.experiments.common import (DEFAULT_MODEL, RunResult, RunSpec, grid_meta, one_thread, quick_model_dir,
                                        run_grid, select_runs, spread, with_seeds)
from loralab.experiments.forgetting import e2e_setup, probe_for
from loralab.experiments.rank import ALPHA, DEFAULT_TRAIN, QUICK_TRAIN, metric_name
from loralab.experiments.report import ExperimentReport, Table, line_figure, scatter_figure, write_experiment_report
from loralab.experiments.targets import lora_targets
from loralab.models.loading import resolve_model_spec
from loralab.training.config import TrainConfig

RANK = 8
LORA_PLUS_RATIO = 16.0          # Hayou et al. 2024: 2^4, the usual choice (the authors: model- and task-dependent)
TARGET_FRACTION = 0.9           # steps until the dev score first reaches this fraction of the best
DEFAULT_DATA = ("sst2", "mrpc")
# Training per data set: SST-2 as the rank experiment (8,000 sentences, 1 epoch = 500 steps); MRPC's examples
# are fewer (all of its train split) and longer (pairs of sentences): 128 tokens, 3 epochs. Other --data: SST-2's.
DATA_TRAIN: dict[str, dict[str, Any]] = {"sst2": dict(DEFAULT_TRAIN),
                                         "mrpc": dict(DEFAULT_TRAIN, train_limit=None, max_length=128, epochs=3.0)}
EVAL_EVERY = 50                 # optimizer steps between dev evaluations (the curve)
QUICK_EVAL_EVERY = 2
E2E_EVAL_EVERY = 5              # E2E trains 40 steps: 8 points on its curve
CAUSAL_DATA = "e2e"             # the causal LM data set (SmolLM2, general-text probe); runs without the others


@dataclass(frozen=True)
class VariantSpec:
    """One variant of the grid: LoraConfig fields beyond r, alpha and targets; TrainConfig fields; its paper."""
    lora: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    paper: str = ""


VARIANT_GRID: dict[str, VariantSpec] = {
    "lora": VariantSpec({}, {}, "Hu et al. 2021"),
    "rslora": VariantSpec({"rslora": True}, {}, "Kalajdzievski 2023"),
    "dora": VariantSpec({"variant": "dora"}, {}, "Liu et al. 2024"),
    "pissa": VariantSpec({"init": "pissa"}, {}, "Meng et al. 2024"),
    "lora-plus": VariantSpec({}, {"lora_plus_ratio": LORA_PLUS_RATIO}, "Hayou et al. 2024"),
}
# LoRA+ at other B/A ratios: in the grid only when --runs names them ("sst2-lora-plus-x4", ...)
LORA_PLUS_SWEEP = (2.0, 4.0, 8.0)
EXTRA_GRID: dict[str, VariantSpec] = {f"lora-plus-x{ratio:g}": VariantSpec({}, {"lora_plus_ratio": ratio},
                                                                          "Hayou et al. 2024")
                                      for ratio in LORA_PLUS_SWEEP}


# --------------------------------------------------------------------------------------------------
# Equal trainable budgets, counted by loralab's plan of the injection
# --------------------------------------------------------------------------------------------------

def lora_budget_count(model, fields: dict[str, Any]) -> int:
    """Trainable LoRA values (factors and a variant's extra tensors; head excluded) of LoraConfig(**fields) on
    `model` (a real or meta-device skeleton), from loralab's own injection plan."""
    return sum(m.num_params for m in planned_modules(model, lora_config_class()(**fields)))


def match_budget(model, fields: dict[str, Any], target: int) -> dict[str, int]:
    """A rank_pattern {module name: r - 1} lowering the rank of the first adapted matrices (plan order) by one
    each, as long as the count stays at or above `target`: the budget closest to `target` from above that
    one step of rank per matrix reaches ({} when `fields` already fit). Fused-slice modules are left alone."""
    plan = planned_modules(model, lora_config_class()(**fields))
    total = sum(m.num_params for m in plan)
    pattern: dict[str, int] = {}
    for m in plan:
        step = m.d_out + m.d_in       # one rank of A (r, d_in) and B (d_out, r)
        if total <= target:
            break
        if m.slices or m.r <= 1 or total - step < target:
            continue
        pattern[m.name] = m.r - 1
        total -= step
    return pattern


def skeleton_model(model_spec: str):
    """The meta-device model (no weights read) whose plan the budgets count."""
    return build_skeleton(str(resolve_model_spec(model_spec))).model


# --------------------------------------------------------------------------------------------------
# The eval curve
# --------------------------------------------------------------------------------------------------

def dev_curve(folder: Path, metric: str) -> list[tuple[int, float]]:
    """[(optimizer step, dev metric)] of a finished run, in step order, from its metrics.json history."""
    metrics = json.loads((Path(folder) / "metrics.json").read_text(encoding="utf-8"))
    return sorted((int(row["step"]), float(row[metric])) for row in metrics.get("history") or []
                  if row.get("split") == "dev" and metric in row)


def steps_to_reach(curve: Sequence[tuple[int, float]], target: float, higher: bool = True) -> int | None:
    """The first step whose score is at or above `target` (at or below it when lower is better, a loss), None
    when none is."""
    reached = (lambda score: score >= target) if higher else (lambda score: score <= target)
    return next((step for step, score in curve if math.isfinite(score) and reached(score)), None)


def fraction_of_best(best: float, higher: bool = True) -> float:
    """The score counted as TARGET_FRACTION of `best`: 0.9 × an accuracy; a loss at most best / 0.9."""
    return TARGET_FRACTION * best if higher else best / TARGET_FRACTION


# --------------------------------------------------------------------------------------------------
# The grid
# --------------------------------------------------------------------------------------------------

def data_sets(data: str | None) -> list[str]:
    """The data sets of the grid: "sst2", "sst2,mrpc", "e2e" ...; None: SST-2 and MRPC."""
    if data is None:
        return list(DEFAULT_DATA)
    names = [part.strip() for part in data.split(",") if part.strip()]
    if not names or len(set(names)) != len(names):
        raise LoraLabError(f"--data takes builtin data set names separated by commas, each once, got {data!r}")
    if CAUSAL_DATA in names and len(names) > 1:
        raise LoraLabError(f"--data {data}: {CAUSAL_DATA} trains a causal LM with its own probe; run it alone "
                           f"(--data {CAUSAL_DATA}) and the encoder data sets in another call")
    return names


def causal_variant_specs(quick: bool, model: str | None, out: Path) -> list[RunSpec]:
    """Each variant on E2E ("e2e-<variant>") with the forgetting experiment's E2E data and schedule, r = RANK on
    Wq, Wv with E2E's α and dropout, the dev loss every E2E_EVAL_EVERY steps; DoRA lowered to LoRA's budget.
    --quick: the 2-layer random LLaMA of the e2e experiment, 32 examples."""
    e2e, train, dev = e2e_setup(quick, model, out)
    model_spec = e2e.model
    base = {"r": RANK, "alpha": e2e.alpha, "dropout": e2e.dropout, **lora_targets(model_spec)["Wq,Wv"]}
    common = {"dev_file": str(dev), "eval_every": QUICK_EVAL_EVERY if quick else E2E_EVAL_EVERY,
              "checkpoint_every": 0, "log_every": 10}
    return _grid(CAUSAL_DATA, model_spec, base,
                 lambda fields, variant: replace(e2e, extra={**common, "lora": fields, **variant.train})
                 .train_config(train))


def _grid(data_name: str, model_spec: str, base: dict[str, Any],
          config: Callable[[dict[str, Any], VariantSpec], TrainConfig]) -> list[RunSpec]:
    """One RunSpec per variant on `data_name`: LoraConfig fields `base` + the variant's, DoRA's ranks lowered to
    plain LoRA's budget; config(fields, variant) gives its TrainConfig."""
    skeleton = skeleton_model(model_spec)
    target = lora_budget_count(skeleton, base)
    specs = []
    for name, variant in {**VARIANT_GRID, **EXTRA_GRID}.items():
        fields = {**base, **variant.lora}
        pattern = match_budget(skeleton, fields, target)
        if pattern:
            fields["rank_pattern"] = pattern
        budget = lora_budget_count(skeleton, fields)
        ranks = sorted({*pattern.values(), base["r"]}) if pattern else [base["r"]]
        specs.append(RunSpec(f"{data_name}-{name}", config(fields, variant), {
            "data": data_name, "variant": name, "method": "lora", "r": "/".join(str(r) for r in ranks),
            "lowered": len(pattern), "budget": budget, "budget_diff": budget - target, "paper": variant.paper,
            "extra": name in EXTRA_GRID}))
    return specs


def variant_specs(quick: bool, data: str | None, model: str | None, out: Path) -> list[RunSpec]:
    """Each variant on each data set ("<data>-<variant>"), DoRA's ranks lowered to plain LoRA's budget."""
    names = data_sets(data)
    if names == [CAUSAL_DATA]:
        return causal_variant_specs(quick, model, out)
    model_spec = model or (str(quick_model_dir(out.parent / "_quick-model")) if quick else DEFAULT_MODEL)
    specs = []
    for data_name in names:
        train = dict(QUICK_TRAIN) if quick else dict(DATA_TRAIN.get(data_name, DEFAULT_TRAIN))
        specs += _grid(data_name, model_spec, {"r": RANK, "alpha": ALPHA},
                       lambda fields, variant: TrainConfig(
                           model=model_spec, data=data_name, lora=fields, seed=0,
                           eval_every=QUICK_EVAL_EVERY if quick else EVAL_EVERY, checkpoint_every=50,
                           progress=False, **{**train, **variant.train}))
    return specs


def run_rows(results: Sequence[RunResult], metric: str, probe: Any, before: float,
             after: dict[str, float]) -> list[dict]:
    """One row per run: final and best dev metric, the probe before and after and forgetting, steps to 90 % (of
    the data set's best and of its own), seconds per step, the LoRA budget and the trainable values with the
    head. probe: a loralab.experiments.forgetting probe (its column names the probe's measurement)."""
    higher = metric != "loss"
    pick = max if higher else min
    curves = {r.name: dev_curve(r.folder, metric) for r in results}
    scores_of_data: dict[str, list[float]] = {}
    for r in results:
        scores_of_data.setdefault(r.info["data"], []).extend(s for _, s in curves[r.name] if math.isfinite(s))
    best_of_data = {data_name: pick(scores) for data_name, scores in scores_of_data.items() if scores}
    rows = []
    for r in results:
        curve = curves[r.name]
        final = curve[-1][1] if curve else math.nan
        best = pick((s for _, s in curve), default=math.nan)
        reference = best_of_data.get(r.info["data"], math.nan)
        rows.append({"run": r.name, "base_run": r.info["base_run"], "seed": r.info["seed"],
                     **{k: r.info[k] for k in ("data", "variant", "r", "lowered", "budget", "budget_diff")},
                     f"dev_{metric}": final, f"best_dev_{metric}": best,
                     f"{probe.column}_before": before, f"{probe.column}_after": after[r.name],
                     "forgetting": probe.forgetting(before, after[r.name]),
                     "steps_to_90": steps_to_reach(curve, fraction_of_best(reference, higher), higher),
                     "steps_to_90_own": steps_to_reach(curve, fraction_of_best(best, higher), higher),
                     "steps": r.steps, "seconds_per_step": r.seconds_per_step,
                     # the head's values from the saved files; the LoRA values from the plan (PiSSA's file also
                     # holds its initial factors, so its saved count is twice the trained one)
                     "trainable_params": r.info["budget"] + r.trainable_params - r.adapter_params})
    return rows


SUMMARY_COLUMNS = ("dev_{metric}", "best_dev_{metric}", "forgetting", "steps_to_90", "seconds_per_step")


def summary_rows(rows: Sequence[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """One row per data set and variant: median, min and max over seeds of each measurement."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["base_run"], []).append(row)
    out = []
    for base, members in groups.items():
        summary = {"run": base, **{k: members[0][k] for k in ("data", "variant", "r", "budget", "budget_diff")},
                   "seeds": len(members)}
        for template in SUMMARY_COLUMNS:
            column = template.format(metric=metric)
            values = [math.nan if m[column] is None else float(m[column]) for m in members]
            stats = spread(values)
            summary.update({f"{column}_{k}": stats[k] for k in ("median", "min", "max")})
            if column == "steps_to_90":
                summary["steps_to_90_reached"] = sum(1 for m in members if m[column] is not None)
        out.append(summary)
    return out


def _figures(results: Sequence[RunResult], summary: Sequence[dict], metric: str, many: bool,
             forgetting_unit: str) -> dict[str, bytes]:
    """Seed-0 dev curves per data set (with the 90 % line), and the median score against median forgetting."""
    higher = metric != "loss"
    figures = {}
    for data_name in dict.fromkeys(r.info["data"] for r in results):
        members = [r for r in results if r.info["data"] == data_name]
        curves = {r.info["variant"]: dev_curve(r.folder, metric) for r in members if r.info["seed"] == 0}
        best = (max if higher else min)((s for c in curves.values() for _, s in c), default=math.nan)
        series = {name: ([s for s, _ in c], [v for _, v in c]) for name, c in curves.items() if c}
        if series:
            figures[f"curves_{data_name}"] = line_figure(
                series, "optimizer step", f"dev {metric}", f"{data_name}: dev {metric} during training (seed 0)",
                hline=(fraction_of_best(best, higher), f"{TARGET_FRACTION:.0%} of the best")
                if math.isfinite(best) else None)
    points = {f"{s['data']} {s['variant']}": (s["forgetting_median"], s[f"dev_{metric}_median"]) for s in summary}
    suffix = " (median over seeds)" if many else ""
    figures["score_vs_forgetting"] = scatter_figure(points, f"forgetting ({forgetting_unit})" + suffix,
                                                    f"dev {metric}" + suffix + ("" if higher else ", lower is better"),
                                                    "variants: target task against forgetting")
    return figures


def run(out: str | os.PathLike = "runs/experiments/variants", quick: bool = False, data: str | None = None,
        model: str | None = None, log: Callable[[str], None] = print, seeds: int | None = None,
        runs: list[str] | None = None) -> ExperimentReport:
    """Train (or reuse) every variant on every data set, probe forgetting, write the report.
    seeds: every run with seeds 0..seeds-1; runs: only these ("sst2-dora", ...)."""
    out = Path(out)
    grid = variant_specs(quick, data, model, out)
    chosen = select_runs(grid, runs) if runs else [spec for spec in grid if not spec.info["extra"]]
    specs = with_seeds(chosen, seeds or 1)
    results = run_grid(specs, out / "runs", log=log)
    metric = metric_name(results)
    model_spec = specs[0].config.model
    probe = probe_for(specs[0].info["data"], None)()
    with one_thread():
        before = probe.before(model_spec, quick, out)
        log(f"probe: the base's {probe.column} {before:.4f}")
        after = {r.name: probe.after(r, model_spec) for r in results}
    rows = run_rows(results, metric, probe, before, after)
    for row in rows:
        log(f"    {row['run']}: dev {metric} {row[f'dev_{metric}']:.4f}, forgetting {row['forgetting']:+.4f}, "
            f"steps to 90% {row['steps_to_90']}, {row['seconds_per_step']:.3f} s/step")
    summary = summary_rows(rows, metric)
    many = (seeds or 1) > 1
    target = specs[0].info["budget"] - specs[0].info["budget_diff"]
    budget_note = (f"budget = trainable LoRA values (factors and DoRA's magnitudes; head excluded) counted from "
                   f"loralab's injection plan; plain LoRA r={RANK}: {target:,}. budget_diff = budget − that. "
                   f"lowered = matrices whose rank DoRA gives up (r={RANK - 1}) to pay for its magnitudes.")
    reach = (f"≥ {TARGET_FRACTION:g} × the best dev {metric}" if metric != "loss"
             else f"≤ the best dev loss / {TARGET_FRACTION:g}")
    curve_note = (f"dev_{metric}: the final model; best_dev_{metric}: the best evaluation (every "
                  f"{specs[0].config.eval_every} steps), whose adapter is saved and probed. steps_to_90: the first "
                  f"evaluation at {reach} of any run on the same data set (empty: never); steps_to_90_own: of the "
                  f"run's own best. {probe.describe(before)} seconds_per_step: training wall clock "
                  f"(evaluation excluded) per optimizer step, one thread.")
    tables = [Table("variants", "Each run",
                    ["run", "data", "variant", "r", "lowered", "seed", "budget", "budget_diff", f"dev_{metric}",
                     f"best_dev_{metric}", "forgetting", f"{probe.column}_after", "steps_to_90", "steps_to_90_own",
                     "steps", "seconds_per_step", "trainable_params"], rows, budget_note + " " + curve_note),
              Table("summary", "Per data set and variant" + (" over seeds (median, min, max)" if many else ""),
                    ["run", "data", "variant", "r", "budget", "budget_diff", "seeds",
                     *[f"{c.format(metric=metric)}_{k}" for c in SUMMARY_COLUMNS for k in ("median", "min", "max")],
                     "steps_to_90_reached"], summary,
                    "steps_to_90_reached: seeds whose curve reached 90 % of the data set's best (the median is "
                    "over those).")]
    meta = grid_meta(quick, specs, results, ["batch_size", "lr", "eval_every"],
                     alpha=specs[0].config.lora["alpha"], r=RANK, metric=metric,
                     seeds=seeds or 1, data_sets=list(dict.fromkeys(s.info["data"] for s in specs)),
                     train={s.info["data"]: {k: getattr(s.config, k) for k in ("train_limit", "dev_limit", "epochs",
                                                                               "max_length")} for s in specs},
                     lora_plus_ratio=LORA_PLUS_RATIO, budget=target, target_fraction=TARGET_FRACTION,
                     **{f"{probe.column}_before": before}, **probe.meta(),
                     variants={s.info["variant"]: s.info["paper"] for s in chosen})
    report = ExperimentReport("variants", "Experiment: LoRA variants at one trainable budget",
                              "LoRA, rsLoRA, DoRA, PiSSA and LoRA+ on the same targets with the same number of "
                              "trainable LoRA values: task score, forgetting, steps to 90 % of the best, "
                              "seconds per step.", tables, _figures(results, summary, metric, many, probe.unit), meta)
    write_experiment_report(report, out)
    return report


__all__ = ["EXTRA_GRID", "VARIANT_GRID", "VariantSpec", "dev_curve", "fraction_of_best", "lora_budget_count",
           "match_budget", "run", "steps_to_reach", "summary_rows", "variant_specs"]
