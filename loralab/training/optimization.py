"""What updates the weights: AdamW over the trainable parameters, and the learning-rate schedule."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from loralab.errors import LoraLabError

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
    TrainConfig (lr, betas, eps, weight_decay)."""
    decay, skip = decay_groups(model)
    if not decay and not skip:
        raise LoraLabError("the model has no trainable parameters; inject an adapter first")
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": skip, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr, betas=config.betas, eps=config.eps)


def lr_factor(step: int, total_steps: int, warmup_steps: int, kind: str) -> float:
    """Learning-rate multiplier for the update at `step` (0-based): linear warm-up from 1/(warmup+1) to
    1 over `warmup_steps`, then linear or cosine decay to 0 at total_steps, or constant."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if kind == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(1.0, progress)
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int | Callable[[], int],
                    warmup_steps: int | Callable[[], int], kind: str) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR over `lr_factor`. total_steps / warmup_steps may be callables, read at every step, so a
    resumed run whose length was extended keeps the same scheduler object."""
    total = total_steps if callable(total_steps) else (lambda: total_steps)
    warmup = warmup_steps if callable(warmup_steps) else (lambda: warmup_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total(), warmup(), kind))


def set_peak_lr(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR,
                peak_lr: float) -> None:
    """Make `peak_lr` the schedule's base rate (after a checkpoint restored an older one) and set every
    group's current rate to what the schedule gives at the current step."""
    scheduler.base_lrs = [peak_lr] * len(optimizer.param_groups)
    current = [peak_lr * fn(scheduler.last_epoch) for fn in scheduler.lr_lambdas]
    for group, lr in zip(optimizer.param_groups, current):
        group["initial_lr"] = peak_lr
        group["lr"] = lr
    scheduler._last_lr = current
