"""ROUGE-L (Lin 2004) the way coco-caption computes it, which is what the official E2E script reports.

Per segment, with LCS the longest common subsequence of tokens:
    P = max over references of LCS / |hypothesis|,   R = max over references of LCS / |reference|
    ROUGE-L = (1 + β²)·P·R / (R + β²·P), β = 1.2
(the maxima are taken separately, so P and R may come from different references); the corpus score
is the mean over segments. rouge-score's multi-reference mode instead keeps the reference with the
best F1 (β = 1), which gives different numbers, so this is our own implementation.
"""
from __future__ import annotations

from collections.abc import Sequence

from loralab.metrics.tokenize import coco_tokens

BETA = 1.2


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists (O(|a|·|b|) time, O(|b|) memory)."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for token_a in a:
        current = [0] * (len(b) + 1)
        for j, token_b in enumerate(b, start=1):
            current[j] = previous[j - 1] + 1 if token_a == token_b else max(previous[j], current[j - 1])
        previous = current
    return previous[-1]


def rouge_l_segment(hypothesis: Sequence[str], references: Sequence[Sequence[str]], beta: float = BETA) -> float:
    """coco-style ROUGE-L of one tokenized hypothesis against its tokenized references, in [0, 1]."""
    if not hypothesis:
        return 0.0
    precision = recall = 0.0
    for reference in references:
        if not reference:
            continue
        lcs = lcs_length(hypothesis, reference)
        precision = max(precision, lcs / len(hypothesis))
        recall = max(recall, lcs / len(reference))
    if precision == 0.0 or recall == 0.0:
        return 0.0
    return (1 + beta ** 2) * precision * recall / (recall + beta ** 2 * precision)


def corpus_rouge_l(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean segment ROUGE-L of `hypotheses` against `references` (coco tokenization), on 0-100."""
    scores = [rouge_l_segment(coco_tokens(h), [coco_tokens(r) for r in refs])
              for h, refs in zip(hypotheses, references)]
    return 100.0 * sum(scores) / len(scores)
