"""The paper's baselines, in the same training harness as LoRA (Hu et al. 2021, §5.1).

    from loralab.baselines import METHODS, count_trainable
    model = METHODS["houlsby"](model, bottleneck=16)     # in place; only the method's parameters train
    count_trainable(model)                                # exact number of trainable values

Each `prepare(model, **options) -> model` works in place, leaves exactly the method's parameters (plus
the task head) with requires_grad=True, and keeps the model's forward signature:

    full      every parameter                                       (no options)
    bitfit    every bias + head                                     head=
    houlsby   2 bottleneck adapters per block + head                bottleneck=16, activation="gelu", ...
    prefix    L·2·l·d_kv key/value prefix values + head             length=10, init_std=0.02, ...
    lora      loralab.inject with LoraConfig(**options) + head      r=8, alpha=16, targets=..., ...
    intrinsic z (d values): θ = θ0 + P·z, P a random Fastfood      d=, seed=0, train_head=False, exclude=()
              projection of all D parameters (Aghajanyan et al. 2020)
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from loralab import LoraConfig, inject
from loralab.baselines.bitfit import bias_parameters, prepare_bitfit
from loralab.baselines.common import count_all, count_trainable, freeze_all, head_modules, train_head
from loralab.baselines.fastfood import FastfoodProjection, fastfood_projection, fwht, hadamard
from loralab.baselines.full import prepare_full
from loralab.baselines.houlsby import houlsby_param_count, prepare_houlsby, set_houlsby_enabled
from loralab.baselines.intrinsic import IntrinsicSubspace, prepare_intrinsic, subspace_of
from loralab.baselines.prefix import (prefix_disabled, prefix_param_count, prepare_prefix, remove_prefix,
                                      set_prefix_enabled)


def prepare_lora(model: nn.Module, head: Sequence[str] | None = None, adapter: str = "default",
                 **config: object) -> nn.Module:
    """loralab.inject(model, LoraConfig(**config)), with the preset's task head added to modules_to_save
    when the config names none, so LoRA trains the head like every other method here."""
    if "modules_to_save" not in config:
        config["modules_to_save"] = list(head_modules(model, head))
    return inject(model, LoraConfig(**config), adapter=adapter)


METHODS: dict[str, Callable[..., nn.Module]] = {
    "full": prepare_full,
    "bitfit": prepare_bitfit,
    "houlsby": prepare_houlsby,
    "prefix": prepare_prefix,
    "lora": prepare_lora,
    "intrinsic": prepare_intrinsic,
}

__all__ = [
    "FastfoodProjection", "IntrinsicSubspace", "METHODS", "fastfood_projection", "fwht", "hadamard",
    "prepare_intrinsic", "subspace_of", "bias_parameters", "count_all", "count_trainable", "freeze_all", "head_modules",
    "houlsby_param_count", "prefix_disabled", "prefix_param_count", "prepare_bitfit", "prepare_full",
    "prepare_houlsby", "prepare_lora", "prepare_prefix", "remove_prefix", "set_houlsby_enabled",
    "set_prefix_enabled", "train_head",
]
