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
    with pytest.raises(LoraLabError, match="unknown setting 'learning_rate'; did you mean 'lr'"):
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
    for field, value, named in [("seed", 1, "--seed"), ("batch_size", 4, "--batch-size"), ("data", "rte", "--data"),
                                ("lora", {"r": 4, "alpha": 16.0}, r"lora\.r"), ("warmup_ratio", 0.1, "--warmup-ratio"),
                                ("lora_plus_ratio", 16.0, "--lora-plus-ratio"),
                                ("scheduler_options", {"num_cycles": 0.25}, r"scheduler_options\.num_cycles")]:
        changed = {**saved.to_dict(), field: value, **({"scheduler": "cosine"} if field == "scheduler_options" else {})}
        with pytest.raises(LoraLabError, match=f"^{named} cannot change when resuming"):
            resume_changes(saved if field != "scheduler_options" else TrainConfig(**{**changed, field: {}}),
                           TrainConfig(**changed))


# -- limits checked before work (docs/reliability.md, "Limits checked before work") -----------------------------
@pytest.mark.parametrize("field, value, line", [
    ("seed", True, "seed must be an integer, got True"),
    ("seed", 1.5, "seed must be an integer, got 1.5"),
    ("seed", "0", "seed must be an integer, got '0'"),
    ("batch_size", True, "batch_size must be an integer, got True"),
    ("train_limit", False, "train_limit must be an integer or unset, got False"),   # False == 0 would mean "all"
    ("max_steps", True, "max_steps must be an integer or unset, got True"),
    ("epochs", True, "epochs must be a number, got True"),
    ("warmup_ratio", "0.1", "warmup_ratio must be a number, got '0.1'"),
    ("packing", 1, "packing must be true or false, got 1"),
    ("progress", "no", "progress must be true or false, got 'no'"),
])
def test_scalar_fields_hold_their_type_and_a_bool_is_not_an_int(field, value, line):
    with pytest.raises(LoraLabError) as caught:
        TrainConfig(data="sst2", **{field: value})
    assert str(caught.value) == line


def test_every_int_field_refuses_a_bool():
    from loralab.training.config import _scalar_fields

    ints = [name for name, (kind, _) in _scalar_fields().items() if kind is int]
    assert {"seed", "batch_size", "grad_accum", "max_steps", "threads", "checkpoint_every"} <= set(ints)
    for name in ints:
        with pytest.raises(LoraLabError, match=f"^{name} must be an integer"):
            TrainConfig(data="sst2", **{name: True})


def test_ints_stay_valid_numbers_and_none_stays_unset():
    config = TrainConfig(data="sst2", epochs=2, lr=1, seed=3, max_steps=None, max_grad_norm=None)
    assert (config.epochs, config.lr, config.seed, config.max_steps) == (2.0, 1.0, 3, None)
