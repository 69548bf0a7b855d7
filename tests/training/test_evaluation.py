"""Evaluation: metrics and predictions equal a manual computation, and gradients stay enabled after."""
from __future__ import annotations

import pytest
import torch

from loralab.training.evaluation import evaluate


def test_evaluate_classification_metrics_match_manual_computation(classifier_run):
    model, config, train, dev, collator, label_map = classifier_run()
    result = evaluate(model, dev, "classification", collator, batch_size=7, label_map=label_map)
    with torch.no_grad():
        logits = torch.cat([model(**collator([dev[i]])).logits for i in range(len(dev))])
    labels = torch.tensor([dev[i]["labels"] for i in range(len(dev))])
    assert result.predictions == logits.argmax(-1).tolist()
    assert result.metrics["loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, labels)), abs=1e-5)
    assert result.metrics["accuracy"] == pytest.approx(float((logits.argmax(-1) == labels).float().mean()))
    assert torch.is_grad_enabled()


