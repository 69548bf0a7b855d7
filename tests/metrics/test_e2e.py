"""E2E file reading, grouping by meaning representation, and the five-metric scorer."""
from pathlib import Path

import pytest

from loralab.errors import LoraLabError
from loralab.metrics import (METRIC_NAMES, group_references, read_e2e, read_e2e_references, read_predictions,
                             score_e2e, score_file)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_read_e2e_strips_and_skips_blank_lines(tmp_path):
    path = write(tmp_path / "e2e.txt", "name : A||A is nice . \n\nname : B|| B is far .\n")
    assert read_e2e(path) == [("name : A", "A is nice ."), ("name : B", "B is far .")]


@pytest.mark.parametrize("line, message", [
    ("name : A no separator", "with exactly one `||`, this one has 0"),
    ("name : A||text||more", "this one has 2"),
    ("||text", "empty meaning representation"),
    ("name : A||  ", "empty reference text"),
])
def test_read_e2e_names_file_and_line_of_a_malformed_line(tmp_path, line, message):
    path = write(tmp_path / "bad.txt", f"name : A||fine .\n{line}\n")
    with pytest.raises(LoraLabError, match=message) as info:
        read_e2e(path)
    assert f"{path}:2:" in str(info.value)


def test_read_e2e_missing_and_empty_files(tmp_path):
    with pytest.raises(LoraLabError, match="no such file"):
        read_e2e(tmp_path / "missing.txt")
    with pytest.raises(LoraLabError, match="holds no"):
        read_e2e(write(tmp_path / "empty.txt", "\n\n"))


def test_group_references_keeps_first_appearance_order():
    pairs = [("mr B", "b1"), ("mr A", "a1"), ("mr B", "b2"), ("mr C", "c1"), ("mr A", "a2")]
    mrs, refs = group_references(pairs)
    assert mrs == ["mr B", "mr A", "mr C"]
    assert refs == [["b1", "b2"], ["a1", "a2"], ["c1"]]


def test_score_e2e_identical_and_disjoint():
    refs = [["the eagle is a cheap coffee shop near burger king ."],
            ["zizzi is a pub with a customer rating of 5 out of 5 ."]]
    perfect = score_e2e([r[0] for r in refs], refs, meteor="loralab")
    assert list(perfect) == list(METRIC_NAMES)
    assert perfect["BLEU"] == pytest.approx(100.0)
    assert perfect["METEOR"] == pytest.approx(100.0)
    assert perfect["ROUGE_L"] == pytest.approx(100.0)
    assert perfect["CIDEr"] == pytest.approx(10.0)
    assert perfect["NIST"] > 3.0
    nothing = score_e2e(["qq rr ss tt", "uu vv ww xx"], refs, meteor="loralab")
    assert nothing == {"BLEU": 0.0, "NIST": 0.0, "METEOR": 0.0, "ROUGE_L": 0.0, "CIDEr": 0.0}


@pytest.mark.parametrize("hyps, refs, message", [
    ([], [], "empty"),
    (["a"], [["a"], ["b"]], "1 hypotheses but 2 reference groups"),
    (["a"], [[]], "non-empty list"),
    ("a", [["a"]], "not a string"),
    ([3], [["a"]], "expected a string"),
])
def test_score_e2e_rejects_bad_inputs(hyps, refs, message):
    with pytest.raises(LoraLabError, match=message):
        score_e2e(hyps, refs)


def test_score_file_checks_the_line_count(tmp_path):
    refs = write(tmp_path / "refs.txt", "mr A||a cheap pub .\nmr A||a pub , cheap .\nmr B||an expensive cafe .\n")
    good = write(tmp_path / "good.txt", "a cheap pub .\nan expensive cafe .\n")
    assert read_predictions(good) == ["a cheap pub .", "an expensive cafe ."]
    scores = score_file(good, refs)
    assert scores["BLEU"] == pytest.approx(100.0) and scores["ROUGE_L"] == pytest.approx(100.0)
    trailing = write(tmp_path / "trailing.txt", "a cheap pub .\nan expensive cafe .\n\n\n")
    assert score_file(trailing, refs) == scores
    bad = write(tmp_path / "bad.txt", "a cheap pub .\n")
    with pytest.raises(LoraLabError, match="1 lines but .* has 2 distinct meaning representations"):
        score_file(bad, refs)


@pytest.mark.needs_shared_data("e2e/test.txt")
def test_real_test_split_groups_and_scores_a_reference_as_output(tmp_path, shared_data):
    e2e_test = shared_data / "e2e" / "test.txt"
    mrs, refs = read_e2e_references(e2e_test)
    assert len(mrs) == 630 and sum(len(r) for r in refs) == 4693
    assert mrs[0] == "name : Blue Spice | Type : coffee shop | area : city centre"
    assert refs[0][:2] == ["A coffee shop in the city centre area called Blue Spice .",
                           "Blue Spice is a coffee shop in city centre ."]
    # Emitting one of each MR's own references is perfect for every metric that keeps the best
    # reference (BLEU clips per n-gram, METEOR keeps the best reference, ROUGE-L takes max P and R);
    # CIDEr averages over all references, so it stays well below its maximum of 10.
    predictions = write(tmp_path / "pred.txt", "\n".join(r[-1] for r in refs) + "\n")
    scores = score_file(predictions, e2e_test)
    assert scores["BLEU"] == pytest.approx(100.0)
    assert scores["METEOR"] == pytest.approx(100.0)
    assert scores["ROUGE_L"] == pytest.approx(100.0)
    assert 1.0 < scores["CIDEr"] < 10.0
    assert scores["NIST"] > 8.0
