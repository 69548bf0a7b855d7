"""Run one of the paper's experiments end to end: training runs (resumable), analysis, CSV/JSON, PNG plots and an HTML report.

    loralab experiment rank --quick -o /tmp/rank         # tiny random model, seconds
    loralab experiment rank                              # all-MiniLM-L6-v2 on SST-2: 5 runs of 500 steps
                                                         # (~15 min on 2 idle cores; 35 min measured on busy ones)

Re-running the same command continues where it stopped: finished runs are read back.
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from loralab.cli.output_args import add_output_argument
    from loralab.cli.runtime_args import add_runtime_arguments
    from loralab.cli.train_args import add_train_arguments
    from loralab.experiments import EXPERIMENTS

    parser.add_argument("name", choices=list(EXPERIMENTS), metavar="NAME",
                        help="; ".join(f"{k}: {v}" for k, (_, v) in EXPERIMENTS.items()))
    parser.add_argument("--quick", action="store_true",
                        help="tiny random-init model on a few hundred examples (well under a minute; for tests)")
    add_output_argument(parser, "output folder (default: runs/experiments/NAME)", metavar="DIR")
    add_train_arguments(parser, ("model", "data"), helps={"data": "builtin data set (default: sst2, a fixed subset)",
                                                          "model": "model spec (default: all-minilm-l6-v2)"})
    add_runtime_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from loralab.cli.runtime_args import runtime_fields, runtime_from_args
    from loralab.experiments import run_experiment
    from loralab.experiments.common import grid_runtime

    runtime_from_args(args)     # a missing GPU or a dtype it cannot run: one line, before any run starts
    out = args.output or f"runs/experiments/{args.name}"
    with grid_runtime(**runtime_fields(args)):
        run_experiment(args.name, out=out, quick=args.quick, data=args.data, model=args.model)
    print(f"wrote {out}: results.csv, results.json, results.md, figures/, report.html")
    return 0
