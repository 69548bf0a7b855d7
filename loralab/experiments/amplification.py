"""amplification: ΔW against W across ranks (Hu et al. 2021, §7.3, Table 7).

For the adapters of the rank experiment (r ∈ {1, 2, 4, 8, 64} on Wq, Wv), project W onto the top-r
singular directions of ΔW (‖UᵀWVᵀ‖_F), of W itself and of random subspaces, and report the amplification
‖ΔW‖_F / ‖UᵀWVᵀ‖_F. The rank runs are reused from `<out>/../rank/runs` (or `rank_dir`): finished ones
are read, missing ones are trained there, so `rank` and `amplification` share one set of runs.
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loralab.analysis.base import load_base_model
from loralab.analysis.report import analyze_adapters
from loralab.experiments.common import one_thread, run_grid
from loralab.experiments.rank import rank_specs, settings
from loralab.experiments.report import (ExperimentReport, Table, claim_experiment_folder, line_figure,
                                        write_experiment_report)

# `--data` may be the user's files (loralab.experiments.common.DataFiles): the runs read them as train does.
TAKES_DATA_FILES = True

_LAYER = re.compile(r"\.(\d+)\.")


def matrix_kind(name: str) -> str:
    """'query' / 'value' / ...: the last component of a module path (slice suffixes kept)."""
    return name.rsplit(".", 1)[-1]


def layer_index(name: str) -> int | None:
    found = _LAYER.search(name)
    return int(found.group(1)) if found else None


def _mean(values: list[float]) -> float:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return sum(values) / len(values) if values else math.nan


def shared_folders(out: Path, rank_dir: str | os.PathLike | None = None, **_: object) -> list[Path]:
    """The folder besides `out` this experiment writes: the rank experiment's, whose runs it shares."""
    return [Path(rank_dir) if rank_dir is not None else out.parent / "rank"]


def run(out: str | os.PathLike = "runs/experiments/amplification", quick: bool = False, data: str | None = None,
        model: str | None = None, log: Callable[[str], None] = print,
        rank_dir: str | os.PathLike | None = None) -> ExperimentReport:
    out = Path(out)
    rank_dir = claim_experiment_folder(shared_folders(out, rank_dir)[0], [model] if model else [])
    specs = rank_specs(quick, data, model, rank_dir)
    results = run_grid(specs, rank_dir / "runs", log=log)
    model_spec = settings(quick, data, model, rank_dir)[0]
    base = load_base_model(model_spec)            # resolves builtin names, .gguf files and hub ids itself
    detail: list[dict[str, Any]] = []
    for result in results:
        with one_thread():
            analysis = analyze_adapters([result.folder / "adapter"], base_model=base, trials=10, seed=0)
        for m in analysis.adapters[0].amplification or []:
            detail.append({"r": result.info["r"], "module": m.name, "layer": layer_index(m.name),
                           "matrix": matrix_kind(m.name), "w_fro": m.w_fro, "delta_fro": m.delta_fro,
                           "proj_delta": m.proj_delta, "proj_w_top": m.proj_w_top, "proj_random": m.proj_random,
                           "amplification": m.amplification})
    layers = sorted({row["layer"] for row in detail if row["layer"] is not None})
    middle = layers[len(layers) // 2] if layers else None  # the paper looks at layer 48 of 96
    summary = []
    for result in results:
        r = result.info["r"]
        for kind in sorted({row["matrix"] for row in detail}):
            mine = [row for row in detail if row["r"] == r and row["matrix"] == kind]
            mid = next((row for row in mine if row["layer"] == middle), None)
            summary.append({"r": r, "matrix": kind, "layers": len(mine),
                            "mean delta_fro": _mean([x["delta_fro"] for x in mine]),
                            "mean proj_delta": _mean([x["proj_delta"] for x in mine]),
                            "mean proj_w_top": _mean([x["proj_w_top"] for x in mine]),
                            "mean proj_random": _mean([x["proj_random"] for x in mine]),
                            "mean amplification": _mean([x["amplification"] for x in mine]),
                            f"layer {middle} w_fro": mid["w_fro"] if mid else None,
                            f"layer {middle} amplification": mid["amplification"] if mid else None})
    kinds = sorted({row["matrix"] for row in summary})
    figures = {"amplification_vs_rank": line_figure(
        {kind: ([row["r"] for row in summary if row["matrix"] == kind],
                [row["mean amplification"] for row in summary if row["matrix"] == kind]) for kind in kinds},
        "rank r", "‖ΔW‖_F / ‖UᵀWVᵀ‖_F (mean over layers)", "amplification against rank", log_x=True)}
    main = Table("amplification", "Amplification of W's directions by ΔW, by rank (means over layers)",
                 ["r", "matrix", "layers", "mean delta_fro", "mean proj_delta", "mean proj_w_top", "mean proj_random",
                  "mean amplification", f"layer {middle} w_fro", f"layer {middle} amplification"], summary,
                 "proj_* = ‖UᵀWVᵀ‖_F with U, V the top-r singular directions of ΔW, of W, or random (10 draws). "
                 "Paper (GPT-3 Wq, layer 48): amplification ≈ 21.5 at r=4, ≈ 2 at r=64.")
    per_module = Table("amplification_modules", "Per module",
                       ["r", "module", "layer", "matrix", "w_fro", "delta_fro", "proj_delta", "proj_w_top",
                        "proj_random", "amplification"], detail)
    meta = {"quick": quick, "model": model_spec, "rank_runs": str(rank_dir / "runs"),
            "ranks": [r.info["r"] for r in results], "reused_runs": [r.name for r in results if r.skipped]}
    report = ExperimentReport("amplification", "Experiment: ΔW versus W across ranks (paper Table 7)",
                              "How strongly each trained ΔW amplifies directions of the pretrained W, by rank.",
                              [main, per_module], figures, meta)
    write_experiment_report(report, out)
    return report
