"""Decoding flags shared by the commands that generate text (predict, e2e): one definition, built into
loralab.generation.SamplingParams, which checks the values."""
from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from loralab.generation.params import SamplingParams

# flag -> (SamplingParams field, type, help); every flag defaults to None, meaning "not given"
_FLAGS: dict[str, tuple[str, Any, str]] = {
    "--max-new-tokens": ("max_new_tokens", int, "tokens to generate at most"),
    "--min-new-tokens": ("min_new_tokens", int, "EOS is banned before this many tokens"),
    "--temperature": ("temperature", float, "0 is greedy, above 0 samples"),
    "--top-p": ("top_p", float, "sample from the most likely tokens holding this probability; 1 is off"),
    "--top-k": ("top_k", int, "sample from the k most likely tokens; 0 is off"),
    "--repetition-penalty": ("repetition_penalty", float, "above 1 discourages tokens already seen; 1 is off"),
    "--frequency-penalty": ("frequency_penalty", float, "subtract this times a token's count in the output so far "
                                                        "from its logit (OpenAI's); 0 is off"),
    "--presence-penalty": ("presence_penalty", float, "subtract this from the logit of every token already in the "
                                                      "output (OpenAI's); 0 is off"),
    "--no-repeat-ngram-size": ("no_repeat_ngram_size", int, "ban repeating any n-gram of this size; 0 is off"),
    "--seed": ("seed", int, "sampling seed; input i uses seed + i (default: random)"),
    "--num-beams": ("num_beams", int, "1 is greedy or sampled decoding, more is beam search"),
    "--length-penalty": ("length_penalty", float, "beam search: rank beams by logprob / length ** this"),
}
_ESCAPES = {"\\n": "\n", "\\t": "\t", "\\\\": "\\"}


def _unescape(text: str) -> str:
    """`\\n`, `\\t` and `\\\\` typed on a command line as the characters they name."""
    out, i = [], 0
    while i < len(text):
        pair = text[i:i + 2]
        if pair in _ESCAPES:
            out.append(_ESCAPES[pair])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def add_sampling_arguments(parser: argparse.ArgumentParser, defaults: SamplingParams | None = None) -> None:
    """Add the decoding flags; `defaults` (this command's SamplingParams) only shows in the help."""
    defaults = defaults or SamplingParams()
    group = parser.add_argument_group("decoding (causal LM)")
    for flag, (name, kind, help_text) in _FLAGS.items():
        default = getattr(defaults, name)
        shown = "" if name == "seed" else f" (default: {default})"
        group.add_argument(flag, type=kind, dest=name, default=None, help=help_text + shown)
    group.add_argument("--stop", action="append", default=None, metavar="TEXT",
                       help="stop when the output contains TEXT (cut before it); repeatable; \\n is a newline")


def sampling_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The decoding flags given on the command line, as SamplingParams fields."""
    overrides = {name: getattr(args, name) for name, _, _ in _FLAGS.values() if getattr(args, name, None) is not None}
    if getattr(args, "stop", None):
        overrides["stop"] = tuple(_unescape(s) for s in args.stop)
    return overrides


def sampling_params_from_args(args: argparse.Namespace, defaults: SamplingParams | None = None) -> SamplingParams:
    """`defaults` (SamplingParams() if None) with the flags given on the command line."""
    return replace(defaults or SamplingParams(), **sampling_overrides(args))
