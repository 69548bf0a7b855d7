"""ROUGE-L (coco-caption style) and CIDEr-D on hand-computed cases."""
import math

import pytest

from loralab.metrics import cider_d_segments, coco_tokens, corpus_cider_d, corpus_rouge_l, lcs_length
from loralab.metrics.rouge import rouge_l_segment


def test_lcs_by_hand():
    assert lcs_length("a b c d e".split(), "a c e".split()) == 3
    assert lcs_length("a b c d e".split(), "b d x y z w".split()) == 2
    assert lcs_length("a b".split(), "c d".split()) == 0
    assert lcs_length([], ["a"]) == 0


def test_rouge_l_identical_disjoint_and_hand_computed():
    assert corpus_rouge_l(["the eagle is near burger king"], [["the eagle is near burger king"]]) == 100.0
    assert corpus_rouge_l(["aa bb"], [["cc dd"]]) == 0.0
    # hyp "a b c d e": ref1 "a c e" has LCS 3 (P 3/5, R 3/3), ref2 "b d x y z w" LCS 2 (P 2/5, R 2/6).
    # coco takes max P = 0.6 and max R = 1.0 separately: (1+1.2²)·0.6·1 / (1 + 1.2²·0.6) = 0.78541
    score = corpus_rouge_l(["a b c d e"], [["a c e", "b d x y z w"]])
    assert score == pytest.approx(100 * 2.44 * 0.6 / (1 + 1.44 * 0.6))


def test_rouge_l_matches_rouge_score_for_one_reference_with_beta_one():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    pairs = [("the eagle is a cheap coffee shop near burger king", "near burger king the eagle coffee shop is cheap"),
             ("zizzi is a pub with a high customer rating", "zizzi is a highly rated pub"),
             ("a b a b a b", "b a b a")]
    for hyp, ref in pairs:
        expected = scorer.score(ref, hyp)["rougeL"]
        assert rouge_l_segment(hyp.split(), [ref.split()], beta=1.0) == pytest.approx(expected.fmeasure)


def test_cider_identical_is_10_and_disjoint_is_0():
    hyps = ["the eagle is a coffee shop", "zizzi serves cheap italian food"]
    assert corpus_cider_d(hyps, [[h] for h in hyps]) == pytest.approx(10.0)
    assert corpus_cider_d(["kiwi mango papaya lime", "x y z w"], [["a b c d"], ["e f g h"]]) == 0.0


def test_cider_hand_computed():
    # 2 segments -> idf of an n-gram found in one segment's references: ln 2 - ln 1 = L; an n-gram
    # found nowhere gets ln 2 - ln max(1, 0) = L too. Segment 1 is identical: 10.
    # Segment 2, hyp "e f x y" vs ref "e f g h" (every weight L, equal bigram counts -> no length penalty):
    #   n=1: (L² + L²) / (2L · 2L) = 1/2;  n=2: "e f" matches: L² / (√3 L · √3 L) = 1/3;  n=3, 4: 0
    #   score = 10 · (1/2 + 1/3 + 0 + 0) / 4 = 2.0833
    segments = cider_d_segments(["a b c d", "e f x y"], [["a b c d"], ["e f g h"]])
    assert segments == pytest.approx([10.0, 10 * (1 / 2 + 1 / 3) / 4])
    assert corpus_cider_d(["a b c d", "e f x y"], [["a b c d"], ["e f g h"]]) == pytest.approx(sum(segments) / 2)


def test_cider_gaussian_length_penalty_and_reference_averaging():
    # hyp "a b c" vs ref "a b c d": 2 vs 3 bigrams -> penalty exp(-1/(2·6²)) on every order.
    #   n=1: 3L² / (√3 L · 2L) = √3/2;   n=2: 2L² / (√2 L · √3 L) = √(2/3);
    #   n=3: L² / (L · √2 L) = 1/√2;     n=4: the hypothesis has no 4-gram -> 0
    # (a second segment "e f g h" keeps idf non-zero)
    penalty = math.exp(-1 / 72)
    expected = 10 * penalty * (math.sqrt(3) / 2 + math.sqrt(2 / 3) + 1 / math.sqrt(2)) / 4
    assert cider_d_segments(["a b c", "e f g h"], [["a b c d"], ["e f g h"]])[0] == pytest.approx(expected)
    # with a second, disjoint reference the segment score is the mean over both references
    two_refs = cider_d_segments(["a b c", "e f g h"], [["a b c d", "k l m n"], ["e f g h"]])[0]
    assert two_refs == pytest.approx(expected / 2)


def test_cider_ignores_ngrams_present_in_every_segment():
    # "shop" is in the references of both segments: idf ln 2 - ln 2 = 0, so matching it earns nothing
    segments = cider_d_segments(["shop", "shop"], [["shop"], ["shop"]])
    assert segments == [0.0, 0.0]


def test_coco_tokens_drop_punctuation_and_lowercase():
    assert coco_tokens("The Eagle's food isn't cheap, is it?") == ["the", "eagle", "'s", "food", "is", "n't",
                                                                  "cheap", "is", "it"]
    assert coco_tokens("Blue Spice is family - friendly . ") == ["blue", "spice", "is", "family", "friendly"]
    assert coco_tokens("It costs £20-25 at 12:30... (really)") == ["it", "costs", "£", "20-25", "at", "12:30",
                                                                  "really"]
