"""Time of one training step per method, measured side by side in one process on one fixed batch.

    rows = measure_step_times("all-minilm-l6-v2", [("full", "full", {}), ("d=1000", "intrinsic", {"d": 1000})])

Each method gets a fresh copy of the model (the loralab.baselines METHODS registry, LoRA through it too),
AdamW over its trainable values, and one warm-up step; then the methods take turns, one step each per
round, for `rounds` rounds (interleaved, so a change in the machine's load hits all of them alike).
Reported per method: the median CPU time of the process per step (time.process_time: robust to other
jobs on a shared machine, unlike wall time) and the median wall time, and both relative to the first
method. One torch thread.
"""
from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Sequence
from typing import Any

from loralab.baselines import METHODS, count_trainable
from loralab.experiments.common import one_thread
from loralab.models import load_model


def _one_step(model, optimizer, batch) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    model(**batch).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.process_time() - cpu, time.perf_counter() - wall


def measure_step_times(model_spec: str, methods: Sequence[tuple[str, str, dict[str, Any]]], batch_size: int = 16,
                       seq_len: int = 64, rounds: int = 5, seed: int = 0) -> list[dict[str, Any]]:
    """methods: (label, METHODS name, options). Returns one row per method: label, trained values, median
    CPU and wall milliseconds per step (forward, backward, AdamW step) and their ratios to the first method.
    The batch is random token ids of the model's vocabulary with random binary labels."""
    import torch

    torch.manual_seed(seed)
    base = load_model(model_spec, task="sequence-classification", num_labels=2)
    vocab = base.config.vocab_size
    batch = {"input_ids": torch.randint(1000, vocab, (batch_size, seq_len)),
             "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long),
             "labels": torch.randint(0, 2, (batch_size,))}
    prepared = []
    with one_thread():
        for label, method, options in methods:
            model = METHODS[method](copy.deepcopy(base), **options)
            model.train()
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
            _one_step(model, optimizer, batch)   # warm-up: allocator, lazy initialisation
            prepared.append((label, model, optimizer, count_trainable(model), [], []))
        for _ in range(rounds):
            for label, model, optimizer, _, cpu, wall in prepared:
                c, w = _one_step(model, optimizer, batch)
                cpu.append(c)
                wall.append(w)
    rows = []
    for label, _, _, trained, cpu, wall in prepared:
        rows.append({"method": label, "trained_values": trained, "cpu_ms_per_step": 1000 * statistics.median(cpu),
                     "wall_ms_per_step": 1000 * statistics.median(wall)})
    for row in rows:
        row["cpu_vs_first"] = row["cpu_ms_per_step"] / rows[0]["cpu_ms_per_step"]
        row["wall_vs_first"] = row["wall_ms_per_step"] / rows[0]["wall_ms_per_step"]
    return rows
