"""The data-file flags shared by train, eval and predict."""
from __future__ import annotations

import argparse

import pytest

from loralab.cli import data_args
from loralab.data.readers import ReadOptions


def test_cli_flags_override_only_what_is_given():
    parser = argparse.ArgumentParser()
    data_args.add_data_arguments(parser)
    args = parser.parse_args(["--text-column", "3", "--text-pair-column", "s2", "--no-header", "--no-quoting"])
    base = ReadOptions(encoding="latin-1")
    options = data_args.read_options_from_args(args, base)
    assert options == ReadOptions(text_column=3, text_pair_column="s2", header=False, quoting=False,
                                  encoding="latin-1")
    assert data_args.read_options_from_args(parser.parse_args([])) == ReadOptions()


def test_a_target_column_reads_no_label_column_unless_one_is_named():
    parser = argparse.ArgumentParser()
    data_args.add_data_arguments(parser)
    given = parser.parse_args(["--text-column", "prompt", "--target-column", "target"])
    causal = data_args.read_options_from_args(given)
    assert causal == ReadOptions(text_column="prompt", target_column="target", label_column=None)
    named = data_args.read_options_from_args(parser.parse_args(["--target-column", "t", "--label-column", "y"]))
    assert (named.target_column, named.label_column) == ("t", "y")


def test_column_flags_take_names_or_indices():
    assert data_args.parse_column("3") == 3 and data_args.parse_column("sentence1") == "sentence1"
    parser = argparse.ArgumentParser()
    data_args.add_data_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--format", "parquet"])
