"""Recipe: a LoRA variant. Copy this file, rename the class and `name`, change the hooks.

A toy that shows every hook that matters: the update enters with the opposite sign, h = W0·x − s·B·A·x, in the
forward and in the merge alike (a variant's forward and merge must agree; the demo checks they do).
Run: python examples/extending/variant.py
"""
import torch

from loralab import LoraConfig, inject, lora_layers, merge
from loralab.core.variants import VARIANTS, Variant, register_variant


class Negated(Variant):
    name = "negated"            # LoraConfig(variant="negated")
    combinable = False          # its update is not plain B·A: per-row batches run its own forward

    def forward(self, layer, f, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return 2 * out - layer.add_lora(f, f.dropout(x), out.clone())

    def merge(self, layer, f) -> None:
        layer.add_to_weight(-f.delta_weight())

    def unmerge(self, layer, f) -> None:
        layer.add_to_weight(f.delta_weight())


def demo() -> float:
    """Registers the variant for the demo only; returns max |forward - forward after merge|."""
    with VARIANTS.scoped():                     # the registry is restored afterwards
        register_variant(Negated)
        model = torch.nn.Sequential(torch.nn.Linear(8, 8))
        inject(model, LoraConfig(targets=["0"], r=2, variant="negated"))
        factors = next(lora_layers(model))[1].lora_adapters["default"]
        with torch.no_grad():
            factors.B.normal_()                 # as if B had trained
        x = torch.randn(3, 8)
        before = model(x)
        merge(model)
        return (model(x) - before).abs().max().item()


if __name__ == "__main__":
    print(f"max |unmerged - merged| = {demo():.2e}")
