"""Optimisation: the learning-rate schedule, weight-decay groups decided by tensor rank and module type, and
setting a new peak rate on a restored scheduler."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import loralab
import loralab.core.lora
import loralab.testing
from loralab.errors import LoraLabError
from loralab.training.config import TrainConfig
from loralab.training.optimization import build_optimizer, build_scheduler, decay_groups, set_peak_lr, warmup_steps
from loralab.training.state_files import optimizer_files, optimizer_state


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


# LoRA+ (Hayou et al. 2024): B factors (and vectors, as PEFT groups them) at lr × lora_plus_ratio.

def _lora_model():
    from loralab.testing import tiny_model

    model = tiny_model("bert")
    loralab.inject(model, loralab.LoraConfig(r=4, dora=True, bias="lora_only", modules_to_save=["classifier"]))
    return model


def _b_and_a(model):
    factors = [m for m in model.modules() if isinstance(m, loralab.core.lora.LoraFactors)]
    return {id(f.B) for f in factors}, {id(f.A) for f in factors}


def test_lora_plus_puts_b_factors_and_vectors_at_ratio_times_lr_and_a_factors_at_lr():
    model = _lora_model()
    optimizer = build_optimizer(model, TrainConfig(data="sst2", lr=1e-3, weight_decay=0.1, lora_plus_ratio=16))
    rate = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    b_ids, a_ids = _b_and_a(model)
    trainable = {id(p): p for p in model.parameters() if p.requires_grad}
    assert set(rate) == set(trainable) and sum(len(g["params"]) for g in optimizer.param_groups) == len(trainable)
    assert {rate[i] for i in b_ids} == {1e-3 * 16} and {rate[i] for i in a_ids} == {1e-3}
    vectors = {i for i, p in trainable.items() if p.ndim < 2}     # biases, DoRA magnitudes, the head's bias
    assert vectors and {rate[i] for i in vectors} == {1e-3 * 16} and {decay[i] for i in vectors} == {0.0}
    head_matrices = set(trainable) - b_ids - a_ids - vectors     # the classifier's weights: lr, as in PEFT
    assert head_matrices and {rate[i] for i in head_matrices} == {1e-3}
    assert {decay[i] for i in b_ids | a_ids | head_matrices} == {0.1}    # decay as without LoRA+


def test_lora_plus_is_off_by_default_groups_and_two_steps_bitwise_as_before():
    assert TrainConfig(data="sst2").lora_plus_ratio is None

    def two_steps(make_optimizer):
        model = _lora_model()
        loralab.testing.randomize_trainable(model, seed=3)
        optimizer = make_optimizer(model)
        scheduler = build_scheduler(optimizer, 4, 1, "linear")
        inputs = loralab.testing.tiny_inputs(model)
        for _ in range(2):
            model(**inputs).logits.square().sum().backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        return optimizer, [p.detach().clone() for p in model.parameters() if p.requires_grad]

    config = TrainConfig(data="sst2", weight_decay=0.1)

    def before(model):      # the optimizer as loralab built it before LoRA+ existed
        decay, skip = decay_groups(model)
        return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": skip, "weight_decay": 0.0}],
                                 lr=config.lr, betas=config.betas, eps=config.eps)

    off, trained = two_steps(lambda model: build_optimizer(model, config))
    reference, expected = two_steps(before)
    assert [len(g["params"]) for g in off.param_groups] == [len(g["params"]) for g in reference.param_groups]
    assert [{k: v for k, v in g.items() if k != "params"} for g in off.param_groups] == \
        [{k: v for k, v in g.items() if k != "params"} for g in reference.param_groups]
    assert all(torch.equal(a, b) for a, b in zip(trained, expected))     # bitwise


def test_the_schedule_keeps_the_lora_plus_ratio_at_every_step_and_after_a_new_peak():
    model = _lora_model()
    optimizer = build_optimizer(model, TrainConfig(data="sst2", lr=1e-3, lora_plus_ratio=16))
    scheduler = build_scheduler(optimizer, 10, 3, "cosine")
    b_ids, a_ids = _b_and_a(model)
    fast = [g for g in optimizer.param_groups if b_ids & {id(p) for p in g["params"]}]
    slow = [g for g in optimizer.param_groups if a_ids & {id(p) for p in g["params"]}]
    assert len(fast) == len(slow) == 1
    seen = []
    for step in range(10):
        seen.append((slow[0]["lr"], fast[0]["lr"]))
        optimizer.step()
        scheduler.step()
        if step == 5:
            set_peak_lr(optimizer, scheduler, 5e-4)        # a resumed run's new --lr keeps the ratio
            assert (slow[0]["initial_lr"], fast[0]["initial_lr"]) == (5e-4, 5e-4 * 16)
    assert seen[0] == (0.0, 0.0) and seen[3] == (1e-3, 1e-3 * 16)      # warm-up, then the peaks
    assert all(b == pytest.approx(16 * a, rel=1e-12) and a > 0 for a, b in seen[1:])
    assert seen[7][0] == pytest.approx(5e-4 * 0.5 * (1 + math.cos(math.pi * 4 / 7)))


def test_lora_plus_moves_b_ratio_times_as_far_on_the_first_step():
    model = _lora_model()
    optimizer = build_optimizer(model, TrainConfig(data="sst2", lr=1e-3, weight_decay=0.0, eps=1e-12,
                                                   lora_plus_ratio=16))
    loralab.testing.randomize_trainable(model, seed=3)
    b = next(m.B for m in model.modules() if isinstance(m, loralab.core.lora.LoraFactors))
    a = next(m.A for m in model.modules() if isinstance(m, loralab.core.lora.LoraFactors))
    b0, a0 = b.detach().clone(), a.detach().clone()
    model(**loralab.testing.tiny_inputs(model)).logits.square().sum().backward()
    optimizer.step()       # Adam's first step moves each entry by its rate (m/√v = ±1)
    assert (b - b0).abs().max().item() == pytest.approx(16e-3, rel=1e-4)
    assert (a - a0).abs().max().item() == pytest.approx(1e-3, rel=1e-4)


@pytest.mark.parametrize("value", [0, -2.0, float("inf"), float("nan"), "16"])
def test_a_bad_lora_plus_ratio_is_one_line(value):
    with pytest.raises(LoraLabError) as error:
        TrainConfig(data="sst2", lora_plus_ratio=value)
    wanted = "a number or unset" if isinstance(value, str) else \
        "a positive ratio of B's learning rate to A's (LoRA+ suggests 16; unset for off)"
    given = value if isinstance(value, str) else float(value)      # 0 from a file is stored as 0.0
    assert str(error.value) == f"lora_plus_ratio must be {wanted}, got {given!r}"


def test_lora_plus_needs_lora_b_factors():
    with pytest.raises(LoraLabError) as error:
        TrainConfig(data="sst2", method="full", lora_plus_ratio=16)
    assert str(error.value) == ("lora_plus_ratio raises the learning rate of LoRA's B factors; method 'full' has "
                                "none (drop --lora-plus-ratio, or use method lora)")
    with pytest.raises(LoraLabError) as error:
        build_optimizer(nn.Linear(3, 3), TrainConfig(data="sst2", lora_plus_ratio=16))
    assert str(error.value) == ("lora_plus_ratio raises the learning rate of LoRA's B factors, but the model "
                                "trains none; drop --lora-plus-ratio or inject a LoRA adapter")


def test_lora_plus_groups_survive_the_checkpoint_files_and_keep_their_ratio():
    model = _lora_model()
    config = TrainConfig(data="sst2", lr=1e-3, lora_plus_ratio=16)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, 10, 2, "linear")
    model(**loralab.testing.tiny_inputs(model)).logits.square().sum().backward()
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    tensors, meta = optimizer_files(optimizer.state_dict())
    meta = json.loads(json.dumps(meta))                       # what checkpoints/step-N/optimizer.json holds
    restored = build_optimizer(model, config)
    restored_scheduler = build_scheduler(restored, 10, 2, "linear")
    restored.load_state_dict(optimizer_state(tensors, meta))
    restored_scheduler.load_state_dict(json.loads(json.dumps(scheduler.state_dict())))
    set_peak_lr(restored, restored_scheduler, config.lr)      # what a resume does
    assert [g["lr"] for g in restored.param_groups] == [g["lr"] for g in optimizer.param_groups]   # bitwise


def test_warmup_is_the_ratio_of_the_run_capped_in_steps():
    config = TrainConfig(data="sst2")
    assert (config.warmup_ratio, config.max_warmup_steps) == (0.06, 10)
    assert warmup_steps(config, 100) == 6                     # 6 % of a short run, under the cap
    assert warmup_steps(config, 12_630) == 10                 # 758 by the ratio, capped
    assert warmup_steps(TrainConfig(data="sst2", max_warmup_steps=None), 12_630) == 758
    assert warmup_steps(TrainConfig(data="sst2", max_warmup_steps=0), 12_630) == 0
    with pytest.raises(LoraLabError, match="max_warmup_steps must be 0 or more"):
        TrainConfig(data="sst2", max_warmup_steps=-1)
