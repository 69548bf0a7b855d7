"""The paper's experiments as one call each (Hu et al. 2021): `loralab experiment <name>`.

    from loralab.experiments import run_experiment
    report = run_experiment("rank", out="runs/experiments/rank", quick=True)   # writes CSV/JSON/MD, PNGs, report.html

    rank           r ∈ {1, 2, 4, 8, 64} on Wq, Wv (Table 6) + φ between r=8 and r=64 (§7.2)
    targets        Wq, Wk, Wv, Wo and combinations under one trainable budget (Table 5)
    methods        LoRA vs full FT, BitFit, Houlsby adapters, prefix-tuning + latency (Tables 2 and 1)
    amplification  ΔW versus W across ranks (Table 7), reusing the rank runs
    data-size      LoRA vs full FT, prefix-tuning, adapters on 100 / 1k / 8k / all examples (Table 16)
    intrinsic-dim  train θ0 + P·z for a random Fastfood P, sweep d, d90; spectrum of full FT's ΔW
                   (Aghajanyan et al. 2020)
    lr-sweep       learning rates for LoRA (ranks 1, 8, 64; Wq,Wv or all-linear) and full fine-tuning; LoRA/full ratio
    forgetting     LoRA (Wq,Wv vs all-linear, several r) and full FT: target score vs the base encoder's lost
                   paraphrase separation on MRPC dev (Biderman et al. 2024); --data e2e: SmolLM2 trained on E2E,
                   its loss on held-out general text before and after
    variants       LoRA, rsLoRA, DoRA, PiSSA, LoRA+ at one trainable budget on SST-2 and MRPC: score,
                   forgetting, steps to 90 % of the best, seconds per step
    intruders      intruder dimensions of the forgetting runs (LoRA and full FT) and scaling them down at merge
                   time: task score and forgetting per scale (Shuttleworth et al. 2024), reusing the forgetting runs

`seeds=N` (where an experiment takes it) trains every run with seeds 0 .. N-1 and reports the median and
spread; `runs=[...]` trains only the named runs of the grid.

Every experiment resumes: a run whose folder already holds metrics.json is read back, not retrained.
Results and what they mean at our scale: docs/experiments.md.
"""
from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loralab.errors import LoraLabError, choose
from loralab.experiments.folders import check_experiment_folder, claim_experiment_folder

# name -> (module, one-line description)
EXPERIMENTS: dict[str, tuple[str, str]] = {
    "rank": ("loralab.experiments.rank", "LoRA rank r in {1,2,4,8,64} on Wq,Wv + subspace similarity r=8 vs r=64"),
    "targets": ("loralab.experiments.targets", "which attention matrices to adapt under a fixed parameter budget"),
    "methods": ("loralab.experiments.methods", "LoRA vs full FT, BitFit, Houlsby adapters, prefix-tuning + latency"),
    "amplification": ("loralab.experiments.amplification", "ΔW versus W across ranks (reuses the rank runs)"),
    "data-size": ("loralab.experiments.data_size", "LoRA vs full FT, prefix-tuning, adapters on 100 .. all examples"),
    "intrinsic-dim": ("loralab.experiments.intrinsic_dim", "random d-dim subspace training (Fastfood), d90, ΔW spectrum"),
    "lr-sweep": ("loralab.experiments.lr_sweep", "learning rates: LoRA at several ranks and targets vs full FT"),
    "forgetting": ("loralab.experiments.forgetting", "target score vs forgetting: LoRA vs full FT (also SmolLM2)"),
    "variants": ("loralab.experiments.variants", "LoRA, rsLoRA, DoRA, PiSSA, LoRA+ at one budget: score, forgetting, speed"),
    "intruders": ("loralab.experiments.intruders", "intruder dimensions of LoRA vs full FT, and scaling them down: "
                                                   "score and forgetting (reuses the forgetting runs)"),
}


def run_experiment(name: str, out: str | os.PathLike | None = None, quick: bool = False, data: Any = None,
                   model: str | None = None, log: Callable[[str], None] = print, **options: Any):
    """Run experiment `name` into `out` (default runs/experiments/<name>); returns its ExperimentReport.

    data: a builtin data set name, or the user's files as a loralab.experiments.common.DataFiles
    (the experiments whose module sets TAKES_DATA_FILES = True; the others refuse files with one line).

    options: the experiment's own keywords, e.g. seeds=3 (rank, targets, methods, data-size, lr-sweep) or
    runs=["r1", "r4"] (train only these runs of the grid); an option the experiment lacks is an error."""
    choose(name, EXPERIMENTS, "experiment")
    module = importlib.import_module(EXPERIMENTS[name][0])
    accepted = inspect.signature(module.run).parameters
    unknown = sorted(k for k, v in options.items() if k not in accepted and v is not None)
    if unknown:
        raise LoraLabError(f"experiment {name} does not take {', '.join('--' + k.replace('_', '-') for k in unknown)}; "
                           f"remove {'it' if len(unknown) == 1 else 'them'}")
    # DataFiles, duck-typed: this package is imported by `loralab experiment --help`, without torch.
    if getattr(data, "train_file", None) and not getattr(module, "TAKES_DATA_FILES", False):
        takers = [other for other, (path, _) in EXPERIMENTS.items()
                  if getattr(importlib.import_module(path), "TAKES_DATA_FILES", False)]
        raise LoraLabError(f"experiment {name} takes a builtin --data name, not --train-file; "
                           f"{', '.join(takers)} take files")
    given = {k: v for k, v in options.items() if v is not None}
    getattr(module, "check_options", lambda **_: None)(**given)     # an experiment's own values: before any folder
    out, inputs = out or os.path.join("runs", "experiments", name), [model] if model else []
    inputs += [path for path in (getattr(data, "train_file", None), getattr(data, "dev_file", None)) if path]
    # Every folder the experiment writes is checked before any is created, so a refusal leaves nothing behind.
    shared = getattr(module, "shared_folders", lambda out, **_: [])(Path(out), **given)
    for folder in (out, *shared):
        check_experiment_folder(folder, inputs)
    out = claim_experiment_folder(out, inputs)
    return module.run(out=out, quick=quick, data=data, model=model, log=log, **given)


__all__ = ["EXPERIMENTS", "run_experiment"]
