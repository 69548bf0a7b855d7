"""BLEU (through sacrebleu) and NIST (ours) on hand-computed cases and against sacrebleu / nltk."""
import math

import pytest

from loralab.metrics import corpus_bleu, corpus_nist, mteval_tokens
from loralab.metrics.nist import nist_length_penalty

SENTENCES = [
    "The Eagle is a cheap coffee shop near Burger King in the riverside area .",
    "Zizzi is a pub with a customer rating of 5 out of 5 .",
    "Near the Crowne Plaza Hotel , Browns Cambridge serves Italian food .",
    "The Phoenix is a family - friendly restaurant in the city centre .",
]


def test_bleu_identical_is_100_and_disjoint_is_0():
    assert corpus_bleu(SENTENCES, [[s] for s in SENTENCES]) == pytest.approx(100.0)
    assert corpus_bleu(["aa bb cc dd ee"], [["vv ww xx yy zz"]]) == 0.0


def test_bleu_is_case_insensitive_like_mteval_default():
    hyps = [s.upper() for s in SENTENCES]
    assert corpus_bleu(hyps, [[s] for s in SENTENCES]) == pytest.approx(100.0)


def test_bleu_hand_computed_with_mteval_smoothing():
    # hyp "the cat sat on the mat" vs ref "the cat is on the mat" (6 words each, BP = 1):
    # 1-grams 5/6 (the×2, cat, on, mat), 2-grams 3/5 (the cat, on the, the mat), 3-grams 1/4 (on the mat),
    # 4-grams 0/3 -> mteval's smoothing uses 1/(2·3). BLEU = (5/6 · 3/5 · 1/4 · 1/6)^(1/4) = (1/48)^(1/4)
    score = corpus_bleu(["the cat sat on the mat"], [["the cat is on the mat"]])
    assert score == pytest.approx(100 * (1 / 48) ** 0.25)    # 37.99


def test_bleu_brevity_penalty_uses_the_closest_reference():
    # 4-word hypothesis, references of 4 and 8 words: the 4-word one is closest -> BP = 1
    assert corpus_bleu(["a b c d"], [["a b c d", "a b c d e f g h"]]) == pytest.approx(100.0)
    # only the 8-word reference: BP = exp(1 - 8/4)
    assert corpus_bleu(["a b c d"], [["a b c d e f g h"]]) == pytest.approx(100 * math.exp(-1.0))


def test_bleu_matches_sacrebleu_with_uneven_reference_counts():
    sacrebleu = pytest.importorskip("sacrebleu")
    hyps = ["the eagle is a cheap coffee shop near burger king .",
            "zizzi is a pub rated 5 out of 5 .",
            "browns cambridge serves italian food near the crowne plaza hotel ."]
    refs = [SENTENCES[:3], SENTENCES[1:2], SENTENCES[2:4]]
    # Repeating a segment's own references changes neither the max n-gram counts nor the closest
    # length, so padding to full streams this way is an independent way to get the same BLEU.
    padded = [[group[k % len(group)] for group in refs] for k in range(3)]
    expected = sacrebleu.corpus_bleu(hyps, padded, lowercase=True, tokenize="13a").score
    assert corpus_bleu(hyps, refs) == pytest.approx(expected, abs=1e-9)
    assert 0.0 < expected < 100.0


def test_nist_hand_computed():
    # one reference "a b c d": each unigram has info log2(4/1) = 2, every longer n-gram
    # log2(count(prefix)/count(ngram)) = log2(1) = 0. NIST = 4·2/4 + 0 = 2.
    assert corpus_nist(["a b c d"], [["a b c d"]]) == pytest.approx(2.0)
    # hyp "the cat" vs "the cat sat": unigram info log2(3) each -> 2·log2(3)/2; bigram "the cat" has
    # info log2(1/1) = 0. Length ratio 2/3 gives mteval's penalty 0.5 by construction.
    assert corpus_nist(["the cat"], [["the cat sat"]]) == pytest.approx(math.log2(3) / 2)
    assert corpus_nist(["xx yy"], [["the cat sat"]]) == 0.0


def test_nist_length_penalty_constants():
    assert nist_length_penalty(2 / 3) == pytest.approx(0.5)
    assert nist_length_penalty(1.0) == 1.0 and nist_length_penalty(1.7) == 1.0
    assert nist_length_penalty(0.0) == 0.0


def test_nist_official_reference_length_divides_by_the_largest_reference_count():
    # segment 1 has 3 references of 3 words, segment 2 one reference of 3 words; hypotheses have 2 words.
    hyps, refs = ["the cat", "a dog"], [["the cat sat", "the cat ran", "one cat sat"], ["a dog ran"]]
    # official: 12 reference words / 3 (largest reference count) = 4 = the 4 hypothesis words -> no penalty
    official = corpus_nist(hyps, refs)
    # average: 3 + 3 reference words -> ratio 4/6 = 2/3 -> penalty 0.5
    average = corpus_nist(hyps, refs, reference_length="average")
    assert average == pytest.approx(official * 0.5)


def test_nist_matches_nltk_for_single_references_without_length_penalty():
    nltk_nist = pytest.importorskip("nltk.translate.nist_score")
    hyps = ["the eagle is a cheap coffee shop near burger king in the riverside area , with 5 stars .",
            "zizzi is a pub with a customer rating of 5 out of 5 and it is cheap .",
            "near the crowne plaza hotel , browns cambridge serves italian food in the centre ."]
    refs = [[s] for s in SENTENCES[:3]]
    # nltk picks a best reference per order and uses another β for its length penalty; with one
    # reference per segment and hypotheses at least as long as it, both definitions coincide.
    expected = nltk_nist.corpus_nist([[mteval_tokens(r) for r in group] for group in refs],
                                     [mteval_tokens(h) for h in hyps], n=5)
    assert corpus_nist(hyps, refs) == pytest.approx(expected, rel=1e-12)
    assert expected > 1.0


def test_nist_rejects_unknown_reference_length_mode():
    from loralab.errors import LoraLabError
    with pytest.raises(LoraLabError, match="reference_length"):
        corpus_nist(["a"], [["a"]], reference_length="mean")
