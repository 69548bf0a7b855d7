"""intruders: intruder dimensions of LoRA and full fine-tuning, and scaling them down at merge time
(Shuttleworth, Andreas, Torralba & Sharma 2024, "LoRA vs Full Fine-tuning: An Illusion of Equivalence",
arXiv:2410.21228), on the runs of the forgetting experiment.

The runs are the forgetting experiment's (`loralab.experiments.forgetting`: LoRA on Wq, Wv and on all linear
layers at several ranks, and full fine-tuning, on SST-2 by default), reused from `<out>/../forgetting/runs`
or `forgetting_dir`: finished runs are read, missing ones are trained there, as `amplification` reuses
`rank`'s runs. Nothing is written into a finished run's folder.

Per run, with every fine-tuned weight merged (LoRA: W0 + ΔW; full fine-tuning: the trained weights):

* intruders: singular vectors among the top k = 10 of each fine-tuned matrix whose largest |cosine| with
  every left singular vector of W0 is below ε = 0.5 (`loralab.analysis.intruders`, PEFT's defaults), summed
  over the matrices the run changed: LoRA's adapted matrices; for full fine-tuning, the matrices all-linear
  LoRA adapts (every Linear but the classifier head). `intruders_Wq_Wv` counts the query and value matrices
  only, the set every run changes.
* mitigation: for each scale in SCALES, the merged model with each intruder component σ_j·u_j·v_jᵀ scaled
  (`scale_model_intruders`, what `loralab merge --reduce-intruders SCALE` does), then its dev metric on the
  run's dev split and its forgetting: the base encoder's MRPC dev paraphrase ROC-AUC minus the mitigated
  encoder's (forgetting.py's probe). Scale 1 is the trained model, merged; a run without intruders has the same
  model at every scale, so its scale-1 numbers are reused there (an exact copy, not a new measurement).

Each run's numbers are kept in `<out>/measured/<run>.json` (with the settings), so a re-run reads them back.
Costs (MiniLM, 1 thread): two SVDs per matrix and scale (37 matrices of at most 1536×384: seconds), one dev
evaluation and one probe (3,000 sentences) per measured model.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from loralab.adapters.operations import merge_and_unload
from loralab.analysis.base import base_weights
from loralab.analysis.deltas import deltas_from_adapter
from loralab.analysis.intruders import (DEFAULT_K, DEFAULT_THRESHOLD, ModuleIntruders, WeightSlice,
                                        check_intruder_scale, scale_model_intruders, slices_of)
from loralab.data.batching import PadCollator, pad_token_id_for
from loralab.data.encoding import encode_examples
from loralab.data.labels import LABELS_FILENAME, LabelMap
from loralab.errors import LoraLabError, choose
from loralab.experiments.common import (RunResult, RunSpec, grid_meta, one_thread, run_grid, select_runs, spread,
                                        with_seeds)
from loralab.experiments.folders import claim_experiment_folder
from loralab.experiments.forgetting import (PROBE, PROBE_SPLIT, base_probe, forgetting_specs, load_full_weights,
                                            paraphrase_auc, saved_auc_after)
from loralab.experiments.rank import metric_name
from loralab.experiments.report import ExperimentReport, Table, scatter_figure, write_experiment_report
from loralab.experiments.targets import lora_targets
from loralab.files import write_json
from loralab.formats.peft import read_adapter
from loralab.runtime.load import load_base, load_with_adapters
from loralab.surgery.config import LoraConfig
from loralab.surgery.inject import select_modules
from loralab.training.evaluation import evaluate
from loralab.training.inputs import load_splits, task_of

# `--data` may be the user's files (loralab.experiments.common.DataFiles): the runs read them as train does.
TAKES_DATA_FILES = True

SCALES = (1.0, 0.5, 0.0)        # 1: the trained model; 0: intruders removed (PEFT's mitigation_lambda default: 0.75)
K = DEFAULT_K                   # top singular vectors examined (PEFT's top_k)
THRESHOLD = DEFAULT_THRESHOLD   # ε on max |cos| (PEFT's threshold_epsilon)
MEASURED = "measured"           # <out>/measured/<run>.json: a run's counts and per-scale numbers


def check_options(scales: Sequence[float] | None = None, **_: object) -> None:
    """One line for a scale outside [0, 1] (run_experiment calls this before any folder is made)."""
    for scale in scales or ():
        check_intruder_scale(scale, "--scales")


def shared_folders(out: Path, forgetting_dir: str | os.PathLike | None = None, **_: object) -> list[Path]:
    """The folder besides `out` this experiment reads (and trains missing runs into): the forgetting
    experiment's, whose runs it shares."""
    return [Path(forgetting_dir) if forgetting_dir is not None else out.parent / "forgetting"]


