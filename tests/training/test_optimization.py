"""Optimisation: the learning-rate schedule, weight-decay groups decided by tensor rank and module type, and
setting a new peak rate on a restored scheduler."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import loralab
from loralab.training.config import TrainConfig
from loralab.training.optimization import build_optimizer, build_scheduler, lr_factor, set_peak_lr


def test_lr_schedule_warmup_then_linear_and_cosine_decay():
    assert [lr_factor(s, 10, 4, "linear") for s in range(4)] == [0.2, 0.4, 0.6, 0.8]
    assert lr_factor(4, 10, 4, "linear") == 1.0
    assert lr_factor(7, 10, 4, "linear") == pytest.approx(0.5)
    assert lr_factor(10, 10, 4, "linear") == 0.0
    assert lr_factor(7, 10, 4, "cosine") == pytest.approx(0.5)
    assert lr_factor(5, 10, 4, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi / 6)))
    assert lr_factor(9, 10, 0, "constant") == 1.0


def test_optimizer_holds_only_trainable_params_and_skips_decay_on_biases_and_magnitudes():
    from loralab.testing import tiny_model

    model = tiny_model("bert")
    loralab.inject(model, loralab.LoraConfig(r=4, dora=True, bias="lora_only", modules_to_save=["classifier"]))
    optimizer = build_optimizer(model, TrainConfig(data="sst2", weight_decay=0.1))
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = [names[id(p)] for g in optimizer.param_groups if g["weight_decay"] == 0.1 for p in g["params"]]
    plain = [names[id(p)] for g in optimizer.param_groups if g["weight_decay"] == 0.0 for p in g["params"]]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(decayed) | set(plain) == trainable
    assert len(decayed) + len(plain) == len(trainable)
    assert any("magnitude" in n for n in plain) and any(n.endswith("bias") for n in plain)
    assert all(not n.endswith("bias") and "magnitude" not in n for n in decayed)
    assert any(".A" in n or "lora" in n.lower() for n in decayed)



def test_decay_is_decided_by_rank_and_module_type_not_by_name():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm_projection = nn.Parameter(torch.ones(3, 3))   # a matrix whose name says "norm"
            self.magnitude_table = nn.Parameter(torch.ones(2, 4))   # ... and one that says "magnitude"
            self.scale = nn.Parameter(torch.ones(3))                  # a vector with a plain name
            self.ln = nn.LayerNorm(3)

    model = Odd()
    optimizer = build_optimizer(model, TrainConfig(data="sst2", weight_decay=0.1))
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 0.1 for p in g["params"]}
    assert decayed == {id(model.norm_projection), id(model.magnitude_table)}
    assert sum(len(g["params"]) for g in optimizer.param_groups) == 5


def test_set_peak_lr_rescales_the_current_step_of_a_restored_schedule():
    param = nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([param], lr=1e-2)
    scheduler = build_scheduler(optimizer, 10, 2, "linear")
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    before = optimizer.param_groups[0]["lr"]
    set_peak_lr(optimizer, scheduler, 1e-2)
    assert optimizer.param_groups[0]["lr"] == before      # same peak: bitwise the same rate
    set_peak_lr(optimizer, scheduler, 1e-3)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(before / 10)
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * lr_factor(6, 10, 2, "linear"))
