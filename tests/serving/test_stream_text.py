"""Streamed text over HTTP with a byte-level BPE tokenizer (characters split over byte tokens, streamed through
tokenizers' DecodeStream): the streamed pieces of every choice concatenate to the non-streamed text of the
same seeded request, multi-byte characters included."""
from __future__ import annotations

import json

import pytest
import torch

from tests.serving.over_http import client

from loralab.generation.text import IncrementalText

TEXTS = ["The café serves crème brûlée 🍮 near the river.", "Über ein Café am Fluß 🌊🌊 — und mehr. 東京の川"]


@pytest.fixture(scope="module")
def bpe_lm(tmp_path_factory):
    """A tiny LLaMA with a byte-level BPE tokenizer trained on TEXTS (vocab 300: emoji stay split in bytes)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<pad>", "<s>", "</s>"])
    backend.train_from_iterator(TEXTS * 3, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    assert IncrementalText(tokenizer).streaming
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=48, max_position_embeddings=128, bos_token_id=1,
                         eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("bpe") / "base"
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_streamed_pieces_concatenate_to_the_non_streamed_text_across_split_characters(start_server, bpe_lm):
    server = start_server(model=str(bpe_lm), served_name="base")
    texts = []
    with client(server) as c:
        for seed in range(3):
            body = {"model": "base", "prompt": ["The café", "東京"], "max_tokens": 24, "temperature": 1.0,
                    "seed": seed, "n": 2}
            whole = c.post("/v1/completions", json=body)
            assert whole.status_code == 200, whole.text
            expected = {ch["index"]: ch["text"] for ch in whole.json()["choices"]}
            with c.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
                events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
            streamed = {i: "" for i in expected}
            for event in events:
                for choice in event["choices"]:
                    streamed[choice["index"]] += choice["text"]
            assert streamed == expected
            texts += expected.values()
    # the outputs hold characters of several UTF-8 bytes, whole (not U+FFFD halves)
    assert any(any(ord(ch) > 0x7F and ch != "\ufffd" for ch in text) for text in texts), texts