# --------------------------------------------------------------------------------------------------
# A run's fine-tuned model with every weight merged
# --------------------------------------------------------------------------------------------------

def _label_map(run_folder: Path) -> LabelMap | None:
    path = run_folder / "adapter" / LABELS_FILENAME
    return LabelMap.load(path) if path.is_file() else None


def _lora_model(run_folder: Path, spec: RunSpec) -> tuple[nn.Module, list[WeightSlice]]:
    """The classifier with the run's adapter merged and unloaded; the weights the adapter changed."""
    adapter = run_folder / "adapter"
    loaded = load_with_adapters({"run": adapter}, model=spec.config.model)
    return merge_and_unload(loaded.model), slices_of(deltas_from_adapter(read_adapter(adapter)))


def _full_model(run_folder: Path, spec: RunSpec) -> tuple[nn.Module, list[WeightSlice]]:
    """The classifier with full fine-tuning's trained weights; the matrices all-linear LoRA would adapt."""
    model, _ = load_base(spec.config.model, spec.config.task, None, _label_map(run_folder))
    load_full_weights(model, run_folder)
    names = select_modules(model, LoraConfig(targets="all-linear"))
    return model, [WeightSlice(name, name) for name in names]


# method of the grid -> how its fine-tuned model (all weights merged) and changed matrices are loaded
MODEL_LOADERS: dict[str, Callable[[Path, RunSpec], tuple[nn.Module, list[WeightSlice]]]] = {
    "lora": _lora_model, "full": _full_model}


# --------------------------------------------------------------------------------------------------
# Measuring one run
# --------------------------------------------------------------------------------------------------

class _Probe:
    """What every run is measured with: the base classifier (W0), the query/value module names, the dev examples,
    the probe's tokenizer and pairs, the AUC before."""

    def __init__(self, spec: RunSpec, label_map: LabelMap | None, tokenizer: Any, pairs: Sequence, before: float,
                 metric: str):
        self.tokenizer, self.pairs, self.before, self.metric = tokenizer, pairs, before, metric
        self.task = task_of(spec.config)
        self.dev = load_splits(spec.config).get("dev")
        if not self.dev:
            raise LoraLabError("the intruders experiment scores each mitigated model on a dev split: give data "
                               "with one (--dev-file)")
        self.collator = PadCollator(pad_token_id_for(tokenizer))
        self.base, _ = load_base(spec.config.model, spec.config.task, None, label_map)
        self.qv_names = set(select_modules(self.base, LoraConfig(**lora_targets(spec.config.model)["Wq,Wv"])))
        self._weights: dict[str, Any] = {}

    def base_weights(self, modules: Sequence[str]) -> dict[str, Any]:
        """{module path: W0 (d_full, n) float64} for these modules, each copied once."""
        missing = sorted({m for m in modules if m not in self._weights})
        if missing:
            self._weights.update(base_weights(self.base, missing))
        return {m: self._weights[m] for m in modules}

    def measure(self, model: nn.Module, label_map: LabelMap | None) -> dict[str, float]:
        """The dev metric and the probe AUC of a (merged) classifier; forgetting = AUC before − after."""
        encoded = encode_examples(self.dev, self.tokenizer, self.task, label_map)
        dev = evaluate(model, encoded, self.task.kind, self.collator, 64, label_map=label_map).metrics[self.metric]
        after = paraphrase_auc(model.base_model, self.tokenizer, self.pairs)
        return {f"dev_{self.metric}": dev, "auc_after": after, "forgetting": self.before - after}


