"""The official Meteor 1.5 jar (from pycocoevalcap, run with Java) as score_e2e's METEOR."""
from __future__ import annotations

import pytest

from loralab import LoraLabError
from loralab.metrics import score_e2e
from loralab.metrics.meteor import corpus_meteor
from loralab.metrics.meteor_jar import (FALLBACK, OFFICIAL, corpus_meteor_official, find_meteor_jar,
                                        java_executable, meteor_implementation)

needs_jar = pytest.mark.skipif(find_meteor_jar() is None or java_executable() is None,
                               reason="Java or pycocoevalcap's meteor-1.5.jar is not installed")

HYPS = ["there is a big house near the river", "the cat sat on the mat"]
REFS = [["there is a large house by the river"], ["a cat was sitting on the mat", "the cat sat on the mat"]]


@needs_jar
def test_jar_scores_synonyms_that_the_fallback_cannot():
    # One Java start (~5-20 s: it loads the paraphrase table), three corpora scored in that one test.
    official = corpus_meteor_official(HYPS + [REFS[1][1]], REFS + [REFS[1]])
    ours = corpus_meteor(HYPS + [REFS[1][1]], REFS + [REFS[1]])
    # "big"/"large" (WordNet synonyms) and "near"/"by" align only in the jar, so it scores higher.
    assert official > ours + 3.0
    assert 0.0 < official < 100.0


@needs_jar
def test_score_e2e_auto_uses_the_jar_when_present(monkeypatch):
    assert meteor_implementation() == OFFICIAL
    calls = []
    monkeypatch.setattr("loralab.metrics.e2e.corpus_meteor_official", lambda h, r: calls.append(len(h)) or 42.0)
    assert score_e2e(HYPS, REFS)["METEOR"] == 42.0 and calls == [2]
    assert score_e2e(HYPS, REFS, meteor="loralab")["METEOR"] == pytest.approx(corpus_meteor(HYPS, REFS))


def test_fallback_is_labelled_and_official_refuses_without_java(monkeypatch):
    monkeypatch.setattr("loralab.metrics.meteor_jar.java_executable", lambda: None)
    assert meteor_implementation() == FALLBACK
    assert score_e2e(HYPS, REFS)["METEOR"] == pytest.approx(corpus_meteor(HYPS, REFS))
    with pytest.raises(LoraLabError, match="needs Java"):
        score_e2e(HYPS, REFS, meteor="official")
    with pytest.raises(LoraLabError, match="unknown METEOR implementation 'wordnet'"):
        score_e2e(HYPS, REFS, meteor="wordnet")
