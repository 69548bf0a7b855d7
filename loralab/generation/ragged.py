"""Ragged steps: the running rows' next tokens and the joining requests' whole prompts in one forward.

Why: a decoding step of a few rows on a CPU is bound by reading the weights, not by arithmetic (SmolLM2-135M
in fp32 reads 538 MB of packed weights per forward; 16 rows take about as long as 8), so prefilling a joining
request in a forward of its own costs about as much as the decoding step itself (0.7 of one, measured in
docs/serving.md), and with many short requests one joins nearly every step. A ragged step reads the weights
once for both.

How: every token of the step is one row of an (N, 1) forward — first the B running rows' next tokens, then each
joining prompt's tokens in order — so the linears, norms, MLPs and per-row adapters (one name per token) see N
rows as usual. Only attention differs, and it runs here, through transformers' attention interface (registered
as "loralab_ragged" and switched on for the forward by `ragged_attention`), reading the step's layout from the
`ragged=RaggedStep(...)` keyword the model passes down to it:

  running rows   query (B, heads, 1, d) against the batch's cache with the new key appended, masked by the
                 batch's (B, T + 1) attention mask: what a (B, 1) decoding forward computes;
  joining prompt j   query (1, heads, L_j, d) against its own L_j keys, causal: what a prefill of it alone
                 computes; its keys and values are collected, left-padded to the longest joining prompt, into
                 `RaggedStep.joined`, a DynamicCache the decoder appends to the batch's after the forward.

Which models: those whose attention goes through transformers' attention interface as plain full causal
attention, named by their architecture table entry (`Architecture.ragged`); others take BatchDecoder's
decode-then-prefill path.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.nn import functional as F

from loralab.generation import cache as kv
from loralab.models.architectures import architecture_for, model_type_of

NAME = "loralab_ragged"


class RaggedStep:
    """One ragged forward's layout and caches.

    cache: the running rows' DynamicCache (None: no running rows), updated in place with their new keys; mask: their
    (B, T + 1) attention mask with the new column (None with no running rows); lengths: the joining prompts' token
    counts, in row order after the running rows. After the forward, `joined` holds the joining rows' cache
    (J, heads, max length, d), left-padded, and `joined_mask` its (J, max length) mask."""

    def __init__(self, cache: Any, mask: torch.Tensor | None, lengths: Sequence[int]):
        self.cache, self.lengths = cache, list(lengths)
        self.running = 0 if mask is None else mask.shape[0]
        self.attend_to = None if mask is None else mask.bool()[:, None, None, :]   # (B, 1, 1, T + 1): True = a key
        self.joined = kv.new_cache()
        width = max(self.lengths, default=0)
        self.joined_mask = torch.zeros(len(self.lengths), width, dtype=torch.long)
        for j, length in enumerate(self.lengths):
            self.joined_mask[j, width - length:] = 1

    def attend(self, layer_idx: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               scale: float | None) -> torch.Tensor:
        """query (N, heads, 1, d), key and value (N, kv_heads, 1, d), rotary applied -> (N, 1, heads, d)."""
        parts = []
        B = self.running
        if B:
            keys, values = self.cache.update(key[:B], value[:B], layer_idx)
            parts.append(F.scaled_dot_product_attention(query[:B], keys, values, attn_mask=self.attend_to, scale=scale,
                                                        enable_gqa=True))
        start, width = B, self.joined_mask.shape[1]
        new_keys, new_values = [], []
        for length in self.lengths:
            q, k, v = (t[start:start + length].transpose(0, 2) for t in (query, key, value))   # (1, heads, L, d)
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True)
            parts.append(out.transpose(0, 2))                                                 # (L, heads, 1, d)
            new_keys.append(F.pad(k, (0, 0, width - length, 0)))
            new_values.append(F.pad(v, (0, 0, width - length, 0)))
            start += length
        if self.lengths:
            self.joined.update(torch.cat(new_keys), torch.cat(new_values), layer_idx)
        return torch.cat(parts).transpose(1, 2)


def _ragged_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                              attention_mask: Any, scaling: float | None = None, dropout: float = 0.0,
                              ragged: RaggedStep | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention-interface signature; the layout comes from the `ragged` keyword."""
    if ragged is None:
        raise RuntimeError("loralab's ragged attention ran without its ragged=RaggedStep(...) keyword")
    return ragged.attend(module.layer_idx, query, key, value, scaling), None


def _no_mask(*args: Any, **kwargs: Any) -> None:
    """The mask function of "loralab_ragged": the layout is the RaggedStep's, not a 4-D mask."""
    return None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, _ragged_attention_forward)
    AttentionMaskInterface.register(NAME, _no_mask)


_register()


def ragged_supported(model: torch.nn.Module) -> bool:
    """True where the architecture table says this model's attention can run ragged steps (and the model uses
    no sliding window)."""
    config = getattr(model, "config", None)
    arch = architecture_for(model)
    if arch is None or model_type_of(model) not in arch.ragged or not hasattr(config, "_attn_implementation"):
        return False
    types = getattr(config, "layer_types", None)
    if types is not None:
        return all(t == "full_attention" for t in types)
    return getattr(config, "sliding_window", None) is None or getattr(config, "use_sliding_window", None) is False


@contextlib.contextmanager
def ragged_attention(model: torch.nn.Module) -> Iterator[None]:
    """Inside: the model's attention is the ragged one (its config's attention implementation switched, and
    switched back on exit)."""
    config = model.config
    before = config._attn_implementation
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = before
