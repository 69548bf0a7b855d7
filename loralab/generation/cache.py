"""A batch's KV cache as rows join and leave: transformers' DynamicCache plus a (B, T) attention mask.

Every row's keys and values sit at the right end of the cache (left padding): row b's real tokens are
the columns where mask[b] is 1, and the next token of every row goes into column T. Rows of another
cache join by left-padding the shorter of the two to the longer length and concatenating along the
batch; rows leave by keeping the others (`DynamicCache.batch_select_indices`) and dropping the leading
columns that are padding in every row left. Positions are per row (the count of its real tokens), so
left padding never shifts a row's RoPE or absolute position embeddings.

Only DynamicCache with plain full-attention layers (`DynamicLayer`) is handled: its keys and values
are (B, heads, T, head_dim) tensors. Sliding-window masks are computed on cache columns, so a model
with a sliding window shorter than a batch's cache length would see padding inside its window.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from loralab.errors import LoraLabError


def _layers(cache):
    from transformers.cache_utils import DynamicLayer

    layers = list(getattr(cache, "layers", ()))
    for layer in layers:
        if type(layer) is not DynamicLayer:
            raise LoraLabError(f"the model's KV cache uses {type(layer).__name__} layers; step-wise batched "
                               "decoding handles full-attention DynamicLayer caches only")
    return layers


def new_cache():
    """An empty DynamicCache whose layers are created as the model fills them (all DynamicLayer)."""
    from transformers import DynamicCache

    return DynamicCache()


def keep_rows(cache, mask: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Keep the rows at `index` (int64, in that order) of `cache` (in place) and of `mask` (B, T), and
    drop the leading columns that are padding in every kept row. Returns the new mask."""
    cache.batch_select_indices(index)
    mask = mask[index]
    used = torch.nonzero(mask.any(dim=0)).flatten()
    cut = int(used[0]) if used.numel() else mask.shape[1]
    if cut:
        for layer in _layers(cache):
            layer.keys = layer.keys[:, :, cut:]
            layer.values = layer.values[:, :, cut:]
        mask = mask[:, cut:]
    return mask


def append_rows(cache, mask: torch.Tensor, other, other_mask: torch.Tensor) -> torch.Tensor:
    """Append `other`'s rows after `cache`'s (in place in `cache`), left-padding whichever is shorter.
    mask (B, T) and other_mask (b, t) mark real tokens; returns the (B + b, max(T, t)) mask."""
    mine, theirs = _layers(cache), _layers(other)
    if len(mine) != len(theirs):
        raise LoraLabError(f"cannot join KV caches of {len(mine)} and {len(theirs)} layers")
    width = max(mask.shape[1], other_mask.shape[1])
    pad_mine, pad_theirs = width - mask.shape[1], width - other_mask.shape[1]
    for a, b in zip(mine, theirs):
        a.keys = torch.cat([F.pad(a.keys, (0, 0, pad_mine, 0)), F.pad(b.keys, (0, 0, pad_theirs, 0))])
        a.values = torch.cat([F.pad(a.values, (0, 0, pad_mine, 0)), F.pad(b.values, (0, 0, pad_theirs, 0))])
    return torch.cat([F.pad(mask, (pad_mine, 0)), F.pad(other_mask, (pad_theirs, 0))])
