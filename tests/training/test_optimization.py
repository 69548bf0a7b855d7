"""Optimisation: the learning-rate schedule, weight-decay groups decided by tensor rank and module type, and
setting a new peak rate on a restored scheduler."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import loralab
from loralab.training.config import TrainConfig
from loralab.errors import LoraLabError
from loralab.training.optimization import build_optimizer, build_scheduler, set_peak_lr


def _rates(kind: str, total: int = 10, warmup: int = 4, options=None, steps: int | None = None) -> list[float]:
    """The multiplier of the peak rate used by each of the run's updates (0-based step)."""
    optimizer = torch.optim.AdamW([nn.Parameter(torch.zeros(2))], lr=1.0)
    scheduler = build_scheduler(optimizer, total, warmup, kind, options)
    rates = []
    for _ in range(total if steps is None else steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_warmup_starts_at_zero_then_each_schedule_decays_as_transformers_does():
    # warm-up: step/warmup, from 0 (transformers' schedulers; loralab 0.1 started at 1/(warmup+1))
    assert _rates("linear")[:5] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert _rates("linear")[5:] == pytest.approx([5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])
    cosine = [0.5 * (1 + math.cos(math.pi * (s - 4) / 6)) for s in range(4, 10)]
    assert _rates("cosine")[4:] == pytest.approx(cosine)
    assert _rates("constant") == pytest.approx([0.0, 0.25, 0.5, 0.75] + [1.0] * 6)
    assert _rates("constant", warmup=0) == [1.0] * 10
    # polynomial: (1 - lr_end) * (1 - progress) ** power + lr_end, progress over the steps after warm-up
    poly = _rates("polynomial", options={"power": 2.0, "lr_end": 0.1})
    assert poly[4:] == pytest.approx([(0.9 * (1 - (s - 4) / 6) ** 2 + 0.1) for s in range(4, 10)])
    # cosine with restarts: num_cycles hard restarts over the steps after warm-up
    restarts = _rates("cosine_with_restarts", total=12, warmup=0, options={"num_cycles": 2})
    assert restarts[0] == 1.0 and restarts[6] == 1.0 and restarts[3] == pytest.approx(0.5)
    assert restarts[:6] == pytest.approx(restarts[6:])


def test_scheduler_names_options_and_their_errors():
    assert TrainConfig(data="sst2", scheduler="cosine-with-restarts").scheduler == "cosine_with_restarts"
    assert TrainConfig(data="sst2", scheduler="constant_with_warmup").scheduler == "constant"
    half = _rates("cosine", total=8, warmup=0, options={"num_cycles": 0.25})
    # 0.5 * (1 + cos(2 pi num_cycles progress)): a quarter cycle ends at half the peak rate
    assert half[4] == pytest.approx(0.5 * (1 + math.cos(2 * math.pi * 0.25 * 0.5)))
    with pytest.raises(LoraLabError, match=r"scheduler_options \['power'\] do not apply to the cosine schedule"):
        TrainConfig(data="sst2", scheduler="cosine", scheduler_options={"power": 2})
    with pytest.raises(LoraLabError, match="unknown scheduler 'step'; choose one of linear, cosine"):
        TrainConfig(data="sst2", scheduler="step")


def test_scheduler_state_is_plain_json_and_restores_the_same_rates():
    optimizer = torch.optim.AdamW([nn.Parameter(torch.zeros(2))], lr=1e-2)
    scheduler = build_scheduler(optimizer, 20, 3, "polynomial", {"power": 2.0})
    for _ in range(7):
        optimizer.step()
        scheduler.step()
    saved = json.loads(json.dumps(scheduler.state_dict()))   # what checkpoints/step-N/scheduler.json holds
    later = []
    for _ in range(5):
        optimizer.step()
        scheduler.step()
        later.append(optimizer.param_groups[0]["lr"])
    fresh_optimizer = torch.optim.AdamW([nn.Parameter(torch.zeros(2))], lr=1e-2)
    restored = build_scheduler(fresh_optimizer, 20, 3, "polynomial", {"power": 2.0})
    restored.load_state_dict(saved)
    fresh_optimizer.param_groups[0]["lr"] = restored.get_last_lr()[0]
    again = []
    for _ in range(5):
        fresh_optimizer.step()
        restored.step()
        again.append(fresh_optimizer.param_groups[0]["lr"])
    assert again == later       # bitwise


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
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * (10 - 6) / (10 - 2))
