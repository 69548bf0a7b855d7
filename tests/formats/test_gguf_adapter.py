"""GGUF LoRA adapters: llama.cpp's metadata, tensor names, shapes and values, read back with gguf.GGUFReader."""
import numpy as np
import pytest
import torch

import gguf

import loralab
from loralab.errors import LoraLabError
from loralab.formats.gguf_adapter import gguf_lora_tensors, permute_rows, write_gguf_adapter
from loralab.testing import fill_adapter, tiny_model

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GGUF_NAMES = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
              "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}


def _adapter(tmp_path, family="llama", **config):
    model = tiny_model(family)
    loralab.inject(model, loralab.LoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": ALL, **config}))
    fill_adapter(model, "default", seed=3)
    loralab.save_adapter(model, tmp_path / "adapter")
    return model, loralab.read_adapter(tmp_path / "adapter")


def _fields(reader):
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def _reference_permute(w, heads):
    """llama.cpp's permute written as an index map: in each head, row i of the first half goes to 2i and
    row i of the second half to 2i + 1 (rotary pairs (i, i + h/2) become neighbours)."""
    out = torch.empty_like(w)
    head_dim = w.shape[0] // heads
    for h in range(heads):
        for half in (0, 1):
            for i in range(head_dim // 2):
                out[h * head_dim + 2 * i + half] = w[h * head_dim + half * head_dim // 2 + i]
    return out


def test_permute_rows_is_llama_cpps_interleaving():
    w = torch.arange(24 * 3, dtype=torch.float32).reshape(24, 3)
    for heads in (1, 2, 3, 6):
        assert torch.equal(permute_rows(w, heads), _reference_permute(w, heads))


def test_permuting_b_permutes_delta_w():
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(4, 32, generator=g), torch.randn(16, 4, generator=g)
    assert torch.allclose(permute_rows(B, 2) @ A, permute_rows(B @ A, 2), atol=1e-6)


def test_odd_head_size_is_one_line():
    with pytest.raises(LoraLabError, match="cannot reorder 6 rows into 2 heads of even size"):
        permute_rows(torch.zeros(6, 2), 2)


def test_metadata_names_shapes_and_values(tmp_path):
    model, adapter = _adapter(tmp_path)
    assert write_gguf_adapter(adapter, model.config, tmp_path / "a.gguf") == 14
    reader = gguf.GGUFReader(tmp_path / "a.gguf")
    assert _fields(reader) == {"general.architecture": "llama", "general.type": "adapter", "adapter.type": "lora",
                               "adapter.lora.alpha": 8.0, "general.name": "adapter"}
    tensors = {t.name: t for t in reader.tensors}
    expected = {f"blk.{i}.{GGUF_NAMES[m]}.weight.lora_{ab}" for i in (0, 1) for m in ALL for ab in "ab"}
    assert set(tensors) == expected
    heads, kv_heads = model.config.num_attention_heads, model.config.num_key_value_heads
    for module, (A, B, scale) in adapter.factors.items():
        layer, leaf = module.split(".")[2], module.rsplit(".", 1)[1]
        name = f"blk.{layer}.{GGUF_NAMES[leaf]}.weight"
        a, b = tensors[name + ".lora_a"], tensors[name + ".lora_b"]
        assert a.tensor_type == gguf.GGMLQuantizationType.F32
        assert list(a.shape) == [A.shape[1], 4] and list(b.shape) == [4, B.shape[0]]    # GGUF: ne[0] first
        want_b = {"q_proj": _reference_permute(B, heads), "k_proj": _reference_permute(B, kv_heads)}.get(leaf, B)
        assert np.array_equal(np.asarray(a.data), A.numpy())
        assert np.array_equal(np.asarray(b.data), want_b.numpy())
        assert scale == 8 / 4                       # llama.cpp's alpha / r: nothing folded


def test_delta_w_of_the_file_is_the_permuted_delta_w(tmp_path):
    model, adapter = _adapter(tmp_path)
    _, alpha, tensors = gguf_lora_tensors(adapter, model.config)
    by_module = {t.module: t for t in tensors}
    A, B, scale = adapter.factors["model.layers.1.self_attn.k_proj"]
    t = by_module["model.layers.1.self_attn.k_proj"]
    llama_delta = (alpha / t.A.shape[0]) * t.B @ t.A
    assert torch.allclose(llama_delta, permute_rows(scale * B @ A, model.config.num_key_value_heads), atol=1e-6)


def test_rslora_scale_is_folded_into_b(tmp_path):
    model, adapter = _adapter(tmp_path, use_rslora=True, target_modules=["v_proj"])
    _, alpha, tensors = gguf_lora_tensors(adapter, model.config)
    for t in tensors:
        A, B, scale = adapter.factors[t.module]
        assert scale == 8 / 2                                  # alpha / sqrt(r)
        assert torch.allclose((alpha / 4) * t.B @ t.A, scale * B @ A, atol=1e-6)


def test_fp16(tmp_path):
    model, adapter = _adapter(tmp_path, target_modules=["v_proj"])
    write_gguf_adapter(adapter, model.config, tmp_path / "a.gguf", dtype="fp16")
    tensors = gguf.GGUFReader(tmp_path / "a.gguf").tensors
    assert {t.tensor_type for t in tensors} == {gguf.GGMLQuantizationType.F16}
    A = adapter.factors["model.layers.0.self_attn.v_proj"][0]
    a = next(t for t in tensors if t.name == "blk.0.attn_v.weight.lora_a")
    assert np.array_equal(np.asarray(a.data), A.numpy().astype(np.float16))


def test_qwen2_is_not_permuted(tmp_path):
    model, adapter = _adapter(tmp_path, family="qwen2", target_modules=["q_proj"])
    layout, _, tensors = gguf_lora_tensors(adapter, model.config)
    assert (layout.arch, layout.permute_qk) == ("qwen2", False)
    assert torch.equal(tensors[0].B, adapter.factors[tensors[0].module][1])


def test_other_family_is_one_line(tmp_path):
    model, adapter = _adapter(tmp_path, family="gpt2", target_modules=["c_attn"])
    with pytest.raises(LoraLabError) as info:
        write_gguf_adapter(adapter, model.config, tmp_path / "a.gguf")
    assert str(info.value) == ("GGUF adapter export supports llama, mistral, qwen2 bases (llama.cpp's layout); "
                               "this adapter's base is 'gpt2': merge it instead (loralab merge)")
    assert not (tmp_path / "a.gguf").exists()


def test_dora_is_one_line(tmp_path):
    model, adapter = _adapter(tmp_path, use_dora=True, target_modules=["v_proj"])
    with pytest.raises(LoraLabError, match="GGUF adapters hold plain LoRA factors only; model.layers.0.self_attn.v_proj"):
        write_gguf_adapter(adapter, model.config, tmp_path / "a.gguf")


def test_modules_to_save_is_one_line(tmp_path):
    model, adapter = _adapter(tmp_path, target_modules=["v_proj"], modules_to_save=["lm_head"])
    with pytest.raises(LoraLabError, match="this adapter also saves lm_head"):
        write_gguf_adapter(adapter, model.config, tmp_path / "a.gguf")
