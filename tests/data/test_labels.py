"""Label maps: ids in a fixed order, saved with the adapter; label sets spelled two ways are reported."""
from __future__ import annotations

import json
import warnings

import pytest

from loralab.data.examples import Example
from loralab.data.labels import LABELS_FILENAME, LabelMap, LabelSpellingWarning, label_warnings, spelling_warnings
from loralab.data.readers import read_examples
from loralab.errors import LoraLabError


def test_label_map_round_trip_and_unknown_label(tmp_path):
    examples = [Example("x", label=label, source="train.tsv", line=i + 2) for i, label in enumerate("2 10 1 2".split())]
    labels = LabelMap.from_examples(examples)
    assert labels.names == ("1", "2", "10")  # numeric labels in numeric order, not "1" < "10" < "2"
    assert [labels.encode(e.label) for e in examples] == [1, 2, 0, 1]
    assert labels.encode(10) == labels.encode(10.0) == labels.encode("10") == 2
    labels.save(tmp_path / "adapter" / LABELS_FILENAME)
    assert json.loads((tmp_path / "adapter" / "labels.json").read_text()) == {"kind": "classification",
                                                                             "names": ["1", "2", "10"]}
    loaded = LabelMap.load(tmp_path / "adapter" / "labels.json")
    assert loaded == labels and loaded.decode(2) == "10" and loaded.num_labels == 3
    assert [p.name for p in (tmp_path / "adapter").iterdir()] == ["labels.json"]  # no temp file left behind
    with pytest.raises(LoraLabError, match=r"dev.tsv:7: unknown label '3'; the model knows '1', '2', '10'"):
        loaded.encode("3", "dev.tsv", 7)


def test_label_map_string_and_regression_kinds(tmp_path):
    labels = LabelMap.from_examples([Example("x", label=s) for s in ("neutral", "positive", "negative")])
    assert labels.names == ("negative", "neutral", "positive")
    regression = LabelMap.from_examples([Example("x", label=v) for v in ("0.5", 3, 4.25)], regression=True)
    assert regression.num_labels == 1 and regression.encode("0.5") == 0.5
    regression.save(tmp_path / "r.json")
    assert LabelMap.load(tmp_path / "r.json") == regression
    with pytest.raises(LoraLabError, match=r"f.tsv:3: label 'high' is not a number, but the task is regression; "
                                           "check --label-column, or use --task classification for class names$"):
        LabelMap.from_examples([Example("x", label="high", source="f.tsv", line=3)], regression=True)
    with pytest.raises(LoraLabError, match="at least 2 distinct labels"):
        LabelMap.from_examples([Example("x", label="1"), Example("y", label="1")])
    (tmp_path / "bad.json").write_text('{"kind": "clustering"}')
    with pytest.raises(LoraLabError, match="bad.json: not a loralab label map"):
        LabelMap.load(tmp_path / "bad.json")


def test_mixed_label_spellings_are_reported_not_merged(write_file, tmp_path):
    rows = ["0"] * 3 + ["1"] * 2 + ["neg"] * 4 + ["pos"]
    path = write_file("mixed.tsv", "sentence\tlabel\n" + "".join(f"text {i}\t{label}\n" for i, label in enumerate(rows)))
    with pytest.warns(LabelSpellingWarning) as caught:
        labels = LabelMap.from_examples(read_examples(path))
    assert labels.names == ("0", "1", "neg", "pos") and labels.num_labels == 4  # four classes, as before
    expected = (f"{path}: labels mix numeric ids '0' (3), '1' (2) with names 'neg' (4), 'pos' (1); they are "
                "trained as 4 separate classes: if they are two spellings of the same classes, rewrite the labels "
                "with one spelling")
    assert labels.warnings == (expected,)
    assert [str(w.message) for w in caught] == [expected]
    # The warnings are for the run summary only: not saved, not part of the map's identity.
    labels.save(tmp_path / "labels.json")
    loaded = LabelMap.load(tmp_path / "labels.json")
    assert loaded == labels and loaded.warnings == ()