def _settings(probe: _Probe) -> dict[str, Any]:
    return {"k": K, "threshold": THRESHOLD, "probe_pairs": len(probe.pairs), "dev_examples": len(probe.dev)}


class Measured:
    """One run's numbers, kept in <out>/measured/<run>.json (written after each step, read back when its
    settings match): "intruders" (ModuleIntruders dicts), "intruders_Wq_Wv", "scales": {str(scale): numbers}."""

    def __init__(self, result: RunResult, spec: RunSpec, probe: _Probe, out: Path):
        self.result, self.spec, self.probe = result, spec, probe
        self.path = out / MEASURED / f"{result.name}.json"
        saved = json.loads(self.path.read_text(encoding="utf-8")) if self.path.is_file() else {}
        self.data = saved if saved.get("settings") == _settings(probe) else {"settings": _settings(probe),
                                                                           "scales": {}}

    def _model(self) -> tuple[nn.Module, list[WeightSlice], LabelMap | None, dict[str, Any]]:
        method = self.result.info["method"]
        model, slices = MODEL_LOADERS[choose(method, MODEL_LOADERS, "method of the intruders experiment")](
            self.result.folder, self.spec)
        return model, slices, _label_map(self.result.folder), self.probe.base_weights([s.module for s in slices])

    @property
    def intruders(self) -> list[ModuleIntruders]:
        """Every changed matrix's intruders (counted once, on the merged model)."""
        if "intruders" not in self.data:
            model, slices, _, weights = self._model()
            found = scale_model_intruders(model, weights, 1.0, K, THRESHOLD, slices)    # scale 1 changes nothing
            self.data.update(intruders=[m.to_dict() for m in found],
                             intruders_Wq_Wv=sum(m.count for m in found if m.module in self.probe.qv_names))
            write_json(self.path, self.data)
        return [ModuleIntruders(**m) for m in self.data["intruders"]]

    def at(self, scale: float, log: Callable[[str], None] = print) -> dict[str, Any]:
        """The dev metric, AUC after and forgetting of the model mitigated at `scale`, with where they came from:
        "run" (scale 1: the run's own dev score and forgetting.json), "merged" (measured on the merged, possibly
        mitigated model), "copied" (no intruder: scale 1's numbers)."""
        key = str(float(scale))
        if key in self.data["scales"]:
            return self.data["scales"][key]
        metric, total = self.probe.metric, sum(m.count for m in self.intruders)
        saved = saved_auc_after(self.result.folder, self.probe.pairs) if scale == 1 else None
        dev_run = self.result.metric(metric)
        if saved is not None and math.isfinite(dev_run):      # the run scored the same dev split
            numbers = {f"dev_{metric}": dev_run, "auc_after": saved, "forgetting": self.probe.before - saved,
                       "source": "run"}
        elif scale != 1 and total == 0:
            numbers = dict(self.at(1.0, log), source="copied")
        else:
            model, slices, label_map, weights = self._model()
            scale_model_intruders(model, weights, scale, K, THRESHOLD, slices)
            numbers = dict(self.probe.measure(model, label_map), source="merged")
        self.data["scales"][key] = numbers
        write_json(self.path, self.data)
        log(f"    {self.result.name} ×{scale:g}: {total} intruders, dev {metric} {numbers[f'dev_{metric}']:.4f}, "
            f"forgetting {numbers['forgetting']:+.4f} ({numbers['source']})")
        return numbers


# --------------------------------------------------------------------------------------------------
# The grid and the report
# --------------------------------------------------------------------------------------------------

