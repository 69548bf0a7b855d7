"""The data-file flags shared by train / eval / predict, and the ReadOptions they describe."""
from __future__ import annotations

import argparse
import dataclasses

from loralab.data.examples import Column
from loralab.data.readers import FORMATS, ReadOptions


def parse_column(value: str) -> Column:
    """A --*-column flag value: all digits is a 0-based index, anything else a header name."""
    return int(value) if value.isdigit() else value


def add_data_arguments(parser: argparse.ArgumentParser,
                       split_help: str = "split to read from a saved datasets DatasetDict folder") -> None:
    """Add the file-reading flags (format, columns, header, quoting, encoding, split) to a sub-command.

    Defaults are None so `read_options_from_args` can tell a given flag from an absent one.
    """
    group = parser.add_argument_group("data file format")
    group.add_argument("--format", choices=FORMATS, default=None,
                       help="file format (default: from the file name; E2E files need --format e2e, "
                            "conversation JSONL files --format chat)")
    group.add_argument("--text-column", type=parse_column, default=None,
                       help="column with the text or prompt: header name, or 0-based index (default: sentence)")
    group.add_argument("--text-pair-column", type=parse_column, default=None,
                       help="column with the second text of sentence-pair tasks")
    group.add_argument("--label-column", type=parse_column, default=None, help="column with the label (default: label)")
    group.add_argument("--target-column", type=parse_column, default=None,
                       help="column with the causal LM target text, the completion learned after the prompt "
                            "(--task causal-lm; no label column is read then)")
    group.add_argument("--no-header", dest="header", action="store_false", default=None,
                       help="the TSV/CSV has no header row: give columns as 0-based indices")
    group.add_argument("--no-quoting", dest="quoting", action="store_false", default=None,
                       help="read double quotes as literal text (GLUE MRPC and RTE need this)")
    group.add_argument("--encoding", default=None, help="text encoding (default: utf-8, with or without BOM)")
    group.add_argument("--split", default=None, help=split_help)


def read_options_given(args: argparse.Namespace) -> dict:
    """{ReadOptions field: value} of the data-file flags given on the command line."""
    return {field.name: getattr(args, field.name) for field in dataclasses.fields(ReadOptions)
            if getattr(args, field.name, None) is not None}


def read_options_from_args(args: argparse.Namespace, base: ReadOptions | None = None) -> ReadOptions:
    """ReadOptions from `add_data_arguments` flags; flags not given keep `base`'s values. A --target-column
    without --label-column is causal LM data (prompt -> target), which has no label column to read (eval
    reads the file before the adapter says its task; train decides by --task, readers.options_for_task)."""
    given = read_options_given(args)
    if "target_column" in given:
        given.setdefault("label_column", None)
    return dataclasses.replace(base or ReadOptions(), **given)
