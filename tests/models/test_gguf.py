"""GGUF -> cached plain fp32 folder: numbers, tied weights, tokenizer, cache reuse and keys, atomicity, errors."""
from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest
import torch
import transformers

from loralab.errors import LoraLabError
from loralab.models import (cache_root, cached_folder_for, clear_gguf_cache, ensure_plain_model, gguf_cache_dir,
                            gguf_fingerprint, is_gguf_file, list_cached_models)
from loralab.models import gguf as gguf_module


def _logits(folder: Path, token_ids: torch.Tensor) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True).eval()
    with torch.no_grad():
        return model(token_ids).logits


def _safetensors_header(path: Path) -> dict:
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        return json.loads(handle.read(length))


@pytest.mark.parametrize("tied", [True, False])
def test_converted_folder_reproduces_the_gguf_model(tmp_path, cache, make_gguf, token_ids, tied):
    gguf_path = tmp_path / "m.gguf"
    reference = make_gguf(gguf_path, tied=tied)
    folder = ensure_plain_model(gguf_path)

    assert folder.parent == cache / "gguf"
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True).eval()
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(model(token_ids).logits, reference(token_ids).logits, rtol=0, atol=1e-6)
    # every weight, not only the logits: Q/K un-permuted, norms in place
    reference_state = reference.state_dict()
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, reference_state[name], rtol=0, atol=0, msg=name)

    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["tie_word_embeddings"] is tied
    assert model.config.tie_word_embeddings is tied
    header = _safetensors_header(folder / "model.safetensors")
    assert {entry["dtype"] for key, entry in header.items() if key != "__metadata__"} == {"F32"}
    if tied:
        # one storage for both; the file holds it once and reloading re-ties it
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
        assert "lm_head.weight" not in header
    else:
        assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
        assert not torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)


def test_converted_model_is_an_ordinary_model(tiny_gguf, cache, tmp_path):
    folder = ensure_plain_model(tiny_gguf[0])
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True)
    assert getattr(model, "hf_quantizer", None) is None
    assert not getattr(model, "is_quantized", False)
    model.float()  # raises on a model transformers still thinks is quantized
    model.save_pretrained(tmp_path / "resaved")
    assert (tmp_path / "resaved" / "model.safetensors").is_file()


def test_tokenizer_and_chat_template_survive(tiny_gguf, cache):
    gguf_path, _ = tiny_gguf
    folder = ensure_plain_model(gguf_path)
    from_gguf = transformers.AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    from_folder = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)

    text = "the cat in there at the <|im_end|> café"
    assert from_folder(text).input_ids == from_gguf(text).input_ids
    assert from_folder(" the")["input_ids"] == [261]  # "Ġt he" merged through "Ġ t" + "h e"
    assert from_folder.decode(from_folder(text).input_ids) == text
    messages = [{"role": "user", "content": "hi there"}]
    rendered = from_folder.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n"
    assert rendered == from_gguf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert (from_folder.eos_token, from_folder.pad_token) == ("<|im_end|>", "<|im_end|>")
    assert from_folder.model_max_length == 128  # the model's context, not transformers' "no limit" sentinel
    assert "local_files_only" not in json.loads((folder / "tokenizer_config.json").read_text())


def test_second_call_reuses_the_folder_without_dequantizing(tiny_gguf, cache, conversions, token_ids):
    gguf_path, _ = tiny_gguf
    first = ensure_plain_model(gguf_path)
    logits_first = _logits(first, token_ids)
    weights_mtime = (first / "model.safetensors").stat().st_mtime_ns
    assert conversions == [gguf_path]

    second = ensure_plain_model(gguf_path)
    assert second == first
    assert conversions == [gguf_path]  # no second de-quantization
    assert (second / "model.safetensors").stat().st_mtime_ns == weights_mtime
    torch.testing.assert_close(_logits(second, token_ids), logits_first, rtol=0, atol=1e-6)
    record = json.loads((first / "loralab-gguf-source.json").read_text())
    assert record["source"] == str(gguf_path.resolve())
    assert record["fingerprint"] == gguf_fingerprint(gguf_path)
    assert record["size_bytes"] == gguf_path.stat().st_size


def test_cache_key_follows_content_not_location_or_mtime(tmp_path, cache, conversions, make_gguf):
    original = tmp_path / "a" / "tiny.gguf"
    original.parent.mkdir()
    make_gguf(original, seed=0)
    folder = ensure_plain_model(original)

    moved = tmp_path / "b" / "tiny.gguf"
    moved.parent.mkdir()
    shutil.copyfile(original, moved)
    os.utime(moved, (1_000_000, 1_000_000))
    assert ensure_plain_model(moved) == folder
    assert len(conversions) == 1

    changed = tmp_path / "c" / "tiny.gguf"
    changed.parent.mkdir()
    make_gguf(changed, seed=1)  # same size, same metadata, different weights
    assert changed.stat().st_size == original.stat().st_size
    other = ensure_plain_model(changed)
    assert other != folder and len(conversions) == 2
    assert cached_folder_for(changed) == other
    assert list_cached_models() == sorted([folder, other])


