"""Smoke test of benchmarks/quantized.py on a tiny layer and a tiny random BERT: every variant runs, the
tables have a row per variant, errors and memory are filled in. No timing thresholds."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks import quantized, suites  # noqa: E402
from loralab.testing import tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-bert-q")
    # widths that bitsandbytes' CPU inference packing accepts (multiples of 64)
    tiny_model("bert", num_labels=2, hidden_size=64, intermediate_size=128).save_pretrained(folder)
    return folder


def test_one_layer_table():
    result = quantized.one_layer(rounds=1, warmup=0, shape=(16, 64, 128))
    names = set(result["variants"])
    assert {"fp32", "bf16", "int8 (no Wᵀ copy)", "int8 (Wᵀ copy)", "nf4", "nf4 (torch dequant)"} <= names
    assert result["variants"]["fp32"]["output_error"] == 0
    assert 0.05 < result["variants"]["nf4"]["output_error"] < 0.12
    assert result["variants"]["nf4"]["weight_bytes"] == 64 * 128 // 2 + 4 * 64 * 128 // 64
    table = quantized.layer_table(result)
    assert len([line for line in table.splitlines() if line.startswith("| ")]) == len(names) + 1


def test_training_steps_table(tiny_model_dir):
    setup = suites.Setup(model_dir=str(tiny_model_dir), data_dir=Path("."))
    result = quantized.training_steps(setup, batch=2, seq=8, rounds=1, warmup=0)
    variants = result["variants"]
    assert {"loralab fp32", "loralab nf4", "PEFT fp32", "PEFT bf16 (weights)"} <= set(variants)
    assert variants["loralab fp32"]["start_hidden_error"] == 0
    assert variants["loralab nf4"]["weight_bytes"] < 0.15 * variants["loralab nf4"]["weight_fp32_bytes"]
    assert all(r["wall_ms"] > 0 for r in variants.values())
    assert "PEFT fp32 ÷ this" in quantized.step_table(result)
    # bf16 frozen weights: half the fp32 model's weight bytes (the fp32 head and LoRA factors are tiny here)
    assert variants["loralab --dtype bf16"]["resident_bytes"] < 0.6 * variants["loralab fp32"]["resident_bytes"]
    # AdamW's moments: fp32 trainables on the bf16 base too, so the same bytes as on the fp32 base
    assert variants["loralab --dtype bf16"]["optimizer_bytes"] == variants["loralab fp32"]["optimizer_bytes"]
    assert all(r["step_peak_bytes"] > 0 for r in variants.values())
    memory = quantized.step_memory_table(result)
    assert len([line for line in memory.splitlines() if line.startswith("| ")]) == len(variants) + 1
