"""The builtin models end to end: SmolLM2's GGUF de-quantized, cached and reloaded; MiniLM with a new head."""
from __future__ import annotations

import time

import pytest
import torch
import transformers

from loralab.models import builtin_model_dir, ensure_plain_model, load_model, load_tokenizer

pytestmark = pytest.mark.slow


def test_smollm2_cached_folder_is_reused_and_equals_the_gguf(cache, conversions, capsys):
    gguf_path = builtin_model_dir("smollm2-135m-instruct")
    started = time.perf_counter()
    folder = ensure_plain_model(gguf_path)
    convert_seconds = time.perf_counter() - started

    started = time.perf_counter()
    assert ensure_plain_model(gguf_path) == folder
    lookup_seconds = time.perf_counter() - started
    started = time.perf_counter()
    model = load_model("smollm2-135m-instruct").eval()
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    reload_seconds = time.perf_counter() - started
    assert len(conversions) == 1      # the second lookup and the load reused the cached folder (times are printed)

    assert sum(p.numel() for p in model.parameters()) == 134_515_008  # 134.5M, lm_head tied (counted once)
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert (folder / "model.safetensors").stat().st_size < 540_000_000  # fp32, embedding stored once

    direct = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32).eval()
    direct_tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    messages = [{"role": "user", "content": "What does low-rank adaptation change in a network?"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == direct_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\n")
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    assert ids.tolist() == direct_tokenizer(prompt, return_tensors="pt").input_ids.tolist()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, direct(ids).logits, rtol=0, atol=1e-6)
    with capsys.disabled():
        print(f"\nSmolLM2 GGUF: de-quantize + save {convert_seconds:.1f} s, cache lookup {lookup_seconds * 1000:.0f} ms, "
              f"load model + tokenizer from the cached folder {reload_seconds:.2f} s")


def test_minilm_loads_with_a_classification_head(cache):
    model = load_model("all-minilm-l6-v2", task="sequence-classification", num_labels=3).eval()
    tokenizer = load_tokenizer("all-minilm-l6-v2")
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.classifier.weight.shape == (3, 384)
    assert sum(p.numel() for p in model.bert.parameters()) == 22_713_216
    batch = tokenizer(["great film", "dull and far too long"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert model(**batch).logits.shape == (2, 3)
    assert not cache.exists()  # a plain folder needs no cache