def test_fingerprint_of_large_files_samples_head_middle_and_tail(tmp_path):
    path = tmp_path / "big.bin"
    size = 9 << 20
    path.write_bytes(bytes(size))
    base = gguf_fingerprint(path)

    def flipped_at(offset: int) -> str:
        data = bytearray(size)
        data[offset] = 1
        path.write_bytes(bytes(data))
        return gguf_fingerprint(path)

    assert flipped_at(10) != base  # head
    assert flipped_at(size - 10) != base  # tail
    assert flipped_at(size * 5 // 17 + 100) != base  # one of the middle samples
    path.write_bytes(bytes(size + 1))
    assert gguf_fingerprint(path) != base  # size


def test_failed_conversion_leaves_nothing_behind(tiny_gguf, cache, monkeypatch):
    gguf_path, _ = tiny_gguf

    def broken(gguf_path: Path, out_dir: Path) -> None:
        (out_dir / "config.json").write_text("{}")
        (out_dir / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("disk full")

    original = gguf_module._convert_gguf
    monkeypatch.setattr(gguf_module, "_convert_gguf", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        ensure_plain_model(gguf_path)
    assert list((cache / "gguf").iterdir()) == []  # no target folder, no .tmp-* scratch

    monkeypatch.setattr(gguf_module, "_convert_gguf", original)
    assert (ensure_plain_model(gguf_path) / "model.safetensors").stat().st_size > 1000


def test_a_folder_emptied_by_hand_is_rebuilt(tiny_gguf, cache, conversions):
    folder = ensure_plain_model(tiny_gguf[0])
    (folder / "loralab-gguf-source.json").unlink()
    assert ensure_plain_model(tiny_gguf[0]) == folder
    assert len(conversions) == 2 and (folder / "loralab-gguf-source.json").is_file()


def test_clear_cache_removes_converted_folders_and_scratch(tiny_gguf, cache, conversions):
    folder = ensure_plain_model(tiny_gguf[0])
    scratch = cache / "gguf" / ".tmp-interrupted-123"
    scratch.mkdir()
    unrelated = cache / "gguf" / "notes"
    unrelated.mkdir()
    assert sorted(clear_gguf_cache()) == sorted([folder, scratch])
    assert not folder.exists() and unrelated.exists()
    assert list_cached_models() == []
    ensure_plain_model(tiny_gguf[0])
    assert len(conversions) == 2


def test_cache_root_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("LORALAB_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "loralab"
    monkeypatch.setenv("LORALAB_CACHE", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert gguf_cache_dir() == tmp_path / "env" / "gguf"
    assert cache_root(tmp_path / "arg") == tmp_path / "arg"


def test_explicit_cache_dir_wins_over_environment(tiny_gguf, cache, tmp_path):
    folder = ensure_plain_model(tiny_gguf[0], cache_dir=tmp_path / "elsewhere")
    assert folder.parent == tmp_path / "elsewhere" / "gguf"
    assert not (cache / "gguf").exists()


def test_errors_for_missing_and_non_gguf_files(tmp_path, cache):
    with pytest.raises(LoraLabError, match="does not exist"):
        ensure_plain_model(tmp_path / "absent.gguf")
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    assert not is_gguf_file(fake)
    with pytest.raises(LoraLabError, match="not a GGUF file"):
        ensure_plain_model(fake)


def test_unsupported_architecture_is_a_user_error(tmp_path, cache, make_gguf):
    path = tmp_path / "odd.gguf"
    make_gguf(path, architecture="notanarch")
    assert is_gguf_file(path)
    with pytest.raises(LoraLabError, match="cannot load .*notanarch"):
        ensure_plain_model(path)
    assert list((cache / "gguf").iterdir()) == []


def test_losing_a_conversion_race_returns_the_winners_folder(tiny_gguf, cache, monkeypatch, token_ids):
    gguf_path, reference = tiny_gguf
    original = gguf_module._convert_gguf
    calls = []

    def racing(path: Path, out_dir: Path) -> None:
        calls.append(out_dir)
        if len(calls) == 1:
            # another process finishes the same file while this one is still converting
            winner = ensure_plain_model(path)
            assert winner.is_dir()
        original(path, out_dir)

    monkeypatch.setattr(gguf_module, "_convert_gguf", racing)
    folder = ensure_plain_model(gguf_path)
    assert len(calls) == 2
    assert [p.name for p in (cache / "gguf").iterdir()] == [folder.name]  # the loser's scratch is gone
    torch.testing.assert_close(_logits(folder, token_ids), reference(token_ids).logits, rtol=0, atol=1e-6)