def test_case_and_space_variants_are_reported():
    counts = {"Positive": 5, "positive": 3, "positive ": 1, "negative": 7}
    assert spelling_warnings(counts) == [
        "labels 'Positive' (5), 'positive' (3), 'positive ' (1) differ only in case or spaces; they are trained as "
        "separate classes: if they are one class, rewrite the labels with one spelling"]
    examples = [Example("x", label=name) for name in ("POS", "pos", "neg", "neg")] + [Example("y")]
    assert len(label_warnings(examples)) == 1 and "'POS' (1), 'pos' (1)" in label_warnings(examples)[0]


@pytest.mark.parametrize("names", [("0", "1"), ("1", "2", "10"), ("negative", "neutral", "positive"),
                                   ("entailment", "not_entailment"), ("-1", "0.5", "2"), ("nan", "positive")])
def test_consistent_label_sets_give_no_warning(names):
    assert spelling_warnings({name: 1 for name in names}) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning here would fail the test
        assert LabelMap.from_examples([Example("x", label=name) for name in names]).warnings == ()


def test_regression_targets_are_standardised_and_the_scaling_is_saved_exactly(tmp_path):
    values = [0.0, 1.5, 2.5, 5.0, 4.0, 2.0]
    examples = [Example("x", label=str(v), source="train.tsv", line=i + 2) for i, v in enumerate(values)]
    labels = LabelMap.from_examples(examples, regression=True, standardize=True)
    mean, std = sum(values) / 6, (sum((v - sum(values) / 6) ** 2 for v in values) / 6) ** 0.5
    assert labels.target_mean == pytest.approx(mean, abs=1e-15) and labels.target_std == pytest.approx(std, rel=1e-15)
    assert labels.target_mean == 2.5 and not labels.identity
    encoded = [labels.encode(v) for v in values]
    assert sum(encoded) == pytest.approx(0, abs=1e-12) and sum(t * t for t in encoded) / 6 == pytest.approx(1)
    assert [labels.value(t) for t in encoded] == pytest.approx(values, abs=1e-12)
    assert labels.value(0.0) == 2.5 and labels.value(1.0) == 2.5 + labels.target_std
    labels.save(tmp_path / LABELS_FILENAME)
    saved = json.loads((tmp_path / LABELS_FILENAME).read_text())
    assert saved == {"kind": "regression", "names": [], "target_mean": 2.5, "target_std": labels.target_std}
    assert LabelMap.load(tmp_path / LABELS_FILENAME) == labels   # the float64 values round-trip exactly


def test_unscaled_regression_maps_are_the_identity_and_old_files_load_unchanged(tmp_path):
    examples = [Example("x", label=v) for v in (1.0, 3.0)]
    assert LabelMap.from_examples(examples, regression=True) == LabelMap(regression=True)
    old = tmp_path / LABELS_FILENAME
    old.write_text('{"kind": "regression", "names": []}')          # what loralab wrote before the scaling
    loaded = LabelMap.load(old)
    assert loaded.identity and loaded.encode("3.25") == 3.25 and loaded.value(-1.5) == -1.5
    loaded.save(old)
    assert json.loads(old.read_text()) == {"kind": "regression", "names": []}
    classes = LabelMap(("a", "b"))
    assert classes.identity and classes.to_dict() == {"kind": "classification", "names": ["a", "b"]}


def test_constant_regression_labels_and_bad_scalings_are_one_line_errors(tmp_path):
    same = [Example("x", label="2.5", source="train.tsv", line=i + 2) for i in range(4)]
    with pytest.raises(LoraLabError, match=r"^train.tsv: every regression label is 2.5 \(standard deviation 0\), so "
                                           r"there is nothing to learn; check --label-column, or pass "
                                           r"--no-standardize-targets to train on the labels as they are$"):
        LabelMap.from_examples(same, regression=True, standardize=True)
    assert LabelMap.from_examples(same, regression=True).identity     # unscaled, a constant file still trains
    with pytest.raises(LoraLabError, match="target_std must be positive, got 0.0"):
        LabelMap(regression=True, target_std=0)
    with pytest.raises(LoraLabError, match="no target scaling"):
        LabelMap(("a", "b"), target_mean=1.0)
    bad = tmp_path / LABELS_FILENAME
    bad.write_text('{"kind": "regression", "names": [], "target_mean": "x"}')
    with pytest.raises(LoraLabError, match=r"labels.json: target_mean must be a finite number, got 'x'; retrain"):
        LabelMap.load(bad)
