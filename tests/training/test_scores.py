"""Classification and regression metrics against hand-computed values."""
from __future__ import annotations

import math

import pytest

from loralab.training.scores import (accuracy, classification_metrics, f1_scores, matthews_corrcoef, pearson,
                                     regression_metrics, spearman)


def test_metrics_against_hand_computed_values():
    predictions, labels = [0, 1, 1, 2, 2, 0], [0, 1, 2, 2, 1, 1]
    assert accuracy(predictions, labels) == pytest.approx(3 / 6)
    # per-class F1: class 0: tp1 p2 a1 -> 2/3; class 1: tp1 p2 a3 -> 2/5; class 2: tp1 p2 a2 -> 1/2
    assert f1_scores(predictions, labels, 3)["f1_macro"] == pytest.approx((2 / 3 + 2 / 5 + 1 / 2) / 3)
    binary = f1_scores([1, 1, 0, 0], [1, 0, 0, 1], 2)
    assert binary["f1"] == pytest.approx(0.5)
    # binary MCC from the 2x2 formula: tp=1 tn=1 fp=1 fn=1 -> 0
    assert matthews_corrcoef([1, 1, 0, 0], [1, 0, 0, 1], 2) == 0.0
    assert matthews_corrcoef([1, 1, 0, 0, 1], [1, 1, 0, 0, 0], 2) == pytest.approx(
        (2 * 2 - 1 * 0) / math.sqrt(3 * 2 * 2 * 3))
    assert matthews_corrcoef([0, 0, 0], [0, 1, 1], 2) == 0.0
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [1, 1, 1]) == 0.0
    # ranks with ties: x -> [1, 2.5, 2.5, 4], y -> [1, 2, 3, 4]
    assert spearman([1, 2, 2, 3], [10, 20, 30, 40]) == pytest.approx(pearson([1, 2.5, 2.5, 4], [1, 2, 3, 4]))
    assert regression_metrics([1.0, 2.0], [1.0, 4.0])["mse"] == pytest.approx(2.0)
    assert set(classification_metrics([0, 1], [0, 1], 2)) == {"accuracy", "f1_macro", "f1", "mcc"}
