"""Scoring a model on an encoded data set: loss and the task's metrics, split across data-parallel ranks."""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from loralab.data.batching import PadCollator, eval_batches
from loralab.data.encoding import IGNORE_INDEX, EncodedDataset
from loralab.data.labels import LabelMap
from loralab.data.tasks import TASKS
from loralab.errors import LoraLabError
from loralab.precision import Precision
from loralab.training import distributed
from loralab.training.scores import classification_metrics, regression_metrics


@dataclass
class EvalResult:
    """metrics: name -> value (loss always; accuracy/f1/mcc or pearson/spearman/mse; perplexity for LM).
    Regression: loss is the training objective (mean squared error of the standardised targets when the label
    map scales them), mse and the predictions are in the labels' units.
    predictions: per example in dataset order (class ids, floats), empty for causal LM."""

    metrics: dict[str, float]
    predictions: list[Any] = field(default_factory=list)


def move_batch(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def _score_batch(model: nn.Module, batch: dict[str, torch.Tensor], task_kind: str) -> tuple[float, int, list[Any]]:
    """(summed loss, examples or target tokens scored, per-example outputs) of one batch."""
    labels = batch.pop("labels")
    logits = model(**batch).logits.float()
    if TASKS[task_kind].is_generative:
        shifted, targets = logits[:, :-1], labels[:, 1:]
        mask = targets != IGNORE_INDEX
        loss = float(nn.functional.cross_entropy(shifted[mask], targets[mask], reduction="sum"))
        return loss, int(mask.sum()), [None] * len(labels)
    if TASKS[task_kind].is_regression:
        values = logits.view(-1)
        return float(((values - labels.float()) ** 2).sum()), len(values), values.cpu().tolist()
    loss = float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
    return loss, len(labels), logits.argmax(-1).cpu().tolist()


def evaluate(model: nn.Module, dataset: EncodedDataset, task_kind: str, collator: PadCollator,
             batch_size: int = 64, label_map: LabelMap | None = None,
             dist: distributed.DistInfo | None = None, device: torch.device | None = None,
             precision: Precision | None = None) -> EvalResult:
    """Score `dataset` (features with labels) under torch.inference_mode, model in eval mode, forward under
    `precision`'s autocast (loralab.precision; fp32 and the model's device when None).

    Batches are sorted by length (eval_batches); with several ranks, rank r scores batches r, r+N, ...
    and the results are gathered, so every rank returns the same metrics (with a sharded model, ranks with
    fewer batches run spare forwards: each forward is a collective). Loss: mean cross-entropy per
    example (classification), mean squared error (regression), mean cross-entropy per target token
    (causal LM, whose metrics add perplexity = exp(loss)).
    """
    dist = dist or distributed.DistInfo()
    device = device or (precision.device if precision is not None else dist.device)
    autocast = precision.autocast() if precision is not None else contextlib.nullcontext()
    inner = distributed.unwrap(model)
    was_training = inner.training
    inner.eval()
    batches = eval_batches(dataset.lengths, batch_size)
    outputs: dict[int, list[Any]] = {}
    loss_sum, count = 0.0, 0
    mine = range(dist.rank, len(batches), dist.world_size)
    spare = -(-len(batches) // dist.world_size) - len(mine) if dist.sharded else 0
    with torch.inference_mode(), autocast:
        for b in mine:
            batch = move_batch(collator([dataset[i] for i in batches[b]]), device)
            batch_loss, batch_count, outputs[b] = _score_batch(inner, batch, task_kind)
            loss_sum += batch_loss
            count += batch_count
        for _ in range(spare):
            _score_batch(inner, move_batch(collator([dataset[i] for i in batches[0]]), device), task_kind)
    if was_training:
        inner.train()
    gathered = distributed.all_gather_objects((outputs, loss_sum, count), dist)
    merged: dict[int, list[Any]] = {}
    loss_sum = count = 0
    for part, part_loss, part_count in gathered:
        merged.update(part)
        loss_sum += part_loss
        count += part_count
    if count == 0:
        raise LoraLabError("evaluation data has no scored tokens or examples")
    return _metrics(loss_sum / count, task_kind, dataset, batches, merged, label_map)


def _metrics(loss: float, task_kind: str, dataset: EncodedDataset, batches: list[list[int]],
             outputs: dict[int, list[Any]], label_map: LabelMap | None) -> EvalResult:
    metrics: dict[str, float] = {"loss": loss}
    if TASKS[task_kind].is_generative:
        metrics["perplexity"] = math.exp(min(loss, 50.0))
        return EvalResult(metrics)
    predictions: list[Any] = [None] * len(dataset)
    for b, batch_indices in enumerate(batches):
        for i, value in zip(batch_indices, outputs[b]):
            predictions[i] = value
    labels = [dataset[i]["labels"] for i in range(len(dataset))]
    if TASKS[task_kind].is_regression:
        if label_map is not None:   # the model learnt scaled targets: score and answer in the labels' units
            predictions = [label_map.value(p) for p in predictions]
            labels = [label_map.value(y) for y in labels]
        metrics.update(regression_metrics(predictions, labels))
    else:
        num_classes = label_map.num_labels if label_map else max(max(predictions), max(labels)) + 1
        metrics.update(classification_metrics(predictions, labels, num_classes))
    return EvalResult(metrics, predictions)
