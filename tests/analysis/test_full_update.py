"""update_spectrum on a constructed update: a rank-2 ΔW is found to have rank 2, its norms and ranks are
exact, and embeddings and the fresh head are left out."""
import json

import pytest
import torch
from safetensors.torch import save_file

from loralab.analysis.full_update import update_spectrum


def test_spectrum_of_a_known_low_rank_update(tmp_path):
    g = torch.Generator().manual_seed(0)
    w0 = {"encoder.layer.0.attention.self.query.weight": torch.randn(24, 16, generator=g),
          "encoder.layer.0.attention.self.query.bias": torch.randn(24, generator=g),
          "embeddings.word_embeddings.weight": torch.randn(50, 16, generator=g)}
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"model_type": "bert"}))
    save_file(w0, str(base / "model.safetensors"))
    # ΔW = 4·u1·v1ᵀ + 1·u2·v2ᵀ with orthonormal u, v: singular values exactly 4 and 1
    u, _ = torch.linalg.qr(torch.randn(24, 2, generator=g))
    v, _ = torch.linalg.qr(torch.randn(16, 2, generator=g))
    delta = 4 * torch.outer(u[:, 0], v[:, 0]) + torch.outer(u[:, 1], v[:, 1])
    tuned = {"bert." + k: t.clone() for k, t in w0.items()}
    tuned["bert.encoder.layer.0.attention.self.query.weight"] += delta
    tuned["bert.embeddings.word_embeddings.weight"] += 1.0
    tuned["classifier.weight"] = torch.randn(2, 16, generator=g)
    save_file(tuned, str(tmp_path / "trainable.safetensors"))

    rows = update_spectrum(tmp_path / "trainable.safetensors", str(base))
    assert [r["matrix"] for r in rows] == ["encoder.layer.0.attention.self.query.weight"]
    row = rows[0]
    assert row["singular_values"][:2] == pytest.approx([4.0, 1.0], abs=1e-5)
    assert max(row["singular_values"][2:]) < 1e-5
    assert row["delta_fro"] == pytest.approx(17 ** 0.5, rel=1e-5)
    assert row["stable_rank"] == pytest.approx(17 / 16, rel=1e-4)
    assert (row["rank_50"], row["rank_90"], row["full_rank"]) == (1, 1, 16)   # 16/17 of the energy in one direction
    assert row["top1_energy"] == pytest.approx(16 / 17, rel=1e-4)
    assert row["gaussian_rank_90"] > 8   # a random matrix of the same shape spreads its energy
