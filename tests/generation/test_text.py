"""IncrementalText: the pieces handed out add up to the decoding of all tokens (byte-level BPE with
characters split over tokens, word-level), stop strings are found across token boundaries, and nothing
handed out is ever taken back."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from loralab.generation.text import IncrementalText

_spec = importlib.util.spec_from_file_location("training_fixtures",
                                               Path(__file__).resolve().parents[1] / "training" / "conftest.py")
fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixtures)

TEXTS = ["The café serves crème brûlée 🍮 near the river.", "A pub 🍺 with food: naïve prices, £20-25!",
         "Über ein Café am Fluß 🌊🌊 — und mehr."]


@pytest.fixture(scope="module")
def byte_bpe():
    """A byte-level BPE tokenizer trained on a few sentences: the emoji stay split into byte tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<eos>"])
    backend.train_from_iterator(TEXTS * 3, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>")


def pieces(tokenizer, ids, stop=(), streaming=None):
    text = IncrementalText(tokenizer, tuple(stop))
    if streaming is False:                       # the decode-twice path, as for a slow tokenizer
        text._stream = None
    assert streaming is None or text.streaming == streaming
    out = []
    for token in ids:
        stopped = text.add(token)
        out.append(text.take(final=stopped))
        if stopped:
            break
    else:
        text.finish()
        out.append(text.take(final=True))
    return out, text


@pytest.mark.parametrize("sentence", TEXTS)
def test_pieces_add_up_to_the_whole_decoding_without_broken_characters(byte_bpe, sentence):
    ids = byte_bpe(sentence)["input_ids"]
    # an emoji spans several tokens: decoding stopped inside it ends in U+FFFD, which must never show
    assert any(byte_bpe.decode(ids[:k]).endswith("\ufffd") for k in range(len(ids)))
    out, _ = pieces(byte_bpe, ids)
    assert "".join(out) == byte_bpe.decode(ids) == sentence
    assert not any("\ufffd" in piece for piece in out)


def test_random_token_sequences_decode_the_same_piecewise(byte_bpe):
    g = torch.Generator().manual_seed(0)
    word = fixtures.word_tokenizer(TEXTS)
    for tokenizer in (byte_bpe, word):
        for _ in range(20):
            ids = torch.randint(0, len(tokenizer), (12,), generator=g).tolist()
            out, _ = pieces(tokenizer, ids)
            assert "".join(out) == tokenizer.decode(ids, skip_special_tokens=True)


def test_stop_strings_across_tokens_cut_the_text_and_nothing_is_taken_back(byte_bpe):
    sentence = TEXTS[0]
    ids = byte_bpe(sentence)["input_ids"]
    for stop in ["crème brû", "🍮", "river", "e s", "not there"]:
        out, text = pieces(byte_bpe, ids, [stop, "zzz"])
        expected = sentence.split(stop)[0]
        assert "".join(out) == text.text == expected
        assert text.stopped == (stop in sentence)
        handed = ""
        for piece in out:  # every intermediate state is a prefix of the final text
            handed += piece
            assert expected.startswith(handed)


def test_the_tail_that_may_start_a_stop_string_is_held_back():
    word = fixtures.word_tokenizer(["near the river bank ."])
    ids = word("near the river bank .", add_special_tokens=False)["input_ids"]
    text = IncrementalText(word, ("the riverside",))
    given = []
    for token in ids[:3]:
        assert not text.add(token)
        given.append(text.take())
    assert "".join(given) == "near the river"[:len("near the river") - len("the riverside") + 1]
    assert not text.add(ids[3])
    text.finish()
    assert "".join(given) + text.take(final=True) == "near the river bank"


def test_fast_tokenizers_stream_through_decode_stream_unless_transformers_cleans_up_spaces(byte_bpe):
    from transformers import PreTrainedTokenizerFast

    assert IncrementalText(byte_bpe).streaming
    cleaning = PreTrainedTokenizerFast(tokenizer_object=byte_bpe.backend_tokenizer, eos_token="<eos>",
                                       clean_up_tokenization_spaces=True)
    assert not IncrementalText(cleaning).streaming          # its decode() changes " ." to ".": not the backend's
    assert not IncrementalText(object()).streaming


@pytest.mark.parametrize("streaming", [True, False])
def test_both_paths_hand_out_the_same_pieces_across_multi_byte_characters(byte_bpe, streaming):
    """Streamed pieces concatenate to the non-streamed text on both paths, a token sequence cut inside an
    emoji included (finish() then hands out what decoding everything gives); special tokens are skipped."""
    eos = byte_bpe.eos_token_id
    g = torch.Generator().manual_seed(1)
    for sentence in TEXTS:
        ids = byte_bpe(sentence)["input_ids"]
        for cut in range(1, len(ids) + 1):
            seq = ids[:cut] + [eos] + ids[cut:cut + 2] if cut % 3 == 0 else ids[:cut]
            out, _ = pieces(byte_bpe, seq, streaming=streaming)
            assert "".join(out) == byte_bpe.decode(seq, skip_special_tokens=True), (sentence, cut)
            assert not any("\ufffd" in piece for piece in out[:-1])     # only a cut character's end shows one
    for _ in range(30):
        seq = torch.randint(0, len(byte_bpe), (10,), generator=g).tolist()
        out, _ = pieces(byte_bpe, seq, streaming=streaming)
        assert "".join(out) == byte_bpe.decode(seq, skip_special_tokens=True)
