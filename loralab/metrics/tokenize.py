"""The two tokenizations the official E2E script applies before scoring.

- BLEU and NIST go through mteval-v13a, which lowercases and splits punctuation with its "13a" rules;
  `mteval_tokens` reuses sacrebleu's faithful port of those rules.
- METEOR, ROUGE-L and CIDEr go through coco-caption's PTBTokenizer (Stanford CoreNLP, Java), which
  lowercases, splits Penn-Treebank style and then drops punctuation tokens. `coco_tokens` approximates
  it in Python; on the already tokenized E2E text (`family - friendly`, `is n't`, `£ 20 - 25`) the two
  agree, so the difference only shows on raw text with unusual punctuation.
"""
from __future__ import annotations

import functools
import re

from loralab.errors import LoraLabError

# coco-caption removes these tokens after PTB tokenization (pycocoevalcap/tokenizer/ptbtokenizer.py).
# Brackets become -lrb-/-rrb- in PTB; we drop them too, which is what that list is meant to do.
COCO_PUNCTUATION = frozenset(["''", "'", "``", "`", "-lrb-", "-rrb-", "-lcb-", "-rcb-",
                              ".", "?", "!", ",", ":", "-", "--", "...", ";"])

_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lrb-", "]": "-rrb-", "{": "-lcb-", "}": "-rcb-"}
_ELLIPSIS = "\x00ellipsis\x00"


@functools.lru_cache(maxsize=1)
def _tokenizer_13a():
    try:
        from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a
    except ImportError:
        raise LoraLabError("BLEU and NIST need the `sacrebleu` package: pip install sacrebleu") from None
    return Tokenizer13a()


def mteval_tokens(text: str) -> list[str]:
    """Tokens as mteval-v13a scores them: lowercased (its default without -c), then the 13a
    punctuation rules. Returns a list of strings (empty for an empty text)."""
    return _tokenizer_13a()(text.lower()).split()


def coco_tokens(text: str) -> list[str]:
    """Tokens as coco-caption scores them: lowercased, PTB-style splitting (punctuation, clitics such
    as 's and n't, currency signs), then punctuation tokens removed. Returns a list of strings."""
    text = text.lower().replace("\n", " ")
    text = text.replace("...", f" {_ELLIPSIS} ")
    text = text.replace('"', " '' ")
    for bracket, token in _BRACKETS.items():
        text = text.replace(bracket, f" {token} ")
    text = re.sub(r"([;!?])", r" \1 ", text)
    # commas and colons inside numbers (1,000 and 12:30) stay, as in PTB
    text = re.sub(r",(?!\d)|(?<!\d),", " , ", text)
    text = re.sub(r":(?!\d)|(?<!\d):", " : ", text)
    # a period ending a word (not one inside 3.50 or an abbreviation's middle)
    text = re.sub(r"\.(?=\s|$)", " . ", text)
    text = re.sub(r"([£$€¥])", r" \1 ", text)
    # clitics: it's -> it 's, isn't -> is n't
    text = re.sub(r"(\w)(n't)(?=\s|$)", r"\1 \2", text)
    text = re.sub(r"(\w)('s|'re|'ve|'ll|'d|'m)(?=\s|$)", r"\1 \2", text)
    # quotes opening or closing a word
    # (a token that is itself a clitic, like the 's of pre-tokenized text, is left whole)
    text = re.sub(r"(^|\s)'(?!(?:s|t|re|ve|ll|d|m)(?:\s|$))(?=\S)", r"\1' ", text)
    text = re.sub(r"(?<=[^\s'])'(?=\s|$)", " '", text)
    tokens = text.replace(_ELLIPSIS, "...").split()
    return [token for token in tokens if token not in COCO_PUNCTUATION]
