"""Trainable parameters of a LoRA config on a model skeleton, in total and per adapted module type.

All counting goes through `planned_modules`, which asks the surgery code (`plan_injection`, the dry
run of `inject`) what it would adapt. The budget never decides targets itself, so its numbers are
exactly those of a real injection.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

import loralab
from loralab.surgery.inject import resolve_config as resolve

_SLICE_NAMES = {3: ("q", "k", "v")}


def _core():
    """plan_injection and LoraConfig from the public package when it exports them, else from surgery."""
    plan = getattr(loralab, "plan_injection", None)
    config_cls = getattr(loralab, "LoraConfig", None)
    if plan is None or config_cls is None:
        from loralab.surgery.config import LoraConfig as config_cls
        from loralab.surgery.inject import plan_injection as plan
    return plan, config_cls


def lora_config_class() -> type:
    return _core()[1]


def resolve_config(model: nn.Module, lora_config):
    """The config as inject stores it (preset targets filled in): what save_adapter records."""
    return resolve(model, lora_config)


def planned_modules(model: nn.Module, lora_config) -> list:
    """Every layer LoRA would adapt (loralab's PlannedModule: name, kind, d_out, d_in, r, alpha,
    num_params, slices, slice_widths). The single place where the budget asks what gets adapted."""
    plan, _ = _core()
    return plan(model, lora_config)


@dataclass(frozen=True)
class ModuleTypeCount:
    """All adapted modules that differ only in their layer index, e.g. "encoder.layer.*.attention.self.query"."""
    module_type: str           # name pattern, layer indices replaced by "*"; "[q]" marks a fused slice
    count: int                 # how many modules of this type
    d_out: int                 # ΔW rows of one module (one slice's rows for a fused slice)
    d_in: int                  # ΔW columns
    r: int
    params: int                # trainable LoRA values of all `count` modules together

    def to_dict(self) -> dict:
        return dict(module_type=self.module_type, count=self.count, d_out=self.d_out, d_in=self.d_in, r=self.r,
                    params=self.params)


def _type_name(name: str) -> str:
    return re.sub(r"(?<=\.)\d+(?=\.|$)|^\d+(?=\.)", "*", name)


def by_module_type(plan: list, dora: bool = False) -> list[ModuleTypeCount]:
    """Group a plan by module type, keeping first-seen order. A fused projection adapted slice by
    slice (GPT-2's c_attn) is shown one row per slice, so the paper's Wq and Wv appear separately;
    slice i's ΔW is d_i × d_in of rank r and costs r·(d_i + d_in). With a variant's extra parameters
    (dora=True, or any count beyond the slices') the projection stays one row."""
    groups: dict[tuple, list[int]] = {}
    for m in plan:
        per_slice = [m.r * (w + m.d_in) for w in m.slice_widths] if m.slices else []
        if m.slices and not dora and sum(p for p, on in zip(per_slice, m.slices) if on) == m.num_params:
            n = len(m.slices)
            labels = _SLICE_NAMES.get(n, tuple(str(i) for i in range(n)))
            for label, on, width, params in zip(labels, m.slices, m.slice_widths, per_slice):
                if on:
                    key = (f"{_type_name(m.name)} [{label}]", width, m.d_in, m.r)
                    groups.setdefault(key, [0, 0])
                    groups[key][0] += 1
                    groups[key][1] += params
        else:
            key = (_type_name(m.name) + (" [slices]" if m.slices else ""), m.d_out, m.d_in, m.r)
            groups.setdefault(key, [0, 0])
            groups[key][0] += 1
            groups[key][1] += m.num_params
    return [ModuleTypeCount(k[0], v[0], k[1], k[2], k[3], v[1]) for k, v in groups.items()]


def rank_total(m) -> int:
    """Rows of a planned module's A: r, or r per adapted slice of a fused projection."""
    return m.r * (sum(m.slices) if m.slices else 1)


def bias_parameters(model: nn.Module, plan: list, bias_mode: str) -> int:
    """Bias values that also train (and are saved) under LoraConfig.bias: "none", "all" (every
    parameter named *.bias) or "lora_only" (the biases of the adapted layers)."""
    if bias_mode == "none":
        return 0
    if bias_mode == "all":
        return sum(p.numel() for n, p in model.named_parameters() if n.endswith("bias"))
    total = 0
    for m in plan:
        bias = getattr(model.get_submodule(m.name), "bias", None)
        if isinstance(bias, nn.Parameter):
            total += bias.numel()
    return total
