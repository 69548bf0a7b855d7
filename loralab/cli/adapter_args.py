"""Flags shared by the commands that use trained adapters (eval, predict)."""
from __future__ import annotations

import argparse

from loralab.data.tasks import TASK_NAMES


def add_adapter_arguments(parser: argparse.ArgumentParser, use_help: str) -> None:
    parser.add_argument("--adapter", action="append", required=True, metavar="NAME=PATH",
                        help="an adapter folder written by loralab train; repeat to load several")
    parser.add_argument("--use", help=use_help)
    parser.add_argument("--model", help="base model (default: the one the adapter was trained on)")
    parser.add_argument("--task", choices=TASK_NAMES, help="default: the adapter's task")
