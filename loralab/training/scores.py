"""Evaluation metrics for the classifier and regression tasks (GLUE's choices: accuracy, F1, Matthews
correlation, Pearson and Spearman correlation), computed in float64 with NumPy.

Degenerate inputs follow scikit-learn's conventions: MCC and the correlations are 0.0 when a variance is
zero (constant predictions), F1 of a class never predicted and never present is left out of the average.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Fraction of exact matches, in [0, 1]."""
    p, y = np.asarray(predictions), np.asarray(labels)
    _check(p, y)
    return float((p == y).mean())


def confusion_matrix(predictions: Sequence[int], labels: Sequence[int], num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) counts, rows = true class, columns = predicted class."""
    p, y = np.asarray(predictions, dtype=np.int64), np.asarray(labels, dtype=np.int64)
    _check(p, y)
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (y, p), 1)
    return matrix


def f1_scores(predictions: Sequence[int], labels: Sequence[int], num_classes: int) -> dict[str, float]:
    """Macro F1 (unweighted mean over classes that occur in labels or predictions) and, for two classes,
    binary F1 of class 1 (GLUE's MRPC/QQP F1)."""
    m = confusion_matrix(predictions, labels, num_classes).astype(np.float64)
    tp = np.diag(m)
    predicted, actual = m.sum(axis=0), m.sum(axis=1)
    per_class = []
    for c in range(num_classes):
        if predicted[c] + actual[c] == 0:
            continue
        per_class.append(2 * tp[c] / (predicted[c] + actual[c]))
    out = {"f1_macro": float(np.mean(per_class)) if per_class else 0.0}
    if num_classes == 2:
        denom = predicted[1] + actual[1]
        out["f1"] = float(2 * tp[1] / denom) if denom else 0.0
    return out


def matthews_corrcoef(predictions: Sequence[int], labels: Sequence[int], num_classes: int) -> float:
    """Multi-class Matthews correlation (Gorodkin's R_K), in [-1, 1]; 0.0 when undefined."""
    m = confusion_matrix(predictions, labels, num_classes).astype(np.float64)
    t, p = m.sum(axis=1), m.sum(axis=0)
    c, s = np.trace(m), m.sum()
    denom = math.sqrt(s * s - p @ p) * math.sqrt(s * s - t @ t)
    return float((c * s - t @ p) / denom) if denom else 0.0


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation; 0.0 when either input is constant."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    _check(a, b)
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b / denom) if denom else 0.0


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (Pearson of average ranks); 0.0 when either input is constant."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    _check(a, b)
    return pearson(_ranks(a), _ranks(b))


def classification_metrics(predictions: Sequence[int], labels: Sequence[int], num_classes: int) -> dict[str, float]:
    """accuracy, f1_macro (+ f1 for binary tasks) and mcc."""
    out = {"accuracy": accuracy(predictions, labels)}
    out.update(f1_scores(predictions, labels, num_classes))
    out["mcc"] = matthews_corrcoef(predictions, labels, num_classes)
    return out


def regression_metrics(predictions: Sequence[float], labels: Sequence[float]) -> dict[str, float]:
    """pearson, spearman and mse."""
    p, y = np.asarray(predictions, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    return {"pearson": pearson(p, y), "spearman": spearman(p, y), "mse": float(((p - y) ** 2).mean())}


def _check(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"predictions {a.shape} and labels {b.shape} differ in shape")
    if a.size == 0:
        raise ValueError("no examples to score")
