"""Flags shared by the commands that use trained adapters (eval, predict)."""
from __future__ import annotations

import argparse

TASK_CHOICES = ["classification", "pair-classification", "regression", "causal-lm"]


def add_adapter_arguments(parser: argparse.ArgumentParser, use_help: str) -> None:
    parser.add_argument("--adapter", action="append", required=True, metavar="NAME=PATH",
                        help="an adapter folder written by loralab train; repeat to load several")
    parser.add_argument("--use", help=use_help)
    parser.add_argument("--model", help="base model (default: the one the adapter was trained on)")
    parser.add_argument("--task", choices=TASK_CHOICES, help="default: the adapter's task")
