"""Corpus NIST (Doddington 2002) as mteval-v13a computes it for the official E2E script.

NIST = Σ_{n=1..5} [Σ_matched n-grams info(w1..wn) / #hypothesis n-grams] · LP(hypothesis words / reference words)

- info(w1..wn) = log2(count(w1..wn-1) / count(w1..wn)), counts over every reference of the corpus
  (for unigrams the numerator is the total number of reference words): rare continuations weigh more.
- A hypothesis n-gram matches at most as often as it occurs in the one reference where it is most
  frequent (the BLEU-style clip against the maximum over references).
- LP(ρ) = exp(-β·ln²ρ) for ρ < 1 and 1 otherwise, with β = ln 2 / ln² 1.5 so that LP(2/3) = 0.5.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Literal

from loralab.errors import LoraLabError
from loralab.metrics.tokenize import mteval_tokens

# mteval: LP(ratio_x⁻¹ = 2/3) = score_x = 0.5
_NIST_BETA = -math.log(0.5) / math.log(1.5) ** 2

ReferenceLength = Literal["official", "average"]


def _ngrams(tokens: Sequence[str], max_order: int) -> Iterator[tuple[str, ...]]:
    for start in range(len(tokens)):
        for n in range(1, min(max_order, len(tokens) - start) + 1):
            yield tuple(tokens[start:start + n])


def nist_length_penalty(ratio: float) -> float:
    """mteval's NIST brevity factor for `ratio` = hypothesis words / reference words (unitless)."""
    if ratio >= 1.0:
        return 1.0
    if ratio <= 0.0:
        return 0.0
    return math.exp(-_NIST_BETA * math.log(ratio) ** 2)


def corpus_nist(hypotheses: Sequence[str], references: Sequence[Sequence[str]], max_order: int = 5,
                reference_length: ReferenceLength = "official") -> float:
    """NIST-5 of `hypotheses` (one string per segment) against `references` (reference strings per
    segment). Returns the raw NIST value (the paper's 8.85 scale).

    reference_length: the reference side of the length ratio.
      "official" (default) reproduces the official script: it pads every segment to the largest
        number of references with empty ones, and mteval divides all reference words by that number,
        so with E2E's uneven reference counts the penalty practically never applies.
      "average": the sum over segments of each segment's mean reference length (Doddington's
        definition, and what the script's Python port pymteval does).
    """
    if reference_length not in ("official", "average"):
        raise LoraLabError(f"reference_length must be 'official' or 'average', got {reference_length!r}")
    hyp_tokens = [mteval_tokens(h) for h in hypotheses]
    ref_tokens = [[mteval_tokens(r) for r in refs] for refs in references]

    ngram_counts: Counter[tuple[str, ...]] = Counter()
    total_ref_words = 0
    for refs in ref_tokens:
        for ref in refs:
            total_ref_words += len(ref)
            ngram_counts.update(_ngrams(ref, max_order))

    def info(ngram: tuple[str, ...]) -> float:
        prefix_count = ngram_counts[ngram[:-1]] if len(ngram) > 1 else total_ref_words
        return math.log2(prefix_count / ngram_counts[ngram])

    matched_info = [0.0] * max_order
    hyp_ngram_total = [0] * max_order
    for hyp, refs in zip(hyp_tokens, ref_tokens):
        for n in range(1, max_order + 1):
            hyp_ngram_total[n - 1] += max(len(hyp) - n + 1, 0)
        max_ref_counts: dict[tuple[str, ...], int] = {}
        for ref in refs:
            for ngram, count in Counter(_ngrams(ref, max_order)).items():
                if count > max_ref_counts.get(ngram, 0):
                    max_ref_counts[ngram] = count
        for ngram, count in Counter(_ngrams(hyp, max_order)).items():
            clipped = min(count, max_ref_counts.get(ngram, 0))
            if clipped:
                matched_info[len(ngram) - 1] += info(ngram) * clipped

    score = sum(matched_info[n] / max(hyp_ngram_total[n], 1) for n in range(max_order))
    hyp_words = sum(len(h) for h in hyp_tokens)
    if reference_length == "official":
        ref_words = total_ref_words / max(len(refs) for refs in ref_tokens)
    else:
        ref_words = sum(sum(len(r) for r in refs) / len(refs) for refs in ref_tokens)
    if ref_words == 0:
        return score
    return score * nist_length_penalty(hyp_words / ref_words)
