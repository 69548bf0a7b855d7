"""Smoke test of the benchmark's code paths on a tiny random BERT: every section runs, the table has its
rows and columns, and the analytic FLOP counts equal what torch's FlopCounterMode counts. No timing
thresholds: times on a shared CI machine say nothing."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks import run, suites  # noqa: E402
from benchmarks.flops import EncoderShape, forward_flops, training_step_flops  # noqa: E402



@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random 2-layer BERT (hidden 32) saved with all-MiniLM-L6-v2's tokenizer (same vocabulary)."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("tiny-bert")
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128, num_labels=2)
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(suites.default_model_dir()).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("lora", [True, False])
def test_flop_formula_matches_flop_counter(tiny_model_dir, tmp_path, lora):
    setup = suites.Setup(model_dir=str(tiny_model_dir), data_dir=tmp_path, r=4, alpha=8)   # no data is read
    model = setup.loralab_model() if lora else setup.base()
    batch, seq = 3, 7
    inputs = suites.fixed_batch(model.config.vocab_size, batch, seq, seed=0)
    with FlopCounterMode(display=False) as forward_count:
        loss = model(**inputs).loss
    with FlopCounterMode(display=False) as backward_count:
        loss.backward()
    shape = setup.shape()
    assert shape == EncoderShape(layers=2, hidden=32, intermediate=64, labels=2)
    expected_forward = forward_flops(shape, batch, seq, lora_rank=4 if lora else 0)
    assert forward_count.get_total_flops() == expected_forward
    assert (forward_count.get_total_flops() + backward_count.get_total_flops()
            == training_step_flops(shape, batch, seq, 4 if lora else None))


def test_flop_formula_by_hand():
    # One layer, h=2, I=4, 1 label, batch 1 × 1 token, no LoRA: linear 2·(4·4 + 2·2·4) = 64,
    # attention 4·1·1·2 = 8, pooler 2·4 = 8, classifier 2·2 = 4.
    shape = EncoderShape(layers=1, hidden=2, intermediate=4, labels=1)
    assert forward_flops(shape, 1, 1) == 84
    assert training_step_flops(shape, 1, 1, None) == 3 * 84


@pytest.mark.needs_shared_data("glue/SST-2/train.tsv")
def test_run_all_sections_tiny(tiny_model_dir, tmp_path, capsys, shared_data):
    out = tmp_path / "results.json"
    code = run.main(["--model", str(tiny_model_dir), "--data", str(shared_data / "glue" / "SST-2"), "--rounds", "1", "--sst2-steps", "6",
                     "--train-limit", "400", "--dev-limit", "64", "--batch", "8", "--seq", "16",
                     "--memory-steps", "1", "--json", str(out)])
    assert code == 0
    results = json.loads(out.read_text())
    for section in run.SECTIONS:
        assert section in results
    table = results["table"].splitlines()
    assert table[0] == "| " + " | ".join(run.COLUMNS) + " |"
    names = [line.split(" | ")[0].lstrip("| ") for line in table[2:]]
    assert names[0] == "fp32 matmul throughput (GFLOP/s)"
    assert "Training step, 8×16 tokens (ms)" in names
    assert "Training step, fraction of roofline" in names
    assert "SST-2 training throughput (real tokens/s)" in names
    assert any(n.startswith("Time to ") for n in names)
    for bs in (1, 8):
        for tag in ("unmerged", "merged"):
            assert f"Forward, batch {bs}×16, LoRA {tag} (ms)" in names
    assert names[-3:] == ["Adapter switch on a merged model (ms)", "Adapter load from disk (ms)",
                          "Peak RSS, training (MiB)"]
    assert all(line.count("|") == len(run.COLUMNS) + 1 for line in table)
    assert table[0] in capsys.readouterr().out

    step = results["step"]
    shape = EncoderShape(layers=2, hidden=32, intermediate=64, labels=2)
    assert step["flops"] == {"lora": training_step_flops(shape, 8, 16, 8), "full": training_step_flops(shape, 8, 16, None)}
    assert set(step["median_ms"]) == {"loralab", "peft", "full"}
    sst2 = results["sst2"]["run"]["libraries"]
    for lib in ("loralab", "peft"):
        assert 0 <= sst2[lib]["pad_fraction"] < 1
        assert sst2[lib]["real_tokens"] <= sst2[lib]["padded_tokens"]
    # Length grouping is the point of loralab's batching: it pads less than random batches.
    assert sst2["loralab"]["pad_fraction"] < sst2["peft"]["pad_fraction"]
    memory = results["memory"]
    assert set(memory) == {"loralab", "peft", "full"}
    assert all(m["peak_mib"] >= m["loaded_mib"] > 0 for m in memory.values())
