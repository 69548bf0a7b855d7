"""Text generation shared by `loralab predict`, `loralab e2e` and the server: one decoding implementation.

    from loralab.generation import BatchDecoder, SamplingParams, generate
    texts = generate(model, tokenizer, prompts, SamplingParams(temperature=0.7, top_p=0.9, seed=0))

params.py    SamplingParams: greedy, sampling (temperature, top-p, top-k, repetition penalty, seed), beams, stops
sampling.py  per-row logits processing and inverse-CDF sampling, vectorised over rows
text.py      incremental detokenisation and stop strings of one row
cache.py     the batch KV cache as rows join (left padding) and leave
decoder.py   BatchDecoder: step-wise continuous batching (add / step / cancel, forward_context hook)
offline.py   generate / generate_completions for a list of prompt texts (decoder, or beam search)
"""
from __future__ import annotations

import importlib

from loralab.generation.params import SamplingParams

# heavier modules (torch, transformers) load on first use, so the CLI's parsers stay light
_LAZY = {"loralab.generation.decoder": ("BatchDecoder", "StepOutput"),
         "loralab.generation.offline": ("Completion", "encode_prompts", "generate", "generate_completions")}
__all__ = ["SamplingParams", *(name for names in _LAZY.values() for name in names)]


def __getattr__(name: str):
    for module, names in _LAZY.items():
        if name in names:
            return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module 'loralab.generation' has no attribute {name!r}")
