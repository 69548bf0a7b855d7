"""The update that full fine-tuning finds, ΔW = W_ft − W0, per weight matrix: its singular values and how
many directions hold its energy (is the full update itself low-rank? Hu et al. 2021 hypothesise a low
"intrinsic rank" of the update; LoRA imposes it).

    rows = update_spectrum("run/adapter/trainable.safetensors", "all-minilm-l6-v2")

The fine-tuned tensors come from a full fine-tuning run of loralab's trainer (method "full" saves every
parameter as adapter/trainable.safetensors); W0 from the base model's safetensors files. Dense SVDs in
float64 (a 384 × 1536 matrix takes milliseconds).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from loralab.analysis.spectrum import effective_rank, energy_rank, stable_rank
from loralab.models.loading import resolve_model_spec


def _base_key(name: str, base: dict[str, Any]) -> str | None:
    """The base checkpoint's key for a trained tensor name: the name itself, or it with leading components
    dropped (a classification model stores the encoder under "bert.", the base checkpoint does not)."""
    parts = name.split(".")
    for start in range(len(parts)):
        key = ".".join(parts[start:])
        if key in base:
            return key
    return None


def update_spectrum(trained_file: str | os.PathLike, model_spec: str, seed: int = 0) -> list[dict[str, Any]]:
    """Singular values of ΔW = W_ft − W0 for every weight matrix of a full fine-tuning run.

    trained_file: the run's adapter/trainable.safetensors (every parameter, fine-tuned); model_spec: its base
    model. Embedding tables (lookups, mostly untouched rows) and the fresh head (no W0) are left out. Per
    matrix: ‖ΔW‖_F, ‖ΔW‖_F/‖W0‖_F, effective rank (exp of the entropy of σ/Σσ), stable rank
    (‖ΔW‖_F²/σ_1²), the ranks holding 50 % and 90 % of ‖ΔW‖_F², and the same ranks of a Gaussian matrix of
    the same shape (a full-rank reference). Also "singular_values" (descending) for plots."""
    import torch
    from safetensors.torch import load_file

    previous_threads = torch.get_num_threads()
    base: dict[str, Any] = {}
    for path in sorted(Path(resolve_model_spec(model_spec)).glob("*.safetensors")):
        base.update(load_file(str(path)))
    generator = torch.Generator().manual_seed(seed)
    rows = []
    torch.set_num_threads(1)   # many small SVDs: one thread is fastest on shared cores
    try:
        for name, tuned in load_file(str(trained_file)).items():
            key = _base_key(name, base)
            if tuned.ndim != 2 or "embeddings" in name or key is None:
                continue
            w0 = base[key].double()
            sigma = torch.linalg.svdvals(tuned.double() - w0)
            gauss = torch.linalg.svdvals(torch.randn(tuple(tuned.shape), generator=generator, dtype=torch.float64))
            frobenius = float(sigma.norm())
            rows.append({"matrix": key, "shape": "×".join(map(str, tuned.shape)), "full_rank": min(tuned.shape),
                         "delta_fro": frobenius, "relative_change": frobenius / float(w0.norm()),
                         "effective_rank": effective_rank(sigma), "stable_rank": stable_rank(sigma),
                         "rank_50": energy_rank(sigma, 0.5), "rank_90": energy_rank(sigma, 0.9),
                         "top1_energy": float(sigma[0] ** 2) / frobenius ** 2 if frobenius else 0.0,
                         "gaussian_effective_rank": effective_rank(gauss), "gaussian_rank_90": energy_rank(gauss, 0.9),
                         "singular_values": [float(s) for s in sigma]})
    finally:
        torch.set_num_threads(previous_threads)
    return rows
