"""Merging LoRA into a quantized base: W = dequantize(Q) + ΔW, then keep W in fp32 or quantize it again.

Re-quantizing adds the scheme's rounding error once more, and that error does not shrink with ΔW: where
ΔW is smaller than the quantization step (NF4's step is ~10 % of a block's absmax), much of the update
can round away. The report says how much: `delta_rel_error` = ‖Q(W) - W‖ / ‖ΔW‖.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from loralab.adapters.operations import merge_and_unload
from loralab.adapters.state import lora_layers
from loralab.errors import LoraLabError, choose
from loralab.quantization.base import QuantizedLinear
from loralab.quantization.model import as_linear, replace_layer

MODES = ("requantize", "dequantize")


@dataclass(frozen=True)
class MergeReport:
    """What merging into the quantized layers cost. err = W_stored - (W0 + ΔW), W0 the dequantized base;
    Frobenius norms are over all merged layers together."""
    mode: str
    layers: int
    max_abs_error: float          # max |err|
    rel_error: float              # ‖err‖ / ‖W0 + ΔW‖
    delta_rel_error: float        # ‖err‖ / ‖ΔW‖: the share of the adapters' update lost (0 for 'dequantize')


def merge_into_quantized(model: nn.Module, mode: str = "requantize") -> MergeReport:
    """Merge the active adapter into every quantized base layer and unload LoRA (as merge_and_unload).

    mode 'requantize': each merged weight is quantized again with its layer's scheme (memory kept, error
    added, reported). 'dequantize': merged layers become fp32 nn.Linear (exact to fp32 rounding). To keep
    the adapters as adapters instead, use dequantize_model(model) and then loralab.merge(model).
    """
    choose(mode, MODES, "merge mode")
    sums = {"err": 0.0, "weight": 0.0, "delta": 0.0, "max": 0.0}
    layers = 0
    for name, layer in lora_layers(model):
        quantized = layer.base_layer
        if not isinstance(quantized, QuantizedLinear):
            continue
        dense = as_linear(quantized)
        replace_layer(layer, "base_layer", dense)
        before = dense.weight.detach().clone()
        try:
            layer.merge()
        except ValueError as exc:
            raise LoraLabError(f"{name}: {exc}") from None
        merged = dense.weight.detach()
        err = torch.zeros_like(merged)
        if mode == "requantize":
            replace_layer(layer, "base_layer", quantized.scheme.quantize_weight(merged, dense.bias))
            err = layer.base_layer.dequantize(torch.float32) - merged
        _accumulate(sums, err, merged, merged - before)
        layers += 1
    if not layers:
        raise LoraLabError("no LoRA layer of this model has a quantized base; use loralab.merge instead")
    merge_and_unload(model)          # merges whatever else is adapted; quantized layers are merged already
    return MergeReport(mode, layers, sums["max"], math.sqrt(sums["err"] / max(sums["weight"], 1e-30)),
                       math.sqrt(sums["err"] / sums["delta"]) if sums["delta"] else 0.0)


def _accumulate(sums: dict, err: torch.Tensor, weight: torch.Tensor, delta: torch.Tensor) -> None:
    sums["err"] += float(err.double().square().sum())
    sums["weight"] += float(weight.double().square().sum())
    sums["delta"] += float(delta.double().square().sum())
    sums["max"] = max(sums["max"], float(err.abs().max()) if err.numel() else 0.0)
