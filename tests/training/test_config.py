"""TrainConfig: validation at construction (finite numbers included), and which settings a resume may change."""
from __future__ import annotations

import pytest

from loralab.errors import LoraLabError
from loralab.training.config import DEFAULT_RUN, RESUMABLE_FIELDS, TrainConfig, resume_changes


def test_config_validation_and_default_run():
    config = TrainConfig(**DEFAULT_RUN)
    assert config.task == "classification" and config.best_metric == "accuracy"
    assert TrainConfig(data="e2e").task == "causal-lm" and TrainConfig(data="e2e").best_metric == "loss"
    assert TrainConfig.from_dict(config.to_dict()) == config
    for bad, message in [(dict(data="sst2", lr=0), "learning rate"), (dict(data="sst2", batch_size=0), "batch_size"),
                         (dict(data="sst2", scheduler="step"), "scheduler"), (dict(), "no training data"),
                         (dict(data="sst2", train_file="x"), "not both"), (dict(data="sst2", warmup_ratio=1.0), "warmup"),
                         (dict(data="sst2", lora={"r": 0}), "r")]:
        with pytest.raises(LoraLabError, match=message):
            TrainConfig(**bad)
    with pytest.raises(LoraLabError, match="unknown training settings"):
        TrainConfig.from_dict({"data": "sst2", "learning_rate": 1})
    assert config.lora_config(("classifier",)).modules_to_save == ["classifier"]



@pytest.mark.parametrize("field, value", [("epochs", float("inf")), ("epochs", float("nan")), ("epochs", -1.0),
                                          ("lr", float("inf")), ("lr", float("nan")), ("weight_decay", float("nan")),
                                          ("max_grad_norm", float("inf")), ("eps", 0.0)])
def test_non_finite_or_out_of_range_numbers_are_one_clear_line(field, value):
    with pytest.raises(LoraLabError, match=f"^{field} must be .*, got {value!r}$"):
        TrainConfig(data="sst2", **{field: value})


def test_resume_may_change_only_the_resumable_settings():
    saved = TrainConfig(data="sst2", lr=5e-3, epochs=2.0, lora={"r": 8, "alpha": 16.0})
    same_lora_spelt_out = TrainConfig(data="sst2", lr=5e-3, epochs=2.0, lora=saved.lora_config().to_dict())
    assert resume_changes(saved, same_lora_spelt_out) == {}
    new = TrainConfig(data="sst2", lr=5e-4, epochs=4.0, lora={"r": 8, "alpha": 16.0}, threads=1)
    assert resume_changes(saved, new) == {"lr": (5e-3, 5e-4), "epochs": (2.0, 4.0), "threads": (None, 1)}
    assert {"lr", "epochs", "max_steps", "eval_every", "max_grad_norm"} <= set(RESUMABLE_FIELDS)
    for field, value in [("seed", 1), ("batch_size", 4), ("data", "rte"), ("lora", {"r": 4}), ("warmup_ratio", 0.1)]:
        with pytest.raises(LoraLabError, match=f"--{field.replace('_', '-')} cannot change when resuming"):
            resume_changes(saved, TrainConfig(**{**saved.to_dict(), field: value}))
