"""The layer kind that lets LoRA wrap a quantized frozen Linear exactly like an nn.Linear.

LoRA's math sees W0 through the kind (`loralab.core.kinds`): the matrix view is the dequantized weight
(d_out, d_in) in fp32, the adapter's A·x and s·B·(A·x) run in full precision on top of the quantized base
output. Merging goes through `loralab.quantization.merge_into_quantized`, which dequantizes first: an
in-place W0 += ΔW on packed codes has no meaning, so the kind refuses it with that hint.
"""
from __future__ import annotations

import torch

from loralab.core.kinds import LinearKind, register_kind
from loralab.quantization.base import QuantizedLinear

IN_PLACE_ERROR = ("W0 of a quantized layer cannot change in place: merge with "
                  "loralab.quantization.merge_into_quantized(model, mode='dequantize' or 'requantize'), "
                  "and initialise PiSSA before quantizing")


@register_kind(QuantizedLinear)
class QuantizedLinearKind(LinearKind):
    """A Linear's kind ('all-linear' selects it; A·x and B·a are a Linear's products) whose
    W0 is the dequantized weight."""

    def shape(self, layer: QuantizedLinear) -> tuple[int, int]:
        return (layer.out_features, layer.in_features)

    def weight(self, layer: QuantizedLinear) -> torch.Tensor:
        """A dequantized fp32 copy (d_out, d_in): adapters built on it are fp32 on the layer's device."""
        return layer.dequantize(torch.float32)

    def weight_matrix(self, layer: QuantizedLinear) -> torch.Tensor:
        return layer.dequantize(torch.float32)

    def check_merge(self, layer: QuantizedLinear) -> None:
        raise ValueError(IN_PLACE_ERROR)

    def to_weight_layout(self, layer: QuantizedLinear, delta: torch.Tensor) -> torch.Tensor:
        raise ValueError(IN_PLACE_ERROR)
