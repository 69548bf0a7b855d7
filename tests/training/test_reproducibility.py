"""The process a run trains in: thread count and seeds (loralab/training/reproducibility.py)."""
import random

import numpy as np
import torch

from loralab.training.reproducibility import available_cores, seed_everything, set_threads


def test_seed_everything_repeats_every_generator():
    seed_everything(7)
    first = (random.random(), float(np.random.rand()), torch.rand(3).tolist())
    seed_everything(7)
    assert (random.random(), float(np.random.rand()), torch.rand(3).tolist()) == first


def test_set_threads_explicit_and_shared_among_local_processes():
    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1 and torch.get_num_threads() == 1
        assert set_threads(None, local_world_size=available_cores() + 5) == 1
    finally:
        torch.set_num_threads(before)
