"""The paper's experiments as one call each (Hu et al. 2021): `loralab experiment <name>`.

    from loralab.experiments import run_experiment
    report = run_experiment("rank", out="runs/experiments/rank", quick=True)   # writes CSV/JSON/MD, PNGs, report.html

    rank           r ∈ {1, 2, 4, 8, 64} on Wq, Wv (Table 6) + φ between r=8 and r=64 (§7.2)
    targets        Wq, Wk, Wv, Wo and combinations under one trainable budget (Table 5)
    methods        LoRA vs full FT, BitFit, Houlsby adapters, prefix-tuning + latency (Tables 2 and 1)
    amplification  ΔW versus W across ranks (Table 7), reusing the rank runs

Every experiment resumes: a run whose folder already holds metrics.json is read back, not retrained.
Results and what they mean at our scale: docs/experiments.md.
"""
from __future__ import annotations

import importlib
import os
from collections.abc import Callable

from loralab.errors import LoraLabError

# name -> (module, one-line description)
EXPERIMENTS: dict[str, tuple[str, str]] = {
    "rank": ("loralab.experiments.rank", "LoRA rank r in {1,2,4,8,64} on Wq,Wv + subspace similarity r=8 vs r=64"),
    "targets": ("loralab.experiments.targets", "which attention matrices to adapt under a fixed parameter budget"),
    "methods": ("loralab.experiments.methods", "LoRA vs full FT, BitFit, Houlsby adapters, prefix-tuning + latency"),
    "amplification": ("loralab.experiments.amplification", "ΔW versus W across ranks (reuses the rank runs)"),
}


def run_experiment(name: str, out: str | os.PathLike | None = None, quick: bool = False, data: str | None = None,
                   model: str | None = None, log: Callable[[str], None] = print):
    """Run experiment `name` into `out` (default runs/experiments/<name>); returns its ExperimentReport."""
    if name not in EXPERIMENTS:
        raise LoraLabError(f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)}")
    module = importlib.import_module(EXPERIMENTS[name][0])
    return module.run(out=out or os.path.join("runs", "experiments", name), quick=quick, data=data, model=model, log=log)


__all__ = ["EXPERIMENTS", "run_experiment"]
