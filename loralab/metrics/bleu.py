"""Corpus BLEU as the official E2E script gets it from mteval-v13a, computed by sacrebleu.

mteval-v13a defaults, all reproduced by the sacrebleu settings below: lowercased text (mteval
lowercases unless run with -c), 13a tokenization, clipped n-gram counts against the maximum count
over a segment's references, n = 1..4, brevity penalty against the reference length closest to each
hypothesis (the shorter one on a tie), and the "exp" smoothing of an order with no match
(1 / (2^k · total) for the k-th such order) — which only matters for tiny corpora.
"""
from __future__ import annotations

from collections.abc import Sequence

from loralab.errors import LoraLabError


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """BLEU-4 of `hypotheses` (one string per segment) against `references` (a list of reference
    strings per segment, any number ≥ 1 each). Returns 0-100, the scale the LoRA paper prints."""
    try:
        from sacrebleu.metrics import BLEU
    except ImportError:
        raise LoraLabError("BLEU needs the `sacrebleu` package: pip install sacrebleu") from None
    max_refs = max(len(refs) for refs in references)
    # sacrebleu takes one stream per reference slot; None marks a segment with fewer references,
    # which sacrebleu leaves out (mteval skips the empty padding the official script writes).
    streams = [[refs[k] if k < len(refs) else None for refs in references] for k in range(max_refs)]
    # force: E2E text is already tokenized ("centre ."), which sacrebleu would otherwise warn about
    bleu = BLEU(lowercase=True, tokenize="13a", smooth_method="exp", force=True)
    return float(bleu.corpus_score(list(hypotheses), streams).score)
