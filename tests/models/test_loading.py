"""resolve_model_spec accepts builtins, folders and GGUF files; load_model/load_tokenizer wrap from_pretrained."""
from __future__ import annotations

import shutil

import pytest
import torch
import transformers

from loralab.errors import LoraLabError
from loralab.models import builtin_model_dir, load_model, load_tokenizer, resolve_model_spec


def test_builtin_folder_resolves_to_itself_without_caching(cache):
    assert resolve_model_spec("all-minilm-l6-v2") == builtin_model_dir("all-minilm-l6-v2")
    assert not cache.exists()


def test_model_folder_resolves_to_itself(tmp_path, cache):
    folder = tmp_path / "plain"
    transformers.LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(folder)
    (folder / "stray.gguf").write_bytes(b"GGUF")  # config.json wins over GGUF files beside it
    assert resolve_model_spec(str(folder)) == folder
    assert resolve_model_spec(folder) == folder  # a Path works too


def test_gguf_file_and_folder_with_one_gguf_resolve_to_the_same_cached_folder(tiny_gguf, cache, conversions):
    gguf_path, _ = tiny_gguf
    from_file = resolve_model_spec(str(gguf_path))
    from_folder = resolve_model_spec(str(gguf_path.parent))
    assert from_file == from_folder and from_file.parent == cache / "gguf"
    assert (from_file / "config.json").is_file()
    assert len(conversions) == 1


def test_home_relative_paths_are_expanded(tiny_gguf, cache, monkeypatch):
    gguf_path, _ = tiny_gguf
    monkeypatch.setenv("HOME", str(gguf_path.parent.parent))
    assert resolve_model_spec(f"~/{gguf_path.parent.name}/{gguf_path.name}").parent == cache / "gguf"


def test_spec_errors(tmp_path, tiny_gguf, cache):
    with pytest.raises(LoraLabError, match="not found: no such file or folder.*smollm2-135m-instruct"):
        resolve_model_spec(str(tmp_path / "nowhere"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LoraLabError, match="holds neither config.json nor a .gguf file"):
        resolve_model_spec(str(empty))
    weights = tmp_path / "model.bin"
    weights.write_bytes(b"\0" * 16)
    with pytest.raises(LoraLabError, match="is not a .gguf file"):
        resolve_model_spec(str(weights))

    gguf_path, _ = tiny_gguf
    shutil.copyfile(gguf_path, gguf_path.parent / "another.Q4_0.gguf")
    with pytest.raises(LoraLabError) as error:
        resolve_model_spec(str(gguf_path.parent))
    message = str(error.value)
    assert "holds 2 .gguf files (another.Q4_0.gguf, tiny-llama.Q8_0.gguf)" in message
    assert "pass one of them" in message and "\n" not in message


@pytest.mark.parametrize("task, class_name", [("causal-lm", "LlamaForCausalLM"), ("base", "LlamaModel")])
def test_load_model_heads(tiny_gguf, cache, token_ids, task, class_name):
    gguf_path, reference = tiny_gguf
    model = load_model(str(gguf_path), task=task).eval()
    assert type(model).__name__ == class_name
    assert model.dtype == torch.float32
    with torch.no_grad():
        if task == "causal-lm":
            torch.testing.assert_close(model(token_ids).logits, reference(token_ids).logits, rtol=0, atol=1e-6)
        else:
            expected = reference.model(token_ids).last_hidden_state
            torch.testing.assert_close(model(token_ids).last_hidden_state, expected, rtol=0, atol=1e-6)


def test_load_model_sequence_classification(tiny_gguf, cache, token_ids):
    gguf_path, reference = tiny_gguf
    model = load_model(str(gguf_path), task="sequence-classification", num_labels=3).eval()
    assert type(model).__name__ == "LlamaForSequenceClassification"
    assert model.score.weight.shape == (3, 64)
    assert model.config.pad_token_id == 2  # the GGUF's padding id: batches of several sequences work
    torch.testing.assert_close(model.model.embed_tokens.weight, reference.model.embed_tokens.weight, rtol=0, atol=0)
    with torch.no_grad():
        assert model(token_ids).logits.shape == (2, 3)


def test_load_model_passes_keywords_and_forces_local_files(tiny_gguf, cache, monkeypatch):
    seen = {}
    original = transformers.AutoModelForCausalLM.from_pretrained

    def spy(folder, **kwargs):
        seen.update(kwargs)
        return original(folder, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    load_model(str(tiny_gguf[0]), attn_implementation="eager", local_files_only=False)
    assert seen["local_files_only"] is True
    assert seen["dtype"] == torch.float32
    assert seen["attn_implementation"] == "eager"


def test_load_model_argument_errors(tiny_gguf, cache):
    with pytest.raises(LoraLabError, match="unknown model task 'seq2seq'"):
        load_model(str(tiny_gguf[0]), task="seq2seq")
    with pytest.raises(LoraLabError, match="num_labels=2 only applies to task 'sequence-classification'"):
        load_model(str(tiny_gguf[0]), task="causal-lm", num_labels=2)
    with pytest.raises(LoraLabError, match="num_labels must be at least 1"):
        load_model(str(tiny_gguf[0]), task="sequence-classification", num_labels=0)


def test_load_model_with_an_architecture_that_lacks_the_head(tmp_path, cache):
    folder = tmp_path / "encoder-only"
    transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                                  num_attention_heads=2, image_size=8, patch_size=4).save_pretrained(folder)
    with pytest.raises(LoraLabError, match="cannot load .* for task 'causal-lm'"):
        load_model(str(folder), task="causal-lm")


def test_load_tokenizer(tiny_gguf, cache):
    tokenizer = load_tokenizer(str(tiny_gguf[0]))
    # BPE applies merges by rank: " at" becomes "Ġa" + "t" because "Ġ a" (rank 3) beats "a t" (rank 9)
    assert tokenizer(" the at").input_ids == [261, 262, 119]
    assert tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False) == \
        "<|im_start|>user\nx<|im_end|>\n"
