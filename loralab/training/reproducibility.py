"""The process a run trains in: torch threads and the seeds of every generator the run draws from."""
from __future__ import annotations

import os
import random

import numpy as np
import torch


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask), not the machine's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def set_threads(threads: int | None, local_world_size: int = 1) -> int:
    """torch intra-op threads: `threads`, else the available cores shared among the processes on this
    machine (oversubscribing cores makes every process slower). Returns the count set."""
    count = threads or max(1, available_cores() // max(1, local_world_size))
    torch.set_num_threads(count)
    return count


def seed_everything(seed: int) -> None:
    """Seed Python's `random`, NumPy's global generator and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
