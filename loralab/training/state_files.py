"""Optimizer, scheduler and random-generator states as safetensors + JSON: what a checkpoint holds besides
the weights, in files that are only ever read as data (nothing here unpickles).

    optimizer.safetensors   every tensor of optimizer.state_dict()["state"], named "state.<param index>.<key>"
    optimizer.json          {"param_groups": [...], "scalars": {index: {key: value}}, "tuples": [group keys
                            that were tuples, e.g. "betas"]}
    scheduler.json          scheduler.state_dict() (numbers and lists)
    rng.safetensors         "torch": the CPU generator's state (uint8), "cuda.<i>": each CUDA device's,
                            "numpy.key": NumPy's MT19937 key (624 words, stored as int64)
    rng.json                {"python": [version, [625 ints], gauss_next],
                             "numpy": {"algorithm", "pos", "has_gauss", "cached_gaussian"}}

`load_legacy_pt` reads the `.pt` files of loralab 0.1 checkpoints with torch.load(weights_only=True), whose
unpickler builds tensors and plain containers only. Their rng.pt also holds NumPy's generator state, a
uint32 array; for it exactly three more globals are allowed — numpy's array reconstructor, ndarray and
dtype — which can build an array of a plain dtype from bytes and call nothing else. Refusing them instead
would skip the RNG restore and break the promise that a resumed run (with dropout) ends bitwise where
an uninterrupted one does.
"""
from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from loralab.errors import LoraLabError


class UnreadableState(LoraLabError):
    """A state file that is missing, truncated, corrupt or holds something other than plain data."""


# --------------------------------------------------------------------------------------------------
# Optimizer
# --------------------------------------------------------------------------------------------------
def optimizer_files(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """optimizer.state_dict() -> (tensors for optimizer.safetensors, JSON for optimizer.json)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state_dict["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    groups, tuples = [], set()
    for group in state_dict["param_groups"]:
        plain = {}
        for key, value in group.items():
            if isinstance(value, torch.Tensor):
                raise LoraLabError(f"optimizer setting {key!r} is a tensor; checkpoints hold plain numbers")
            if isinstance(value, tuple):
                tuples.add(key)
                value = list(value)
            plain[key] = value
        groups.append(plain)
    return tensors, {"param_groups": groups, "scalars": scalars, "tuples": sorted(tuples)}


def optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """The inverse of `optimizer_files`: a dict for optimizer.load_state_dict."""
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        prefix, index, key = name.split(".", 2)
        if prefix != "state" or not index.isdigit():
            raise UnreadableState(f"unexpected optimizer tensor {name!r}")
        state.setdefault(int(index), {})[key] = tensor
    for index, values in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    tuples = set(meta.get("tuples", ()))
    groups = [{k: tuple(v) if k in tuples else v for k, v in group.items()} for group in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def check_optimizer_state(state_dict: dict[str, Any], params: list[torch.nn.Parameter]) -> None:
    """Every per-parameter tensor of a restored optimizer state has its parameter's shape (or is a scalar)."""
    for index, entry in state_dict["state"].items():
        if index >= len(params):
            raise UnreadableState(f"optimizer state for parameter {index}, but the run has {len(params)}")
        for key, value in entry.items():
            if isinstance(value, torch.Tensor) and value.ndim and value.shape != params[index].shape:
                raise UnreadableState(f"optimizer {key} of parameter {index} has shape {tuple(value.shape)}, "
                                      f"the parameter {tuple(params[index].shape)}")


# --------------------------------------------------------------------------------------------------
# Random generators
# --------------------------------------------------------------------------------------------------
def capture_rng() -> dict[str, Any]:
    """Every generator a training run may draw from (dropout, LoRA dropout, shuffles)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rng_files(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """capture_rng()'s dict -> (tensors for rng.safetensors, JSON for rng.json)."""
    algorithm, key, pos, has_gauss, cached = state["numpy"]
    tensors = {"torch": state["torch"], "numpy.key": torch.from_numpy(np.asarray(key, dtype=np.int64))}
    for i, cuda_state in enumerate(state.get("cuda", [])):
        tensors[f"cuda.{i}"] = cuda_state
    version, words, gauss_next = state["python"]
    meta = {"python": [version, list(words), gauss_next],
            "numpy": {"algorithm": algorithm, "pos": int(pos), "has_gauss": int(has_gauss),
                      "cached_gaussian": float(cached)}}
    return tensors, meta


def rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """The inverse of `rng_files`: a dict for `restore_rng`."""
    version, words, gauss_next = meta["python"]
    numpy_meta = meta["numpy"]
    key = tensors["numpy.key"].numpy().astype(np.uint32)
    state = {"python": (version, tuple(words), gauss_next),
             "numpy": (numpy_meta["algorithm"], key, numpy_meta["pos"], numpy_meta["has_gauss"],
                       numpy_meta["cached_gaussian"]),
             "torch": tensors["torch"]}
    cuda = sorted((int(name.split(".")[1]), t) for name, t in tensors.items() if name.startswith("cuda."))
    if cuda:
        state["cuda"] = [t for _, t in cuda]
    return state


# --------------------------------------------------------------------------------------------------
# loralab 0.1's .pt files
# --------------------------------------------------------------------------------------------------
def _numpy_array_globals() -> list:
    """The globals a pickled NumPy array needs, under the module names NumPy 1 and 2 write."""
    try:
        from numpy._core.multiarray import _reconstruct  # NumPy >= 2
    except ImportError:
        from numpy.core.multiarray import _reconstruct  # NumPy 1.x

    return [(_reconstruct, "numpy._core.multiarray._reconstruct"),
            (_reconstruct, "numpy.core.multiarray._reconstruct"), np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def load_legacy_pt(path: Path, numpy_arrays: bool = False) -> Any:
    """torch.load(weights_only=True) of a loralab 0.1 checkpoint file; numpy_arrays=True also allows NumPy
    arrays of plain dtypes (rng.pt). Anything else in the pickle is refused, never run."""
    try:
        if numpy_arrays:
            with torch.serialization.safe_globals(_numpy_array_globals()):
                return torch.load(path, weights_only=True, map_location="cpu")
        return torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise UnreadableState(f"{path.name} is missing") from None
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        text = str(exc)
        if "weights only" in text.lower() or "weights_only" in text.lower():
            found = re.search(r"GLOBAL ([\w.]+)|got <class '([\w.]+)'>", text)
            what = next(g for g in found.groups() if g) if found else "an object that is not plain data"
            raise UnreadableState(f"{path.name} holds {what}, not plain tensors; refused to load it "
                                  "(nothing in it was run)") from None
        raise UnreadableState(f"{path.name} is truncated or corrupt ({type(exc).__name__})") from None
