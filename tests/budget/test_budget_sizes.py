"""Adapter file sizes: byte arithmetic per dtype, the safetensors header, and real saved files."""
import os

import pytest
import torch
import transformers
from safetensors.torch import save_file

import loralab
from loralab import LoraConfig, LoraLabError
from loralab.budget import build_skeleton, estimate_budget, lora_budget
from loralab.budget.sizes import dtype_bytes, format_bytes, format_count, safetensors_header_bytes


def test_paper_checkpoint_sizes():
    b = estimate_budget("gpt3-175b", r=4, targets=["q", "v"])
    fp16 = b.file_sizes["fp16"]
    assert fp16.tensor_bytes == 18_874_368 * 2 == 37_748_736          # 37.7 MB = 36.0 MiB ("≈35 MB" in the paper)
    assert format_bytes(fp16.tensor_bytes) == "37.7 MB = 36.0 MiB"
    assert b.file_sizes["bf16"].tensor_bytes == fp16.tensor_bytes
    assert b.file_sizes["fp32"].tensor_bytes == 2 * fp16.tensor_bytes
    assert 0 < fp16.header_bytes < 1e-3 * fp16.total_bytes            # the header is negligible
    assert b.full_model_bytes("fp16") / fp16.tensor_bytes > 9000      # the paper's "≈10,000×"
    # loralab.save_adapter writes PEFT's layout: B spans q|k|v with zero rows for k -> A 2r×d + B 3d×2r
    assert b.saved_values == 96 * (2 * 4 * 12288 + 3 * 12288 * 2 * 4)


def test_gpt2_medium_file_is_about_1_5_mb_in_fp32():
    b = estimate_budget("gpt2-medium", r=4)
    assert b.file_sizes["fp32"].tensor_bytes == 393_216 * 4 == 1_572_864


@pytest.mark.parametrize("family, kwargs", [
    ("bert", dict(r=4)),
    ("bert", dict(r=3, targets=["query", "value", "dense"], bias="all", dora=True)),
    ("gpt2", dict(r=4, bias="lora_only")),
    ("gpt2", dict(r=2, targets=["c_attn", "c_fc"], fused_slices={"c_attn": [False, True, True]})),
])
def test_estimate_equals_the_file_loralab_writes(tmp_path, family, kwargs):
    config = (transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                                      vocab_size=100) if family == "bert" else
              transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=100,
                                      bos_token_id=0, eos_token_id=0))
    budget = lora_budget(build_skeleton(config), LoraConfig(**kwargs))
    model = transformers.AutoModel.from_config(config)
    loralab.inject(model, LoraConfig(**kwargs))
    loralab.save_adapter(model, tmp_path)
    expected = (budget.saved_file_sizes or budget.file_sizes)["fp32"]
    assert os.path.getsize(tmp_path / "adapter_model.safetensors") == expected.total_bytes


def test_header_formula_matches_safetensors(tmp_path):
    tensors = {"b.lora_A.weight": (8, 300), "a.lora_B.weight": (1200, 8), "c.bias": (7,)}
    for dtype, torch_dtype in (("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
        path = tmp_path / f"{dtype}.safetensors"
        save_file({k: torch.zeros(s, dtype=torch_dtype) for k, s in tensors.items()}, str(path), metadata={"format": "pt"})
        data = sum(torch.zeros(s).numel() for s in tensors.values()) * dtype_bytes(dtype)
        header = safetensors_header_bytes(list(tensors.items()), dtype, {"format": "pt"})
        assert os.path.getsize(path) == data + header
        assert header % 8 == 0


def test_formatting_and_units():
    assert format_bytes(999) == "999 B"
    assert format_bytes(1_572_864) == "1.57 MB = 1.50 MiB"
    assert format_bytes(349_208_518_656) == "349 GB = 325 GiB"
    assert format_count(4_718_592) == "4,718,592 (4.72M)"
    assert format_count(174_604_259_328) == "174,604,259,328 (175B)"
    with pytest.raises(LoraLabError, match="unknown dtype 'int8'"):
        dtype_bytes("int8")
