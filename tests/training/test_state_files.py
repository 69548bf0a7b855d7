"""Random-generator and optimizer states through safetensors + JSON, and the guarded reader of 0.1's .pt files."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from loralab.training.state_files import (UnreadableState, capture_rng, load_legacy_pt, restore_rng, rng_files,
                                          rng_state)

GOLDEN_STEP = Path(__file__).resolve().parents[1] / "golden" / "v0.1" / "run-bert" / "checkpoints" / "step-000009"


def _draws():
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_rng_state_round_trips_through_tensors_and_json(tmp_path):
    from safetensors.torch import load_file, save_file
    import json

    random.gauss(0, 1)   # leaves a cached Gaussian in Python's state
    tensors, meta = rng_files(capture_rng())
    save_file(tensors, str(tmp_path / "rng.safetensors"))
    (tmp_path / "rng.json").write_text(json.dumps(meta))
    expected = _draws()
    restore_rng(rng_state(load_file(str(tmp_path / "rng.safetensors")), json.loads((tmp_path / "rng.json").read_text())))
    assert _draws() == expected


def test_legacy_rng_pt_restores_numpy_state_and_truncated_files_are_named(tmp_path):
    state = load_legacy_pt(GOLDEN_STEP / "rng.pt", numpy_arrays=True)
    restore_rng(state)
    first = _draws()
    restore_rng(load_legacy_pt(GOLDEN_STEP / "rng.pt", numpy_arrays=True))
    assert _draws() == first
    with pytest.raises(UnreadableState, match="rng.pt holds numpy"):
        load_legacy_pt(GOLDEN_STEP / "rng.pt")            # arrays are allowed only where 0.1 wrote them
    cut = tmp_path / "optimizer.pt"
    cut.write_bytes((GOLDEN_STEP / "optimizer.pt").read_bytes()[:500])
    with pytest.raises(UnreadableState, match="optimizer.pt is truncated or corrupt"):
        load_legacy_pt(cut)


def test_cuda_generator_states_are_kept_per_device(monkeypatch):
    """No GPU here: fake two devices' generator states and check they travel as cuda.0, cuda.1 and come back
    in device order (a GPU machine runs the real thing through the same code)."""
    states = [torch.arange(16, dtype=torch.uint8), torch.arange(16, 32, dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: states)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.extend)
    tensors, meta = rng_files(capture_rng())
    assert torch.equal(tensors["cuda.0"], states[0]) and torch.equal(tensors["cuda.1"], states[1])
    restore_rng(rng_state(tensors, meta))
    assert len(restored) == 2 and all(torch.equal(a, b) for a, b in zip(restored, states))
