"""Packing: several short causal LM examples share one row of up to max_length tokens, each attending only
to itself.

    packed = pack_examples(encoded_train, max_length=256)     # a PackedDataset: rows instead of examples
    batch = PadCollator(pad_id)([packed[i] for i in rows])    # position_ids + block-diagonal 4-D mask

A packed row concatenates its examples' input_ids and labels, with
  - position_ids restarting at 0 for each example (GPT-2's absolute position embeddings and LLaMA's RoPE
    see the same positions as unpacked);
  - labels[start] = IGNORE_INDEX at the first token of each example, so the last token of one example
    never learns to predict the first token of the next (causal LMs shift labels by one; an example's
    first label is never scored unpacked either);
and the collator turns the position_ids into a (B, 1, T, T) float additive attention mask (0 where a
query may attend, the float32 minimum elsewhere): causal inside each example, nothing across examples.
transformers passes a 4-D mask through to the attention unchanged, which eager and sdpa attention both
add to the scores, so the packed loss equals the unpacked loss (tests/data/test_packing.py).
"""
from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

import torch

from loralab.data.encoding import IGNORE_INDEX, EncodedDataset
from loralab.errors import LoraLabError


class PackedDataset:
    """Packed rows of an EncodedDataset, a map-style torch Dataset like it (len, [i], lengths).

    features[r]: {"input_ids", "labels", "position_ids"}, lists of length lengths[r] <= max_length.
    rows[r]: the indices into `source` packed into row r, in the order they appear in the row.
    """

    def __init__(self, source: EncodedDataset, rows: list[list[int]], max_length: int) -> None:
        self.source, self.rows, self.max_length = source, rows, max_length
        self.task = source.task
        self.features = [_pack_row([source[i] for i in row]) for row in rows]
        self.lengths = [len(f["input_ids"]) for f in self.features]

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.features[index]

    @property
    def fill(self) -> float:
        """Real tokens over the rows' capacity (len(rows) * max_length): 1.0 is perfectly full."""
        return sum(self.lengths) / (len(self.rows) * self.max_length)


def _pack_row(features: Sequence[dict[str, Any]]) -> dict[str, list[int]]:
    input_ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for feature in features:
        ids = list(feature["input_ids"])
        input_ids += ids
        labels += [IGNORE_INDEX] + list(feature["labels"][1:])
        positions += range(len(ids))
    return {"input_ids": input_ids, "labels": labels, "position_ids": positions}


def pack_rows(lengths: Sequence[int], max_length: int) -> list[list[int]]:
    """Best-fit decreasing: take examples longest first (ties by index), put each into the open row with
    the least room that still fits it, else open a new row. Deterministic; each row lists its examples
    in index order. Every length must be at most max_length."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (tokens left, row index), sorted: best fit = first with enough room
    for i in order:
        slot = bisect.bisect_left(room, (lengths[i], -1))
        if slot == len(room):
            rows.append([i])
            left, row = max_length - lengths[i], len(rows) - 1
        else:
            left, row = room.pop(slot)
            rows[row].append(i)
            left -= lengths[i]
        if left > 0:
            bisect.insort(room, (left, row))
    return [sorted(row) for row in rows]


def pack_examples(dataset: EncodedDataset, max_length: int) -> PackedDataset:
    """Pack a causal LM data set (features with token labels) into rows of at most max_length tokens.

    Use it for the training split only (evaluation scores examples one by one); its rows go to the
    length-grouped sampler and PadCollator like examples do.
    """
    if max_length < 2:
        raise LoraLabError(f"packing needs max_length of at least 2 tokens, got {max_length}")
    if not len(dataset):
        raise LoraLabError("no examples to pack")
    first = dataset[0]
    if not isinstance(first.get("labels"), list) or "token_type_ids" in first:
        raise LoraLabError("packing applies to causal LM training data (token labels); use the causal-lm task")
    longest = max(dataset.lengths)
    if longest > max_length:
        raise LoraLabError(f"an example has {longest} tokens, more than the packed length {max_length}; "
                           "encode with max_length at most the packed length")
    return PackedDataset(dataset, pack_rows(dataset.lengths, max_length), max_length)


def block_causal_mask(position_ids: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
    """The additive attention mask of packed rows, (B, 1, T, T) float32.

    position_ids: (B, T), restarting at 0 where each example starts; lengths: real tokens per row (the
    rest is right padding). Query q may attend key k when both belong to the same example and k <= q.
    A padding position attends only to itself, so no row of the softmax is empty (an all-masked row
    would give NaN and poison the backward pass); its label is IGNORE_INDEX anyway.
    """
    width = position_ids.shape[1]
    real = torch.arange(width)[None, :] < torch.tensor(list(lengths))[:, None]            # (B, T)
    example = torch.cumsum((position_ids == 0) & real, dim=1)                             # example number
    same = (example[:, :, None] == example[:, None, :]) & real[:, :, None] & real[:, None, :]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    allowed = (same & causal) | torch.eye(width, dtype=torch.bool)
    mask = torch.zeros(allowed.shape, dtype=torch.float32)
    mask.masked_fill_(~allowed, torch.finfo(torch.float32).min)
    return mask[:, None]
