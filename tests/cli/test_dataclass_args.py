"""Flags generated from config dataclasses: names, types, help from the field docstrings, "not given" as None;
and every TrainConfig / LoraConfig field either has a flag or is a section set with key=value overrides."""
from __future__ import annotations

import argparse
import dataclasses
import typing

import pytest

from loralab.cli import lora_args, train_args
from loralab.cli.dataclass_args import add_field_flags, attribute_docs, given_fields
from loralab.surgery.config import LoraConfig
from loralab.training.config import TrainConfig


@dataclasses.dataclass
class Example:
    rate: float = 0.5
    """How fast, per step."""
    steps: int | None = None
    """Steps to run (unset: all)."""
    names: list[str] = dataclasses.field(default_factory=list)
    """Which ones."""
    pair: tuple[float, float] = (1.0, 2.0)
    """Two numbers."""
    fancy: bool = False
    """Do it the fancy way."""
    verbose: bool = True
    """Say what happens."""
    table: dict[str, int] = dataclasses.field(default_factory=dict)
    """No flag: set it in a file."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_field_flags(parser, Example, [f.name for f in dataclasses.fields(Example)], tweaks={"steps": {"metavar": "N"}})
    return parser


def test_flags_follow_the_fields():
    parser = _parser()
    args = parser.parse_args(["--rate", "0.25", "--steps", "3", "--names", "a", "b", "--pair", "3", "4", "--fancy",
                              "--no-verbose"])
    assert given_fields(args, [f.name for f in dataclasses.fields(Example)]) == \
        {"rate": 0.25, "steps": 3, "names": ["a", "b"], "pair": [3.0, 4.0], "fancy": True, "verbose": False}
    assert given_fields(parser.parse_args([]), ["rate", "steps", "fancy", "verbose"]) == {}
    assert not any("--table" in action.option_strings for action in parser._actions)
    helps = {action.dest: action.help for action in parser._actions}
    assert helps["rate"] == "how fast, per step (default: 0.5)"
    assert helps["steps"] == "steps to run (unset: all)"
    assert helps["verbose"] == "turn off what is on by default: say what happens"     # --no-verbose
    with pytest.raises(SystemExit):
        parser.parse_args(["--steps", "many"])


def test_attribute_docs_read_the_docstrings_under_the_fields():
    assert attribute_docs(Example)["rate"] == "How fast, per step."
    assert attribute_docs(LoraConfig)["r"] == "Rank of ΔW = B·A (A: r×k, B: d×r)."


def test_every_config_field_has_a_flag_and_help_or_is_a_section():
    hints = typing.get_type_hints(TrainConfig)
    sections = {name for name, hint in hints.items() if dict in {typing.get_origin(hint), hint}}
    assert sections == {"read_options", "lora", "method_options", "scheduler_options"}
    assert set(train_args.FLAG_FIELDS) == set(hints) - sections
    assert len(train_args.FLAG_FIELDS) == len(set(train_args.FLAG_FIELDS))
    docs = attribute_docs(TrainConfig)
    assert set(docs) == set(hints)                      # every field is documented (its flag's help)
    lora_hints = typing.get_type_hints(LoraConfig)
    lora_sections = {name for name, hint in lora_hints.items() if dict in {typing.get_origin(hint), hint}}
    assert set(lora_args.FLAG_FIELDS) == set(lora_hints) - lora_sections - {"dora"} - set(lora_args.FILE_ONLY_FIELDS)
