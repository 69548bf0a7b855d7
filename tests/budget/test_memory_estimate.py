"""Training-memory estimate: Korthikanti et al.'s activation formula, model states, monotonicity, units."""
import dataclasses

import pytest
import transformers

from loralab import LoraLabError
from loralab.budget import build_skeleton, estimate_budget, estimate_budgets
from loralab.budget.memory_estimate import (TrainingSetup, full_finetune_memory, layer_activation_terms, lora_memory,
                                   model_activation_bytes)
from loralab.budget.skeleton import TransformerDims

GPT = TransformerDims(hidden=1024, layers=24, heads=16, kv_heads=16, head_dim=64, intermediate=4096, vocab=50257,
                      max_positions=1024, gated_mlp=False, dropout=True, lm_head=True)


@pytest.mark.parametrize("s, b", [(512, 1), (1024, 8), (128, 3)])
def test_layer_terms_reduce_to_korthikanti(s, b):
    setup = TrainingSetup(batch_size=b, seq_len=s, dtype="fp16")
    h, a = GPT.hidden, GPT.heads
    # Korthikanti et al. 2022, eq. (1): s·b·h·(34 + 5·a·s/h) bytes per layer
    assert sum(layer_activation_terms(GPT, setup).values()) == s * b * h * 34 + 5 * a * s * s * b
    flash = TrainingSetup(batch_size=b, seq_len=s, dtype="fp16", attention="flash")
    assert sum(layer_activation_terms(GPT, flash).values()) == s * b * h * 34 + 4 * a * s * b


def test_model_activations_add_the_output_layer():
    setup = TrainingSetup(batch_size=2, seq_len=256)
    layers = GPT.layers * sum(layer_activation_terms(GPT, setup).values())
    s, b, h, v = 256, 2, GPT.hidden, GPT.vocab
    assert model_activation_bytes(GPT, setup) == layers + s * b * h + 4 * s * b * h + 4 * s * b * v
    no_head = dataclasses.replace(GPT, lm_head=False, dropout=False)
    fp16, fp32 = TrainingSetup(dtype="fp16"), TrainingSetup(dtype="fp32")
    assert model_activation_bytes(no_head, fp32) == 2 * model_activation_bytes(no_head, fp16)


def test_activations_grow_with_batch_and_sequence():
    small = estimate_budget("gpt2-small", r=8, setup=TrainingSetup(batch_size=1, seq_len=128))
    batch = estimate_budget("gpt2-small", r=8, setup=TrainingSetup(batch_size=4, seq_len=128))
    longer = estimate_budget("gpt2-small", r=8, setup=TrainingSetup(batch_size=1, seq_len=512))
    assert batch.memory_full.activations == 4 * small.memory_full.activations       # linear in batch
    assert longer.memory_full.activations > 4 * small.memory_full.activations      # s² attention term
    for m in ("memory_full", "memory_lora"):
        assert getattr(small, m).total < getattr(batch, m).total
        assert getattr(small, m).total < getattr(longer, m).total
        assert getattr(small, m).weights == getattr(batch, m).weights                 # states do not depend on data


def test_model_states_bytes_per_parameter():
    b = estimate_budget("roberta-base", r=8, setup=TrainingSetup(dtype="fp16"))
    P, T = b.total_params, b.trainable_params
    assert b.memory_full.model_states == 16 * P                 # 2 weight + 4 master + 2 grad + 8 Adam
    assert b.memory_lora.model_states == 2 * (P + T) + 4 * T + 2 * T + 8 * T
    fp32 = estimate_budget("roberta-base", r=8, setup=TrainingSetup(dtype="fp32"))
    assert fp32.memory_full.model_states == 16 * P and fp32.memory_full.master_weights == 0
    no_master = estimate_budget("roberta-base", r=8, setup=TrainingSetup(dtype="bf16", master_weights=False))
    assert no_master.memory_full.model_states == 12 * P


def test_lora_saves_states_not_activations():
    r1, r8 = estimate_budgets("gpt3-175b", [1, 8], setup=TrainingSetup(seq_len=2048))
    assert r1.memory_lora.total < r8.memory_lora.total < r8.memory_full.total
    # frozen layers still keep what their input gradients need: activations are not smaller with LoRA
    assert r1.memory_lora.activations >= r1.memory_full.activations
    assert r1.memory_lora.activations - r1.memory_full.activations == 2 * 2048 * (2 * 96 * 1)   # A·x, fp16
    assert 340e9 < r1.memory_lora.weights < 360e9                  # the frozen fp16 model: the paper's 350 GB


def test_lora_dropout_keeps_dropped_inputs():
    plain, dropped = (estimate_budget("gpt2-small", r=8, dropout=p) for p in (0.0, 0.1))
    s, b, d = 512, 1, 768
    assert dropped.memory_lora.activations - plain.memory_lora.activations == 12 * (2 + 1) * s * b * d


def test_unknown_dims_give_no_activations():
    m = full_finetune_memory(1000, None, TrainingSetup())
    assert m.activations is None and m.total == m.model_states == 16 * 1000
    assert lora_memory(1000, 10, 0, [], None, TrainingSetup()).total == 2 * 1010 + 14 * 10


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_size=0), "batch_size must be a positive integer"),
    (dict(seq_len=1.5), "seq_len must be a positive integer"),
    (dict(dtype="fp8"), "unknown dtype 'fp8'"),
    (dict(attention="paged"), "unknown attention mode"),
])
def test_setup_validation(kwargs, message):
    with pytest.raises(LoraLabError, match=message):
        TrainingSetup(**kwargs)


def test_llama_shape_uses_gated_mlp_gqa_and_no_dropout():
    b = estimate_budget("smollm2-135m", r=8)
    dims = b.skeleton.dims
    assert (dims.gated_mlp, dims.dropout, dims.kv_heads, dims.head_dim, dims.lm_head) == (True, False, 3, 64, True)
    gpt2 = estimate_budget("gpt2-small", r=8).skeleton.dims
    assert (gpt2.gated_mlp, gpt2.dropout, gpt2.intermediate) == (False, True, 3072) and gpt2.assumed == ()


def test_mlp_width_and_gating_come_from_the_architecture_table():
    phi3 = build_skeleton(transformers.Phi3Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                                  intermediate_size=96, vocab_size=100, pad_token_id=0,
                                                  eos_token_id=0, bos_token_id=0)).dims
    assert (phi3.gated_mlp, phi3.intermediate) == (True, 96)         # fused gate_up_proj: was read as ungated
    distilbert = build_skeleton(transformers.DistilBertConfig(dim=32, hidden_dim=80, n_layers=2, n_heads=4)).dims
    assert (distilbert.gated_mlp, distilbert.intermediate, distilbert.assumed) == (False, 80, ())
    neox = build_skeleton(transformers.GPTNeoXConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                     intermediate_size=64, vocab_size=100)).dims
    assert (neox.gated_mlp, neox.intermediate) == (False, 64)
    assert neox.assumed == ("model_type 'gpt_neox' is not in loralab.models.architectures: assumed an ungated MLP",)
