"""An adapter merged into a GGUF base: read back with gguf.GGUFReader (metadata and untouched tensors byte for
byte, merged tensors = dequantize(W0) + ΔW in llama.cpp's layout) and loaded back by transformers (logits)."""
import numpy as np
import pytest
import torch

import gguf
from gguf.quants import dequantize
from tests.models.conftest import HEADS, KV_HEADS, _llama_cpp_permute, write_tiny_llama_gguf

import loralab
from loralab.errors import LoraLabError
from loralab.formats.gguf_merge import merge_into_gguf
from loralab.models import load_model
from loralab.testing import fill_adapter, tiny_model

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GGUF_NAMES = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
              "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
TOKENS = torch.tensor([[5, 70, 100, 262, 3, 9, 120, 268], [1, 200, 201, 202, 259, 260, 261, 2]])


@pytest.fixture
def base(tmp_path, monkeypatch):
    """(tiny LLaMA GGUF with Q8_0 matrices, the transformers model holding its dequantized weights)."""
    monkeypatch.setenv("LORALAB_CACHE", str(tmp_path / "cache"))
    (tmp_path / "src").mkdir()
    path = tmp_path / "src" / "tiny.Q8_0.gguf"
    return path, write_tiny_llama_gguf(path, tied=False)


def _adapter(model, tmp_path, **config):
    loralab.inject(model, loralab.LoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": ALL, **config}))
    fill_adapter(model, "default", seed=5, std=0.1)
    loralab.save_adapter(model, tmp_path / "adapter")
    return loralab.read_adapter(tmp_path / "adapter")


def _fields(reader):
    return {k: (f.types, f.contents()) for k, f in reader.fields.items()}


def _gguf_name(module: str) -> str:
    return f"blk.{module.split('.')[2]}.{GGUF_NAMES[module.rsplit('.', 1)[1]]}.weight"


def test_metadata_and_untouched_tensors_are_copied_merged_ones_are_w0_plus_delta(base, tmp_path):
    path, model = base
    adapter = _adapter(model, tmp_path)
    report = merge_into_gguf(path, adapter, tmp_path / "merged.gguf")
    source, merged = gguf.GGUFReader(path), gguf.GGUFReader(tmp_path / "merged.gguf")
    assert _fields(merged) == _fields(source)                                  # tokenizer, hparams, file type …
    assert [t.name for t in merged.tensors] == [t.name for t in source.tensors]
    assert (report.merged, report.copied) == (14, len(source.tensors) - 14)
    originals = {t.name: t for t in source.tensors}
    adapted = {_gguf_name(m): (scale * B @ A, m) for m, (A, B, scale) in adapter.factors.items()}
    for t in merged.tensors:
        old = originals[t.name]
        if t.name not in adapted:
            assert t.tensor_type == old.tensor_type and list(t.shape) == list(old.shape)
            assert np.asarray(t.data).tobytes() == np.asarray(old.data).tobytes()
            continue
        assert t.tensor_type == gguf.GGMLQuantizationType.F32 and list(t.shape) == list(old.shape)
        delta, module = adapted[t.name]
        heads = {"q_proj": HEADS, "k_proj": KV_HEADS}.get(module.rsplit(".", 1)[1])
        want = dequantize(old.data, old.tensor_type) + (_llama_cpp_permute(delta.numpy(), heads) if heads else
                                                         delta.numpy())
        assert np.abs(np.asarray(t.data) - want).max() < 1e-6


def test_transformers_reads_the_merged_file_as_the_adapted_model(base, tmp_path):
    """transformers' GGUF loader undoes llama.cpp's q/k permutation: the logits are the adapted model's."""
    path, model = base
    merge_into_gguf(path, _adapter(model, tmp_path), tmp_path / "merged.gguf")
    with torch.no_grad():
        want = model(TOKENS).logits
        got = load_model(tmp_path / "merged.gguf").eval()(TOKENS).logits
    assert (got - want).abs().max() < 1e-4


def test_fp16(base, tmp_path):
    path, model = base
    adapter = _adapter(model, tmp_path, target_modules=["v_proj"])
    merge_into_gguf(path, adapter, tmp_path / "merged.gguf", dtype="fp16")
    tensors = {t.name: t for t in gguf.GGUFReader(tmp_path / "merged.gguf").tensors}
    old = {t.name: t for t in gguf.GGUFReader(path).tensors}["blk.1.attn_v.weight"]
    A, B, scale = adapter.factors["model.layers.1.self_attn.v_proj"]
    t = tensors["blk.1.attn_v.weight"]
    assert t.tensor_type == gguf.GGMLQuantizationType.F16
    want = (dequantize(old.data, old.tensor_type) + (scale * B @ A).numpy()).astype(np.float16)
    assert np.array_equal(np.asarray(t.data), want)
    assert tensors["blk.1.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0


def test_other_architecture_is_one_line(tmp_path):
    path = tmp_path / "gemma.gguf"
    write_tiny_llama_gguf(path, architecture="gemma")
    adapter = _adapter(tiny_model("llama"), tmp_path, target_modules=["v_proj"])
    with pytest.raises(LoraLabError) as info:
        merge_into_gguf(path, adapter, tmp_path / "merged.gguf")
    assert str(info.value) == (
        "merge --to gguf supports GGUF bases of architecture llama, qwen2; this base is 'gemma': merge it to a "
        "folder instead (loralab merge BASE ADAPTER -o DIR) and convert that with llama.cpp's convert_hf_to_gguf.py")
    assert not (tmp_path / "merged.gguf").exists()


def test_adapter_for_another_base_is_one_line(base, tmp_path):
    path, _ = base
    adapter = _adapter(tiny_model("llama", hidden_size=32, intermediate_size=64), tmp_path, target_modules=["v_proj"])
    with pytest.raises(LoraLabError, match=r"the adapter's model.layers.0.self_attn.v_proj is \d+×32 but .* is "
                                           r"32×64; merge the adapter into the base it was trained on"):
        merge_into_gguf(path, adapter, tmp_path / "merged.gguf")
    assert not (tmp_path / "merged.gguf").exists()


def test_dora_is_one_line(base, tmp_path):
    path, model = base
    adapter = _adapter(model, tmp_path, use_dora=True, target_modules=["v_proj"])
    expected = (r"^merge --to gguf merges plain LoRA factors only; model.layers.0.self_attn.v_proj also has "
                r"lora_magnitude_vector \(a LoRA variant such as DoRA\): merge it to a folder instead \(loralab merge "
                r"BASE ADAPTER -o DIR\)")
    with pytest.raises(LoraLabError, match=expected):
        merge_into_gguf(path, adapter, tmp_path / "merged.gguf")


def test_an_adapter_trained_on_other_gguf_weights_is_noted(base, tmp_path):
    path, _ = base
    other = tmp_path / "other" / "tiny.Q8_0.gguf"
    other.parent.mkdir()
    write_tiny_llama_gguf(other, tied=False, seed=1)
    model = load_model(other)          # the adapter records this GGUF as its base
    adapter = _adapter(model, tmp_path, target_modules=["v_proj"])
    assert merge_into_gguf(other, adapter, tmp_path / "same.gguf").note is None
    note = merge_into_gguf(path, adapter, tmp_path / "merged.gguf").note
    assert note.startswith(f"note: the adapter was trained on {other} (GGUF fingerprint ")
    assert note.endswith("the merged model adds its update to other base weights")
