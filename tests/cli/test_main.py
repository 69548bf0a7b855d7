"""The CLI's error handling: LoraLabError and its exit status, and the last-resort mappings of an unwritable
output and of Ctrl-C to one line."""
import errno

import pytest

from loralab.cli import budget_cmd
from loralab.cli import main as cli
from loralab.training.trainer import TrainingInterrupted


def _raising(exc):
    def run(args):
        raise exc
    return run


@pytest.mark.parametrize("exc, status, line", [
    (OSError(errno.EROFS, "Read-only file system", "/data/out/model.bin"), 2,
     "loralab budget: error: cannot write /data/out/model.bin: Read-only file system; choose a writable output location"),
    (OSError(errno.ENOSPC, "No space left on device", "/data/out"), 2,
     "loralab budget: error: no space left on device while writing /data/out; free some space or choose an output "
     "on another disk"),
    (KeyboardInterrupt(), 130, "loralab budget: interrupted"),
    (TrainingInterrupted("stopped by SIGTERM at step 3 of 9; ...", 143), 143,
     "loralab budget: error: stopped by SIGTERM at step 3 of 9; ..."),
])
def test_errors_that_are_not_bugs_are_one_line(monkeypatch, capsys, exc, status, line):
    monkeypatch.setattr(budget_cmd, "run", _raising(exc))
    assert cli.main(["budget", "--model", "minilm"]) == status
    assert capsys.readouterr().err.strip() == line


def test_other_os_errors_stay_visible_as_bugs(monkeypatch):
    monkeypatch.setattr(budget_cmd, "run", _raising(OSError(errno.EIO, "Input/output error", "/dev/sdz")))
    with pytest.raises(OSError, match="Input/output error"):
        cli.main(["budget", "--model", "minilm"])


# --------------------------------------------------------------------------------------------------
# Spellings of other tools, did-you-mean, --version, help defaults
# --------------------------------------------------------------------------------------------------
def test_version_is_the_package_version_and_pyproject_reads_it(capsys):
    import tomllib
    from pathlib import Path

    import loralab

    with pytest.raises(SystemExit) as exit_:
        cli.parse_args(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"loralab {loralab.__version__}\n"
    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert "version" not in project["project"] and project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "loralab.__version__"}
    # the docs speak of this release: old spellings go away in the next one
    from loralab.cli.deprecated import REMOVED_IN
    major, minor = loralab.__version__.split(".")[:2]
    assert REMOVED_IN == f"loralab {major}.{int(minor) + 1}"


@pytest.mark.parametrize("argv, field, value", [
    (["train", "--learning-rate", "1e-3"], "lr", 1e-3),
    (["train", "--num-train-epochs", "2"], "epochs", 2.0),
    (["train", "--per-device-train-batch-size", "4"], "batch_size", 4),
    (["train", "--gradient-accumulation-steps", "2"], "grad_accum", 2),
    (["train", "--output-dir", "runs/x"], "output", "runs/x"),
    (["train", "--lr-scheduler-type", "cosine"], "scheduler", "cosine"),
    (["train", "--per-device-eval-batch-size", "8"], "eval_batch_size", 8),
    (["serve", "--max-loras", "3"], "max_adapters", 3),
    (["serve", "--lora-modules", "a=x", "b=y", "--adapter", "c=z"], "adapter", ["a=x", "b=y", "c=z"]),
])
def test_hugging_face_and_vllm_spellings_set_loralabs_flags(argv, field, value):
    assert getattr(cli.parse_args(argv), field) == value


def test_every_training_arguments_spelling_of_the_table_is_a_flag():
    from loralab.cli.train_args import FLAG_FIELDS, other_spellings
    from loralab.training.config_files import OTHER_SPELLINGS

    expected = {other for other, field in OTHER_SPELLINGS.items() if "." not in other and field in FLAG_FIELDS}
    assert {flag for flags in other_spellings().values() for flag in flags} == {
        "--" + name.replace("_", "-") for name in expected}
    parser = cli.build_parser({"train": cli.COMMANDS["train"]})
    train = cli._command_parser(parser, "train")
    for other in expected:
        action = train._option_string_actions["--" + other.replace("_", "-")]
        assert action.dest == OTHER_SPELLINGS[other]


