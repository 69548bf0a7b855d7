"""Batches: dynamic padding, a seeded length-grouped sampler for training, length-sorted evaluation batches.

Padding to the longest example of a batch (not to max_length) and putting examples of similar length in
the same batch both cut the pad tokens the model computes on; on SST-2 the grouped sampler pads several
times less than random batches (tests/data/test_batching.py holds the numbers).

Training order is a pure function of (seed, epoch): a run resumed from a checkpoint at (epoch, batch k)
sees exactly the batches it would have seen, and data-parallel ranks agree on the order without talking.

Packed training rows (loralab.data.packing) go through the same sampler and collator: the collator sees
their position_ids and builds the block-diagonal attention mask.
"""
from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from loralab.data.encoding import IGNORE_INDEX
from loralab.data.packing import block_causal_mask
from loralab.errors import LoraLabError


def pad_token_id_for(tokenizer: Any) -> int:
    """The id to pad inputs with: the tokenizer's pad token, else its EOS (GPT-2 and LLaMA have no pad
    token; padded positions are masked out of attention and loss, so any id works), else 0."""
    for candidate in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if candidate is not None:
            return int(candidate)
    return 0


@dataclass(frozen=True)
class PadCollator:
    """Collate feature dicts (from `EncodedDataset`) into padded tensors, padding to the batch's longest.

    Returns input_ids (B, T) int64, attention_mask (B, T) int64 with 1 on real tokens, token_type_ids
    (B, T) when the features have them, and labels: (B,) int64 class ids, (B,) float32 regression
    targets, or (B, T) int64 token labels padded with IGNORE_INDEX (causal LM). T is the longest
    input in the batch, rounded up to pad_to_multiple_of if set.
    Packed rows (features with position_ids, from loralab.data.packing.pack_examples) also give
    position_ids (B, T) int64, and attention_mask is then the (B, 1, T, T) float32 additive mask that
    keeps attention inside each packed example (loralab.data.packing.block_causal_mask).
    padding_side: "right" for training and scoring; "left" for batched generation, so that every prompt
    ends at the last position and new tokens follow directly.
    """

    pad_token_id: int
    padding_side: str = "right"
    pad_to_multiple_of: int | None = None

    def __post_init__(self) -> None:
        if self.padding_side not in ("left", "right"):
            raise LoraLabError(f"padding_side must be 'left' or 'right', got {self.padding_side!r}")
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of < 1:
            raise LoraLabError(f"pad_to_multiple_of must be positive, got {self.pad_to_multiple_of}")

    def _pad(self, rows: list[list[int]], value: int, width: int) -> torch.Tensor:
        out = torch.full((len(rows), width), value, dtype=torch.long)
        for i, row in enumerate(rows):
            if self.padding_side == "right":
                out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            elif row:
                out[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
        return out

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise LoraLabError("cannot collate an empty batch")
        ids = [list(f["input_ids"]) for f in features]
        width = max(len(row) for row in ids)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = {
            "input_ids": self._pad(ids, self.pad_token_id, width),
            "attention_mask": self._pad([[1] * len(row) for row in ids], 0, width),
        }
        if "token_type_ids" in features[0]:
            batch["token_type_ids"] = self._pad([list(f["token_type_ids"]) for f in features], 0, width)
        if "position_ids" in features[0]:
            if self.padding_side != "right":
                raise LoraLabError("packed rows are for training and are padded on the right")
            batch["position_ids"] = self._pad([list(f["position_ids"]) for f in features], 0, width)
            batch["attention_mask"] = block_causal_mask(batch["position_ids"], [len(row) for row in ids])
        if "labels" in features[0]:
            labels = [f["labels"] for f in features]
            if isinstance(labels[0], list):
                batch["labels"] = self._pad(labels, IGNORE_INDEX, width)
            elif isinstance(labels[0], float):
                batch["labels"] = torch.tensor(labels, dtype=torch.float32)
            else:
                batch["labels"] = torch.tensor(labels, dtype=torch.long)
        return batch


def count_pad_tokens(batches: Sequence[Sequence[int]], lengths: Sequence[int]) -> int:
    """Pad tokens the batches cost with dynamic padding: sum over batches of size * longest - real tokens."""
    return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches if b)


class LengthGroupedBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Seeded training batches of similar-length examples, resumable, shardable across ranks.

    One epoch's global batch list, a pure function of (seed, epoch, lengths, batch_size):
      1. shuffle all indices with random.Random(f"{seed}:{epoch}") (Python's string seeding hashes with
         SHA-512, so the order is the same on every machine and unaffected by PYTHONHASHSEED);
      2. cut the shuffled list into mega-batches of mega_batch_factor * batch_size indices, sort each
         by length, longest first (stable), and cut it into batches of batch_size;
      3. shuffle the batches with the same generator, so lengths vary from step to step.
    The last batch may be short (drop_last=False) or is dropped (drop_last=True).

    Data parallel: with num_replicas N, rank r takes global batches r, r+N, r+2N, ...; when the count is
    not a multiple of N the list is first extended by repeating its first batches (drop_last=False) or
    cut (drop_last=True), so every rank runs the same number of steps.

    Resume: `set_epoch(epoch, start_batch=k)` skips this rank's first k batches of that epoch; len() is
    then the number of batches left, what a DataLoader over this sampler yields.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, mega_batch_factor: int = 50,
                 drop_last: bool = False, num_replicas: int = 1, rank: int = 0) -> None:
        if batch_size < 1:
            raise LoraLabError(f"batch size must be at least 1, got {batch_size}")
        if mega_batch_factor < 1:
            raise LoraLabError(f"mega_batch_factor must be at least 1, got {mega_batch_factor}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise LoraLabError(f"rank {rank} is not in 0..{num_replicas - 1}")
        if not lengths:
            raise LoraLabError("no examples to batch")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.mega_batch_factor = mega_batch_factor
        self.drop_last = drop_last
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.start_batch = 0
        if self.batches_per_epoch == 0:
            raise LoraLabError(f"{len(self.lengths)} examples make no full batch of {batch_size} per rank "
                               f"across {num_replicas} rank(s); lower the batch size or keep the last batch")

    def global_batches(self, epoch: int) -> list[list[int]]:
        """All ranks' batches of `epoch`, in order, before sharding."""
        rng = random.Random(f"{self.seed}:{epoch}")
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        mega = self.batch_size * self.mega_batch_factor
        batches = []
        for start in range(0, len(order), mega):
            chunk = sorted(order[start:start + mega], key=lambda i: -self.lengths[i])
            batches.extend(chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size))
        if self.drop_last and len(batches[-1]) < self.batch_size:
            batches.pop()
        rng.shuffle(batches)
        return batches

    def _global_count(self) -> int:
        full, rest = divmod(len(self.lengths), self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    @property
    def batches_per_epoch(self) -> int:
        """Batches this rank runs in a full epoch (the same on every rank)."""
        count = self._global_count()
        return count // self.num_replicas if self.drop_last else -(-count // self.num_replicas)

    def rank_batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches of `epoch`, from the start of the epoch."""
        batches = self.global_batches(epoch)
        needed = self.batches_per_epoch * self.num_replicas
        while len(batches) < needed:  # repeat from the front so every rank gets the same count
            batches = batches + batches[: needed - len(batches)]
        return batches[:needed][self.rank::self.num_replicas]

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Choose the epoch to iterate and the position (in this rank's batches) to resume from."""
        if epoch < 0:
            raise LoraLabError(f"epoch must be 0 or more, got {epoch}")
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise LoraLabError(f"resume position {start_batch} is outside the epoch's "
                               f"{self.batches_per_epoch} batches")
        self.epoch = epoch
        self.start_batch = start_batch

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.rank_batches(self.epoch)[self.start_batch:]

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch


def eval_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Evaluation batches: indices sorted by length, longest first (an out-of-memory shows on the first
    batch), no shuffling, each batch a list of dataset indices. Use `restore_order` to put per-batch
    outputs back into dataset order. Ties keep dataset order, so the batches are deterministic."""
    if batch_size < 1:
        raise LoraLabError(f"batch size must be at least 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def restore_order(batches: Sequence[Sequence[int]], outputs: Sequence[Sequence[Any]]) -> list[Any]:
    """Per-example outputs in dataset order: outputs[b][j] belongs to dataset index batches[b][j].

    Every dataset index 0..n-1 must appear exactly once across the batches.
    """
    if len(batches) != len(outputs):
        raise LoraLabError(f"{len(outputs)} batch outputs for {len(batches)} batches")
    total = sum(len(b) for b in batches)
    result: list[Any] = [None] * total
    seen = [False] * total
    for batch, batch_outputs in zip(batches, outputs):
        if len(batch) != len(batch_outputs):
            raise LoraLabError(f"a batch of {len(batch)} examples has {len(batch_outputs)} outputs")
        for index, value in zip(batch, batch_outputs):
            if not 0 <= index < total or seen[index]:
                raise LoraLabError(f"dataset index {index} is out of range or repeated across batches")
            seen[index] = True
            result[index] = value
    return result
