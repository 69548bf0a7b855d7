"""Budgets with a quantized frozen base and gradient checkpointing. The anchor: QLoRA (Dettmers et al. 2023)
fine-tunes LLaMA-65B on one 48 GB GPU with an NF4 base (double quantization), LoRA r=64 on every linear
layer and gradient checkpointing; the same arithmetic must fit here, and the 16-bit base must not."""
import pytest

from loralab.budget import estimate_budget
from loralab.budget.memory_estimate import TrainingSetup, layer_activation_terms
from loralab.errors import LoraLabError

GiB = 2 ** 30


def _qlora_65b(**setup):
    options = dict(batch_size=1, seq_len=512, dtype="bf16", gradient_checkpointing=True, quantize="nf4",
                   double_quant=True)
    return estimate_budget("llama-65b", r=64, targets=["all-linear"], setup=TrainingSetup(**{**options, **setup}))


def test_qlora_65b_fits_48_gb_and_the_bf16_base_does_not():
    qlora = _qlora_65b()
    linear = 80 * (4 * 8192 * 8192 + 3 * 8192 * 22016)                # the quantized weights: every block's Linear
    embeddings = 2 * 32000 * 8192                                         # input embedding and lm_head stay bf16
    assert qlora.trainable_params == 80 * 64 * (4 * 2 * 8192 + 3 * (8192 + 22016)) == 799_539_200
    # NF4: 4 bits + fp32 absmax per 64 values, double-quantized to 8 bits per 64 + fp32 per 256·64 values
    nf4_bits = 4 + 8 / 64 + 32 / (64 * 256)
    frozen = qlora.memory_lora.weights - 4 * qlora.trainable_params
    assert frozen == pytest.approx(linear * nf4_bits / 8 + 2 * (qlora.total_params - linear), rel=1e-4)
    assert 33e9 < linear * nf4_bits / 8 < 34e9                            # QLoRA's ~33 GB 4-bit base
    assert qlora.memory_lora.total < 48 * GiB                             # 44.9 GiB: fits a 48 GB (48 GiB) GPU
    assert _qlora_65b(quantize="none", double_quant=False).memory_lora.total > 2 * 48 * GiB     # ~131 GB of weights
    without_dq = _qlora_65b(double_quant=False).memory_lora.weights
    assert without_dq - qlora.memory_lora.weights == pytest.approx(linear * (32 / 64 - nf4_bits + 4) / 8, rel=1e-3)


def test_int8_counts_one_byte_and_a_row_scale_per_weight():
    plain = estimate_budget("all-minilm-l6-v2", r=8, setup=TrainingSetup(dtype="fp32"))
    int8 = estimate_budget("all-minilm-l6-v2", r=8, setup=TrainingSetup(dtype="fp32", quantize="int8"))
    shapes = 6 * [(384, 384)] * 4 + 6 * [(1536, 384), (384, 1536)] + [(384, 384)]   # 6 layers + the pooler
    values = sum(d * k for d, k in shapes)
    assert plain.memory_lora.weights - int8.memory_lora.weights == 4 * values - sum(d * k + 4 * d for d, k in shapes)


def test_checkpointing_keeps_one_input_per_layer_and_one_layer_in_full():
    plain = estimate_budget("llama-7b", r=8, setup=TrainingSetup(seq_len=256))
    ckpt = estimate_budget("llama-7b", r=8, setup=TrainingSetup(seq_len=256, gradient_checkpointing=True))
    dims = plain.skeleton.dims
    one_layer = sum(layer_activation_terms(dims, TrainingSetup(seq_len=256)).values())
    ends = plain.memory_full.activations - dims.layers * one_layer
    assert ckpt.memory_full.activations == dims.layers * 2 * 256 * dims.hidden + one_layer + ends
    assert ckpt.memory_full.activations < plain.memory_full.activations / 5


def test_double_quant_needs_nf4():
    with pytest.raises(LoraLabError, match="double quantization applies to nf4 only"):
        TrainingSetup(quantize="int8", double_quant=True)
    with pytest.raises(LoraLabError, match="unknown quantization 'int4'"):
        TrainingSetup(quantize="int4")
