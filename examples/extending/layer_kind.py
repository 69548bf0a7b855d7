"""Recipe: a layer kind — teach loralab a layer type it does not know. Copy this file, replace the layer and the
kind's methods that differ from a layer storing W0 as (d_out, d_in).

The toy layer stores its weight transposed, W (d_in, d_out), and computes x·W (as GPT-2's Conv1D does). LoRA
needs only the matrix view W0 (d, k); `weight_matrix` gives it and `to_weight_layout` maps a ΔW back.
Run: python examples/extending/layer_kind.py
"""
import torch
from torch import nn

from loralab import LoraConfig, inject, lora_layers, merge
from loralab.core.kinds import KINDS, LayerKind, register_kind


class TransposedLinear(nn.Module):
    """out = x·W + b with W stored (d_in, d_out)."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d_in, d_out) * 0.3)
        self.bias = nn.Parameter(torch.zeros(d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight + self.bias


class TransposedLinearKind(LayerKind):
    name = "transposed-linear"
    is_linear = True                # counts for targets="all-linear"; DoRA accepts it
    fan_in_fan_out = True           # PEFT's flag for layers that store Wᵀ

    def weight_matrix(self, layer: TransposedLinear) -> torch.Tensor:
        return layer.weight.T                       # (d_out, d_in): the matrix view W0

    def to_weight_layout(self, layer: TransposedLinear, delta: torch.Tensor) -> torch.Tensor:
        return delta.T                              # a ΔW (d_out, d_in) in the layer's own storage


def demo() -> float:
    """Registers the kind for the demo only; returns max |forward - forward after merge| with a trained-looking B."""
    with KINDS.scoped():
        register_kind(TransposedLinear)(TransposedLinearKind)
        model = nn.Sequential(TransposedLinear(8, 6))
        inject(model, LoraConfig(targets=["0"], r=2))
        factors = next(lora_layers(model))[1].lora_adapters["default"]
        with torch.no_grad():
            factors.B.normal_()
        x = torch.randn(3, 8)
        before = model(x)
        merge(model)                                # W0 + s·B·A written through to_weight_layout
        return (model(x) - before).abs().max().item()


if __name__ == "__main__":
    print(f"max |unmerged - merged| = {demo():.2e}")