@pytest.mark.parametrize("argv, line", [
    (["train", "--lerning-rate", "1e-3"], "loralab train: error: unknown flag --lerning-rate; did you mean --lr?"),
    (["train", "--epohcs=2"], "loralab train: error: unknown flag --epohcs; did you mean --epochs?"),
    (["serve", "--lora-moduls", "a=b"], "loralab serve: error: unknown flag --lora-moduls; did you mean "
                                        "--lora-modules?"),
    (["budget", "--zzzzzz"], "loralab budget: error: unknown flag --zzzzzz; `loralab budget --help` lists the flags"),
])
def test_an_unknown_flag_is_one_line_with_the_nearest_flag(capsys, argv, line):
    with pytest.raises(SystemExit) as exit_:
        cli.parse_args(argv)
    assert exit_.value.code == 2
    assert capsys.readouterr().err == line + "\n"


def _help_of(parser, dest: str) -> str:
    return next(a.help for a in parser._actions if a.dest == dest)


def test_train_help_defaults_are_what_a_run_without_the_flag_uses(tmp_path):
    import re

    from loralab.cli.dataclass_args import attribute_docs
    from loralab.cli.train_args import FLAG_FIELDS, RunDefault
    from loralab.cli.train_cmd import config_from_args
    from loralab.training.config import TrainConfig

    train = cli._command_parser(cli.build_parser({"train": cli.COMMANDS["train"]}), "train")
    builtin_run = config_from_args(cli.parse_args(["train"]))
    own_run = config_from_args(cli.parse_args(["train", "--train-file", str(tmp_path / "t.tsv")]))
    shown = {"builtin": builtin_run, "own": own_run}
    checked = 0
    for dest in FLAG_FIELDS:
        match = re.search(r"\(default: ([^()]*(?:\([^()]*\))?)\)$", _help_of(train, dest) or "")
        if match is None or "(default:" in attribute_docs(TrainConfig).get(dest, ""):
            continue        # no default shown, or the field's docstring words its own
        text = match.group(1)
        two = re.fullmatch(r"(.*) with the builtin run, (.*) with --model, --data or --train-file", text)
        wanted = {"builtin": two.group(1), "own": two.group(2)} if two else {"builtin": text, "own": text}
        for run, config in shown.items():
            value = getattr(config, dest)
            assert wanted[run] == ("unset" if value is None else f"{value:g}" if isinstance(value, float)
                                   else str(tuple(value)) if isinstance(value, (list, tuple))
                                   else repr(value) if isinstance(value, str) and not value.isprintable()
                                   else str(value)), dest
        checked += 1
    assert checked >= 20
    assert "1 with the builtin run, 3 with" in _help_of(train, "epochs")
    assert "0.002 with the builtin run, 0.001 with" in _help_of(train, "lr")
    assert isinstance(RunDefault("x"), str)


def test_switch_and_runtime_helps_say_what_they_do():
    train = cli._command_parser(cli.build_parser({"train": cli.COMMANDS["train"]}), "train")
    serve = cli._command_parser(cli.build_parser({"serve": cli.COMMANDS["serve"]}), "serve")
    assert _help_of(train, "progress") == "turn off what is on by default: show a progress bar"
    assert "loss scaler" in _help_of(train, "dtype")
    assert _help_of(serve, "dtype") == ("precision of the base weights and of the compute (autocast): fp32, bf16, "
                                        "fp16, or auto (bf16 where the device runs it natively, else fp32); adapters "
                                        "stay fp32 (loralab.precision) (default: fp32)")


@pytest.mark.parametrize("command", ["", *cli.COMMANDS])
def test_help_of_every_command_imports_no_torch(command):
    """`loralab --help` and `loralab COMMAND --help` build their parsers without torch or transformers (what the
    process holds afterwards, not a clock)."""
    import subprocess
    import sys
    from pathlib import Path

    argv = [command, "--help"] if command else ["--help"]
    script = ("import sys\nfrom loralab.cli.main import parse_args\ntry:\n    parse_args(%r)\nexcept SystemExit:\n"
              "    pass\nprint(sorted(m for m in ('torch', 'transformers') if m in sys.modules))" % argv)
    out = subprocess.run([sys.executable, "-c", script], check=True, cwd=Path(__file__).parents[2],
                         capture_output=True, text=True)
    assert "usage: loralab" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "[]"
