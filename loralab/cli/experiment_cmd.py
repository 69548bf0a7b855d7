"""Run one of the paper's experiments end to end: training runs (resumable), analysis, CSV/JSON, PNG plots and an HTML report.

    loralab experiment rank --quick -o /tmp/rank         # tiny random model, seconds
    loralab experiment rank                              # all-MiniLM-L6-v2 on SST-2: 5 runs of 500 steps
                                                         # (~15 min on 2 idle cores; 35 min measured on busy ones)
    loralab experiment rank --seeds 3 --runs r1,r4       # r=1 and r=4 with seeds 0, 1, 2: median and spread
    loralab experiment data-size                         # LoRA vs full FT, prefix, adapters on 100 .. all examples
    loralab experiment intrinsic-dim --dims 100,1000     # random-subspace training (Fastfood) on MRPC, d90
    loralab experiment variants --data sst2              # LoRA, rsLoRA, DoRA, PiSSA, LoRA+ at one budget on SST-2
    loralab experiment variants --data e2e               # the same on SmolLM2 and E2E, general-text forgetting
    loralab experiment intruders --forgetting-dir runs/experiments/forgetting --seeds 3
                                                         # intruder dimensions of the forgetting runs, scaled down
    loralab experiment lr-sweep --train-file train.tsv --dev-file dev.tsv --task regression
                                                         # the sweep on your own files, read as train reads them

Re-running the same command continues where it stopped: finished runs are read back.
"""
from __future__ import annotations

import argparse

from loralab.data.tasks import DEFAULT_TASK


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from loralab.cli.data_args import add_data_arguments
    from loralab.cli.output_args import add_output_argument
    from loralab.cli.runtime_args import add_runtime_arguments
    from loralab.cli.train_args import add_train_arguments
    from loralab.experiments import EXPERIMENTS

    parser.add_argument("name", choices=list(EXPERIMENTS), metavar="NAME",
                        help="; ".join(f"{k}: {v}" for k, (_, v) in EXPERIMENTS.items()))
    parser.add_argument("--quick", action="store_true",
                        help="tiny random-init model on a few hundred examples (well under a minute; for tests)")
    add_output_argument(parser, "output folder (default: runs/experiments/NAME)", metavar="DIR")
    add_train_arguments(parser, ("model", "data", "train_file", "dev_file", "max_steps"),
                        helps={"data": "builtin data set (default: sst2, a fixed subset; variants: sst2,mrpc, "
                                           "names separated by commas, or e2e alone: SmolLM2)",
                               "train_file": "your own training file instead of --data, read as `loralab train` reads "
                                             "it (rank, targets, methods, amplification, lr-sweep, forgetting)",
                               "dev_file": "your own dev file, which scores every run (needed with --train-file)",
                               "model": "model spec (default: all-minilm-l6-v2)",
                               "max_steps": "intrinsic-dim: every run's optimizer steps instead of the default "
                                            "(a shorter sweep; give it its own --output)"})
    parser.add_argument("--seeds", type=_positive, default=None, metavar="N",
                        help="train every run with seeds 0..N-1 and report median, min, max (the paper: median of 5)")
    parser.add_argument("--runs", type=_names, default=None, metavar="NAME,NAME",
                        help="train and report only these runs of the experiment's grid (e.g. r1,r4 or lora,full)")
    parser.add_argument("--forgetting-dir", default=None, metavar="DIR",
                        help="intruders: the forgetting experiment's output folder whose runs it reads (default: "
                             "forgetting beside --output); missing runs are trained there")
    parser.add_argument("--scales", type=lambda t: [float(x) for x in _names(t)], default=None, metavar="S,S",
                        help="intruders: the scales of the intruder directions to measure, each in [0, 1] "
                             "(default 1,0.5,0; 1, the trained model, is always included)")
    parser.add_argument("--dims", type=lambda t: [int(x) for x in _names(t)], default=None, metavar="D,D",
                        help="intrinsic-dim: the subspace dimensions d to sweep")
    # no argparse choices: an unknown task is LoraLabError's one line (exit 2), not a usage screen
    parser.add_argument("--task", default=None, metavar="TASK",
                        help="with --train-file: classification (default), pair-classification or regression")
    add_data_arguments(parser)
    add_runtime_arguments(parser)


def experiment_data(args: argparse.Namespace):
    """--data as run_experiment takes it: the builtin name (or None), or DataFiles from --train-file,
    --dev-file, --task and the data-file flags (the ReadOptions that `loralab train` reads them with)."""
    from loralab.cli.data_args import read_options_given
    from loralab.errors import LoraLabError
    from loralab.experiments.common import DataFiles

    file_flags = [flag for flag, value in (("--dev-file", args.dev_file), ("--task", args.task)) if value]
    file_flags += ["--" + name.replace("_", "-") for name in read_options_given(args)]
    if args.train_file is None:
        if file_flags:
            raise LoraLabError(f"{', '.join(file_flags)} describe{'s' if len(file_flags) == 1 else ''} a data file: "
                               "add --train-file (and --dev-file), or drop it for a builtin --data")
        return args.data
    if args.data is not None:
        raise LoraLabError(f"give either a builtin data set (--data {args.data}) or --train-file, not both")
    return DataFiles(args.train_file, args.dev_file, args.task or DEFAULT_TASK, read_options_given(args))


def run(args: argparse.Namespace) -> int:
    from loralab.cli.runtime_args import runtime_fields, runtime_from_args
    from loralab.experiments import run_experiment
    from loralab.experiments.common import grid_runtime

    runtime_from_args(args)     # a missing GPU or a dtype it cannot run: one line, before any run starts
    out = args.output or f"runs/experiments/{args.name}"
    with grid_runtime(**runtime_fields(args)):
        run_experiment(args.name, out=out, quick=args.quick, data=experiment_data(args), model=args.model,
                       seeds=args.seeds, runs=args.runs, dims=args.dims, max_steps=args.max_steps,
                       forgetting_dir=args.forgetting_dir, scales=args.scales)
    print(f"wrote {out}: results.csv, results.json, results.md, figures/, report.html")
    return 0