def _summary(rows: Sequence[dict[str, Any]], columns: Sequence[str], keys: Sequence[str]) -> list[dict[str, Any]]:
    """One row per (base run, *keys): medians, min and max over seeds of `columns`."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["base_run"], *(row[k] for k in keys)), []).append(row)
    out = []
    for members in groups.values():
        first = members[0]
        summary = {"run": first["base_run"], **{k: first[k] for k in ("method", "targets", "r", *keys)},
                   "seeds": len(members)}
        for column in columns:
            stats = spread([m[column] for m in members])
            summary.update({f"{column}_{k}": stats[k] for k in ("median", "min", "max")})
        out.append(summary)
    return out


def run(out: str | os.PathLike = "runs/experiments/intruders", quick: bool = False, data: str | None = None,
        model: str | None = None, log: Callable[[str], None] = print, seeds: int | None = None,
        runs: list[str] | None = None, forgetting_dir: str | os.PathLike | None = None,
        scales: Sequence[float] | None = None) -> ExperimentReport:
    """Read (or train) the forgetting experiment's runs, count each one's intruder dimensions, measure the
    mitigated models at every scale (default SCALES; 1 is always included), write the report. seeds, runs: as
    the forgetting experiment's."""
    out = Path(out)
    check_options(scales=scales)
    scales = sorted({1.0, *(float(s) for s in (scales or SCALES))}, reverse=True)
    forgetting_dir = claim_experiment_folder(shared_folders(out, forgetting_dir)[0], [model] if model else [])
    specs = with_seeds(select_runs(forgetting_specs(quick, data, model, forgetting_dir), runs), seeds or 1)
    results = run_grid(specs, forgetting_dir / "runs", log=log)
    metric = metric_name(results)
    model_spec = specs[0].config.model
    rows, mitigation, where = [], [], []
    with one_thread():
        tokenizer, pairs, before = base_probe(model_spec, quick, log)
        probe = _Probe(specs[0], _label_map(results[0].folder), tokenizer, pairs, before, metric)
        measured = [Measured(result, spec, probe, out) for spec, result in zip(specs, results)]
        for run_numbers in measured:
            found = run_numbers.intruders
            log(f"    {run_numbers.result.name}: {sum(m.count for m in found)} intruders in {len(found)} matrices")
        for scale in sorted(scales, key=lambda s: (s != 1, s)):    # 1 (cheap), then the strongest mitigation first
            for run_numbers in measured:
                run_numbers.at(scale, log)
    for run_numbers in measured:
        result, found = run_numbers.result, run_numbers.intruders
        info = {"run": result.name, "base_run": result.info["base_run"], "seed": result.info["seed"],
                **{k: result.info[k] for k in ("method", "targets", "r")}}
        scale_one = run_numbers.at(1.0)
        where.extend({**info, "matrix": m.name, "ranks": " ".join(map(str, m.indices)),
                      "max_cosine": " ".join(f"{m.max_cosine[j - 1]:.3f}" for j in m.indices),
                      "sigma": " ".join(f"{m.singular_values[j - 1]:.3g}" for j in m.indices)}
                     for m in found if m.count)
        rows.append({**info, "matrices": len(found), "intruders": sum(m.count for m in found),
                     "intruders_Wq_Wv": run_numbers.data["intruders_Wq_Wv"],
                     "matrices_with_intruders": sum(1 for m in found if m.count),
                     "min_max_cosine": min(min(m.max_cosine) for m in found),
                     f"dev_{metric}_run": result.metric(metric)})
        for scale in scales:
            numbers = run_numbers.at(scale)
            mitigation.append({**info, "scale": scale, "intruders": rows[-1]["intruders"],
                               f"dev_{metric}": numbers[f"dev_{metric}"], "auc_after": numbers["auc_after"],
                               "forgetting": numbers["forgetting"],
                               f"d_dev_{metric}": numbers[f"dev_{metric}"] - scale_one[f"dev_{metric}"],
                               "d_forgetting": numbers["forgetting"] - scale_one["forgetting"],
                               "source": numbers["source"]})
    many = (seeds or 1) > 1
    count_summary = _summary(rows, ["intruders", "intruders_Wq_Wv", "matrices_with_intruders"], [])
    for s in count_summary:
        s["matrices"] = next(r["matrices"] for r in rows if r["base_run"] == s["run"])
    scale_summary = _summary(mitigation, [f"dev_{metric}", "forgetting", f"d_dev_{metric}", "d_forgetting"],
                             ["scale"])
    points = {f"{s['run']} ×{s['scale']:g}": (s["forgetting_median"], s[f"dev_{metric}_median"])
              for s in scale_summary}
    suffix = " (median over seeds)" if many else ""
    figures = {"mitigation": scatter_figure(points, "forgetting (AUC before − after)" + suffix, f"dev {metric}" + suffix,
                                            "intruder scaling: target task against forgetting")}
    definition = (f"intruder: one of the top k = {K} left singular vectors of a fine-tuned matrix whose largest "
                  f"|cosine| with every left singular vector of W0 is below ε = {THRESHOLD}; summed over the run's "
                  f"changed matrices (LoRA: the adapted ones; full fine-tuning: every Linear but the head). "
                  f"intruders_Wq_Wv: over the query and value matrices only. min_max_cosine: the smallest max |cos| "
                  f"of any top-k vector. dev_{metric}_run: the run's own dev score (unmerged, from metrics.json).")
    mitigation_note = (f"scale s: each intruder component σ_j·u_j·v_jᵀ of the merged weight multiplied by s "
                       f"(1: the trained model, merged). forgetting = AUC before − after, {PROBE.upper()} "
                       f"{PROBE_SPLIT} paraphrase ROC-AUC of the mean-pooled embeddings ({len(pairs)} pairs; AUC "
                       f"before = {before:.4f}). d_*: the value minus the same run's at scale 1. source: run = the run's own "
                       f"numbers (dev score from metrics.json, AUC after from forgetting.json: scale 1 is the trained "
                       f"model), merged = measured on the merged (mitigated) model, copied = the run has no intruder, "
                       f"so the model equals scale 1's.")
    tables = [Table("intruders", "Intruder dimensions, each run",
                    ["run", "method", "targets", "r", "seed", "matrices", "intruders", "intruders_Wq_Wv",
                     "matrices_with_intruders", "min_max_cosine", f"dev_{metric}_run"], rows, definition),
              Table("mitigation", "Intruders scaled at merge time, each run and scale",
                    ["run", "method", "targets", "r", "seed", "scale", "intruders", f"dev_{metric}", "auc_after",
                     "forgetting", f"d_dev_{metric}", "d_forgetting", "source"], mitigation, mitigation_note),
              Table("intruder_matrices", "Where the intruders are: each matrix with one, each run",
                    ["run", "method", "targets", "r", "seed", "matrix", "ranks", "max_cosine", "sigma"], where,
                    "ranks: 1-based among the top k singular vectors of the fine-tuned matrix; max_cosine: each one's "
                    "largest |cosine| with W0's left singular vectors; sigma: its singular value."),
              Table("intruders_summary", "Intruders per configuration" + (" over seeds (median, min, max)" if many
                                                                          else ""),
                    ["run", "method", "targets", "r", "seeds", "matrices",
                     *[f"{c}_{k}" for c in ("intruders", "intruders_Wq_Wv", "matrices_with_intruders")
                       for k in ("median", "min", "max")]], count_summary),
              Table("mitigation_summary", "Mitigation per configuration and scale" + (
                  " over seeds (median, min, max)" if many else ""),
                    ["run", "method", "targets", "r", "scale", "seeds",
                     *[f"{c}_{k}" for c in (f"dev_{metric}", "forgetting", f"d_dev_{metric}", "d_forgetting")
                       for k in ("median", "min", "max")]], scale_summary, mitigation_note)]
    meta = grid_meta(quick, specs, results, ["train_limit", "dev_limit", "epochs", "batch_size", "max_length"],
                     metric=metric, seeds=seeds or 1, k=K, threshold=THRESHOLD, scales=scales,
                     probe=f"{PROBE} {PROBE_SPLIT}", probe_pairs=len(pairs), auc_before=before,
                     forgetting_runs=str(forgetting_dir / "runs"))
    report = ExperimentReport("intruders", "Experiment: intruder dimensions (Shuttleworth et al. 2024)",
                              "Intruder dimensions of LoRA (attention only and all linear layers, several ranks) "
                              "and full fine-tuning, and the task score and forgetting when they are scaled down "
                              "at merge time.", tables, figures, meta)
    write_experiment_report(report, out)
    return report


__all__ = ["MODEL_LOADERS", "SCALES", "Measured", "run", "shared_folders"]
