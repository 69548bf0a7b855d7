"""METEOR (Meteor 1.5 English parameters, exact + stem matching) on hand-computed cases."""
import pytest

from loralab.errors import LoraLabError
from loralab.metrics import MeteorParameters, corpus_meteor
from loralab.metrics.meteor import MeteorStats, align, best_reference_stats, meteor_score

# Meteor 1.5 English "rank" task: alpha 0.85, beta 0.20, gamma 0.60, delta 0.75, stem weight 0.6
GAMMA, BETA = 0.60, 0.20


def test_identical_scores_100_and_disjoint_scores_0():
    sentences = ["the eagle is a coffee shop near burger king", "zizzi serves cheap italian food"]
    assert corpus_meteor(sentences, [[s] for s in sentences]) == pytest.approx(100.0)
    assert corpus_meteor(["kiwi mango papaya"], [["apple banana cherry"]]) == 0.0


def test_swapped_halves_pay_the_fragmentation_penalty():
    # hyp "cherry date apple banana" vs ref "apple banana cherry date": all 4 content words match
    # exactly, so P = R = Fmean = 1, but they form 2 chunks ("apple banana", "cherry date") over
    # 4 matched words: Pen = 0.6 · (2/4)^0.2 = 0.52233, METEOR = 1 - Pen = 0.47767
    stats = align("cherry date apple banana".split(), "apple banana cherry date".split())
    assert stats.chunks == 2 and stats.hyp_matches == stats.ref_matches == 4
    assert meteor_score(stats) == pytest.approx(1 - GAMMA * 0.5 ** BETA)


def test_stem_match_gets_the_stem_weight():
    # "apple" vs "apples": Snowball stems both to "appl" -> one stem match of weight 0.6:
    # P = R = 0.6, Fmean = 0.6, everything matched in one chunk -> no penalty -> 0.6
    stats = align(["apple"], ["apples"])
    assert stats.hyp_content_matches == [0, 1]
    assert meteor_score(stats) == pytest.approx(0.6)


def test_function_words_weigh_one_minus_delta():
    # "the pear" vs "the apple": only the function word "the" matches.
    # P = (1-δ)·1 / (δ·1 + (1-δ)·1) = 0.25 = R, Fmean = 0.25; 1 chunk over 1 match -> Pen = 0.6
    # METEOR = 0.25 · (1 - 0.6) = 0.1
    stats = align("the pear".split(), "the apple".split())
    assert stats.hyp_function_matches == [1, 0] and stats.hyp_content_matches == [0, 0]
    assert meteor_score(stats) == pytest.approx(0.1)


def test_search_picks_the_alignment_with_fewest_chunks():
    # the two "the"s could align either way; the best alignment keeps "the dog" and "the cat" whole
    stats = align("the cat the dog".split(), "the dog the cat".split())
    assert stats.hyp_matches == 4 and stats.chunks == 2
    assert meteor_score(stats) == pytest.approx(1 - GAMMA * 0.5 ** BETA)


def test_best_reference_is_kept():
    stats = best_reference_stats(["apple", "banana"], [["kiwi"], ["apple", "banana"], ["banana"]])
    assert stats.ref_length == 2 and stats.is_perfect
    assert corpus_meteor(["apple banana"], [["kiwi", "apple banana"]]) == pytest.approx(100.0)


def test_corpus_score_sums_statistics_and_skips_perfect_segments_chunks():
    # segment 1 identical (2 words, perfect -> adds no chunk); segment 2 the swapped halves above.
    # Summed: 6 of 6 words matched on each side, 2 chunks -> Pen = 0.6·(2/6)^0.2, METEOR = 1 - Pen
    score = corpus_meteor(["kiwi lime", "cherry date apple banana"],
                          [["kiwi lime"], ["apple banana cherry date"]])
    assert score == pytest.approx(100 * (1 - GAMMA * (1 / 3) ** BETA))    # 51.84, not the mean 73.88


def test_stats_add_and_empty_hypothesis():
    total = MeteorStats()
    total.add(align([], ["apple"]))
    assert total.hyp_length == 0 and total.ref_length == 1
    assert meteor_score(total) == 0.0
    assert corpus_meteor([""], [["apple pie"]]) == 0.0


def test_parameters_are_validated():
    with pytest.raises(LoraLabError, match="alpha"):
        MeteorParameters(alpha=1.5)
    with pytest.raises(LoraLabError, match="beam_size"):
        MeteorParameters(beam_size=0)
