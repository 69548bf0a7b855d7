"""CIDEr-D (Vedantam et al. 2015) exactly as coco-caption's `Cider` scorer computes it — the number
the official E2E script and the LoRA paper call CIDEr.

For each segment and n = 1..4, hypothesis and each reference become tf-idf vectors over n-grams:
    g(ngram) = count in the sentence · (ln N − ln max(1, df(ngram)))
with N the number of segments and df the number of segments whose references contain the n-gram.
    sim_n = Σ_ngram min(g_hyp, g_ref)·g_ref / (‖g_hyp‖·‖g_ref‖) · exp(−δ² / 2σ²),  σ = 6
(the min is the "-D" clipping; δ is the length difference, which coco-caption measures in bigrams,
i.e. words − 1). The segment score is 10 · mean_n(mean over references of sim_n), the corpus score
the mean over segments. A sentence identical to its segment's only reference scores 10 when it has
at least 4 words and none of its n-grams occurs in the references of every segment (idf 0).
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from loralab.metrics.tokenize import coco_tokens

MAX_ORDER = 4
SIGMA = 6.0

_Vector = tuple[list[dict[tuple[str, ...], float]], list[float], int]


def _ngram_counts(tokens: Sequence[str]) -> Counter[tuple[str, ...]]:
    counts: Counter[tuple[str, ...]] = Counter()
    for n in range(1, MAX_ORDER + 1):
        for start in range(len(tokens) - n + 1):
            counts[tuple(tokens[start:start + n])] += 1
    return counts


def cider_d_segments(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> list[float]:
    """CIDEr-D of each hypothesis against its references (coco tokenization), 0 to 10 each. The idf
    comes from all of `references`, so a segment's score depends on the whole corpus."""
    hyp_counts = [_ngram_counts(coco_tokens(h)) for h in hypotheses]
    ref_counts = [[_ngram_counts(coco_tokens(r)) for r in refs] for refs in references]

    document_frequency: Counter[tuple[str, ...]] = Counter()
    for refs in ref_counts:
        document_frequency.update({ngram for ref in refs for ngram in ref})
    log_segments = math.log(float(len(ref_counts)))

    def vector(counts: Counter[tuple[str, ...]]) -> _Vector:
        weights: list[dict[tuple[str, ...], float]] = [{} for _ in range(MAX_ORDER)]
        norms = [0.0] * MAX_ORDER
        bigrams = 0
        for ngram, term_frequency in counts.items():
            n = len(ngram) - 1
            weight = term_frequency * (log_segments - math.log(max(1.0, document_frequency[ngram])))
            weights[n][ngram] = weight
            norms[n] += weight * weight
            if n == 1:
                bigrams += term_frequency
        return weights, [math.sqrt(x) for x in norms], bigrams

    def similarity(hyp: _Vector, ref: _Vector) -> list[float]:
        (hyp_weights, hyp_norms, hyp_length), (ref_weights, ref_norms, ref_length) = hyp, ref
        length_penalty = math.exp(-((hyp_length - ref_length) ** 2) / (2 * SIGMA ** 2))
        values = []
        for n in range(MAX_ORDER):
            value = 0.0
            for ngram, weight in hyp_weights[n].items():
                ref_weight = ref_weights[n].get(ngram, 0.0)
                value += min(weight, ref_weight) * ref_weight
            if hyp_norms[n] != 0.0 and ref_norms[n] != 0.0:
                value /= hyp_norms[n] * ref_norms[n]
            values.append(value * length_penalty)
        return values

    segment_scores = []
    for hyp, refs in zip(hyp_counts, ref_counts):
        hyp_vector = vector(hyp)
        per_order = [0.0] * MAX_ORDER
        for ref in refs:
            for n, value in enumerate(similarity(hyp_vector, vector(ref))):
                per_order[n] += value
        segment_scores.append(10.0 * (sum(per_order) / MAX_ORDER) / len(refs))
    return segment_scores


def corpus_cider_d(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean segment CIDEr-D, on coco-caption's scale (the LoRA paper's 2.53 for E2E)."""
    scores = cider_d_segments(hypotheses, references)
    return sum(scores) / len(scores)
