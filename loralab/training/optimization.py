"""What updates the weights: AdamW over the trainable parameters (with LoRA+'s faster B factors when
TrainConfig.lora_plus_ratio is set), and the learning-rate schedule (transformers' schedulers: linear, cosine,
cosine_with_restarts, polynomial, constant, each after a linear warm-up from 0)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from loralab.core.lora import LoraFactors
from loralab.errors import LoraLabError

# loralab's schedule names that transformers spells differently: warm-up is always --warmup-ratio's, so
# "constant" is transformers' constant_with_warmup (with no warm-up the two are the same).
TRANSFORMERS_NAMES = {"constant": "constant_with_warmup"}

# Normalisation layers whose weights are scales, not projections: never weight-decayed. Families that
# define their own norm class (LLaMA's RMSNorm) keep 1-D weights, which the rank rule already covers.
NORM_TYPES: tuple[type[nn.Module], ...] = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase,
                                           *([nn.RMSNorm] if hasattr(nn, "RMSNorm") else []))


def no_decay(param: nn.Parameter, owner: nn.Module) -> bool:
    """Parameters kept out of weight decay: vectors (biases, norm scales, DoRA magnitudes: all 1-D) and
    anything owned by a normalisation layer. Decided by tensor rank and module type, never by name."""
    return param.ndim < 2 or isinstance(owner, NORM_TYPES)


def decay_groups(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(matrices that get weight decay, parameters that do not), trainable only, in module order."""
    decay, skip, seen = [], [], set()
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            (skip if no_decay(param, module) else decay).append(param)
    return decay, skip


def build_optimizer(model: nn.Module, config) -> torch.optim.AdamW:
    """AdamW over the parameters that require grad; weight decay only on the matrices. `config` is a
    TrainConfig (lr, lora_plus_ratio, betas, eps, weight_decay)."""
    decay, skip = decay_groups(model)
    if not decay and not skip:
        raise LoraLabError("the model has no trainable parameters; inject an adapter first")
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": skip, "weight_decay": 0.0}]
    if config.lora_plus_ratio is not None:
        groups = lora_plus_groups(model, groups, config.lr, config.lora_plus_ratio)
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr, betas=config.betas, eps=config.eps)


# The key of a LoRA+ parameter group holding its peak rate as a multiple of the schedule's (TrainConfig.lr):
# set_peak_lr keeps it when a resumed run gets a new --lr. Groups without it run at the peak itself.
LR_RATIO = "lr_ratio"


def lora_b_factors(model: nn.Module) -> set[int]:
    """ids of the trainable LoRA B factors: found by module type (LoraFactors.B), never by name."""
    return {id(m.B) for m in model.modules() if isinstance(m, LoraFactors) and m.B.requires_grad}


def lora_plus_groups(model: nn.Module, groups: list[dict[str, Any]], lr: float,
                     ratio: float) -> list[dict[str, Any]]:
    """LoRA+ (Hayou et al. 2024): each weight-decay group split in two, the B factors and the vectors at
    lr × ratio (as PEFT's create_loraplus_optimizer groups them: lora_B or 1-D), the rest (A factors, task-head
    matrices) at lr. Weight decay stays as the groups have it (matrices only), so LoRA+ changes only rates."""
    fast = lora_b_factors(model)
    if not fast:
        raise LoraLabError("lora_plus_ratio raises the learning rate of LoRA's B factors, but the model trains "
                           "none; drop --lora-plus-ratio or inject a LoRA adapter")
    split = []
    for group in groups:
        is_fast = [id(p) in fast or p.ndim < 2 for p in group["params"]]
        split.append({**group, "params": [p for p, f in zip(group["params"], is_fast) if not f]})
        split.append({**group, "params": [p for p, f in zip(group["params"], is_fast) if f],
                      "lr": lr * ratio, LR_RATIO: ratio})
    return split


def warmup_steps(config: Any, total_steps: int) -> int:
    """Optimizer steps of linear warm-up in a run of `total_steps`: config.warmup_ratio of them, at most
    config.max_warmup_steps (a TrainConfig; unset cap: the ratio alone)."""
    steps = int(round(config.warmup_ratio * total_steps))
    return steps if config.max_warmup_steps is None else min(steps, config.max_warmup_steps)


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, kind: str,
                    options: dict[str, Any] | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """transformers' schedule `kind` (a loralab.training.config.SCHEDULERS name) over `total_steps` optimizer
    steps: the rate rises linearly from 0 over `warmup_steps`, then decays as the kind says. `options` are
    the kind's own settings (num_cycles, power, lr_end), passed to transformers.get_scheduler.

    Every kind is a LambdaLR whose state_dict holds only numbers, so checkpoints save it as JSON."""
    from transformers import get_scheduler

    name = TRANSFORMERS_NAMES.get(kind, kind)
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps,
                              scheduler_specific_kwargs=dict(options or {}))
    if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        raise LoraLabError(f"scheduler {kind!r} is not a step-wise schedule loralab can checkpoint")
    return scheduler


def set_peak_lr(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR,
                peak_lr: float) -> None:
    """Make `peak_lr` the schedule's base rate (after a checkpoint restored an older one) and set every
    group's current rate to what the schedule gives at the current step. A LoRA+ group keeps its ratio:
    its base rate is peak_lr × its LR_RATIO."""
    peaks = [peak_lr * group.get(LR_RATIO, 1.0) for group in optimizer.param_groups]
    scheduler.base_lrs = peaks
    current = [peak * fn(scheduler.last_epoch) for peak, fn in zip(peaks, scheduler.lr_lambdas)]
    for group, peak, lr in zip(optimizer.param_groups, peaks, current):
        group["initial_lr"] = peak
        group["lr"] = lr
    scheduler._last_lr = current
