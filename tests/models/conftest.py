"""A tiny LLaMA written as a GGUF file, with the random-init transformers model it must load back as.

The file carries what transformers' GGUF loader reads (transformers/modeling_gguf_pytorch_utils.py and
integrations/gguf/): `general.architecture`, the `llama.*` shape keys, a byte-level BPE tokenizer
(`tokenizer.ggml.model = "gpt2"`: tokens, token types, merges, special ids) and a chat template. Linear
weights are stored Q8_0, the embedding F16 and the norms F32, so loading exercises de-quantization; the
reference model is given exactly the values the file de-quantizes to, so logits must match to float
rounding. Q and K rows are permuted the way llama.cpp's converter does, which transformers undoes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM, FFN, CONTEXT = 64, 2, 4, 2, 16, 128, 128
MERGES = ["Ġ t", "h e", "Ġt he", "Ġ a", "i n", "e r", "o n", "r e", "Ġ c", "a t"]
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_LAYER_TENSORS = [("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"), ("self_attn.v_proj", "attn_v"),
                  ("self_attn.o_proj", "attn_output"), ("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"),
                  ("mlp.down_proj", "ffn_down")]


def _llama_cpp_permute(rows: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's Q/K row order (interleaved rotary halves), the inverse of what transformers applies."""
    return rows.reshape(heads, 2, rows.shape[0] // heads // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def _llama_cpp_unpermute(rows: np.ndarray, heads: int) -> np.ndarray:
    return rows.reshape(heads, rows.shape[0] // heads // 2, 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def tiny_vocabulary() -> list[str]:
    """Special tokens, the 256 byte symbols of byte-level BPE, then one token per merge."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    spelling = bytes_to_unicode()
    return SPECIAL_TOKENS + [spelling[b] for b in range(256)] + ["".join(m.split(" ")) for m in MERGES]


def write_tiny_llama_gguf(path: Path, tied: bool = True, seed: int = 0, architecture: str = "llama"):
    """Write a 2-layer LLaMA GGUF to `path`; returns the transformers model holding the same weights (eval mode)."""
    import gguf
    import transformers
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import dequantize, quantize

    tokens = tiny_vocabulary()
    config = transformers.LlamaConfig(
        vocab_size=len(tokens), hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM, max_position_embeddings=CONTEXT,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2,
        pad_token_id=2)
    torch.manual_seed(seed)
    reference = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # norms at exactly 1.0 would not show a mixed-up norm tensor
        for name, param in reference.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5)

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name("tiny llama")
    writer.add_block_count(LAYERS)
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3] * len(SPECIAL_TOKENS) + [1] * (len(tokens) - len(SPECIAL_TOKENS)))  # 3: control
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    layout = {"model.embed_tokens.weight": ("token_embd.weight", Q.F16),
              "model.norm.weight": ("output_norm.weight", Q.F32)}
    if not tied:
        layout["lm_head.weight"] = ("output.weight", Q.Q8_0)
    for i in range(LAYERS):
        for hf_name, gguf_name in _LAYER_TENSORS:
            layout[f"model.layers.{i}.{hf_name}.weight"] = (f"blk.{i}.{gguf_name}.weight", Q.Q8_0)
        layout[f"model.layers.{i}.input_layernorm.weight"] = (f"blk.{i}.attn_norm.weight", Q.F32)
        layout[f"model.layers.{i}.post_attention_layernorm.weight"] = (f"blk.{i}.ffn_norm.weight", Q.F32)

    params = dict(reference.named_parameters())
    with torch.no_grad():
        for hf_name, (gguf_name, qtype) in layout.items():
            heads = HEADS if ".attn_q." in gguf_name else KV_HEADS if ".attn_k." in gguf_name else None
            values = params[hf_name].numpy().astype(np.float32)
            if heads:
                values = _llama_cpp_permute(values, heads)
            if qtype == Q.Q8_0:
                stored = quantize(values, qtype)
                restored = dequantize(stored, qtype)
            elif qtype == Q.F16:
                stored = values.astype(np.float16)
                restored = stored.astype(np.float32)
            else:
                stored = restored = values
            if heads:
                restored = _llama_cpp_unpermute(restored, heads)
            # The reference holds what the file can hold, so the comparison tests loading, not quantization error.
            params[hf_name].copy_(torch.from_numpy(np.ascontiguousarray(restored)))
            writer.add_tensor(gguf_name, stored, raw_dtype=None if qtype == Q.F32 else qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return reference


@pytest.fixture
def tiny_gguf(tmp_path):
    """(path of a tied tiny LLaMA GGUF in its own folder, its reference model)."""
    folder = tmp_path / "gguf-src"
    folder.mkdir()
    path = folder / "tiny-llama.Q8_0.gguf"
    return path, write_tiny_llama_gguf(path)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private cache root; $LORALAB_CACHE points at it so nothing touches ~/.cache."""
    root = tmp_path / "cache"
    monkeypatch.setenv("LORALAB_CACHE", str(root))
    return root


@pytest.fixture
def conversions(monkeypatch):
    """Counts de-quantizations: a list that gets one GGUF path per real conversion."""
    import loralab.models.gguf as gguf_module

    calls: list[Path] = []
    original = gguf_module._convert_gguf

    def counting(gguf_path, out_dir):
        calls.append(gguf_path)
        return original(gguf_path, out_dir)

    monkeypatch.setattr(gguf_module, "_convert_gguf", counting)
    return calls


@pytest.fixture
def make_gguf():
    """write_tiny_llama_gguf, for tests that need several files (untied, other seeds, other architectures)."""
    return write_tiny_llama_gguf


@pytest.fixture
def token_ids():
    """A (2, 8) batch of ids covering specials, byte tokens and merged tokens of the tiny vocabulary."""
    return torch.tensor([[5, 70, 100, 262, 3, 9, 120, 268], [1, 200, 201, 202, 259, 260, 261, 2]])
