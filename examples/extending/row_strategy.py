"""Recipe: a per-row strategy — how a mixed batch (row i uses adapter names[i]) adds each row's update.
Copy this file, rename the class and `name`, write `apply` and `cost`.

The toy runs each row through its own adapter, one at a time: slow and plainly right. `cost` prices it in units
of tokens × summed rank against loralab.core.rows.RowCosts; math.inf keeps it out of the automatic choice, so
it runs only when asked for by name (per_row_adapters(model, names, strategy="row-by-row")).
Run: python examples/extending/row_strategy.py
"""
import math

import torch
from torch import nn

from loralab import LoraConfig, disabled, inject, lora_layers, per_row_adapters, set_adapter
from loralab.core.rows import ROW_STRATEGIES, RowStrategy, register_row_strategy


class RowByRow(RowStrategy):
    name = "row-by-row"

    def cost(self, work, costs) -> float:
        return math.inf                            # never chosen automatically

    def apply(self, layer, plan, x: torch.Tensor, out: torch.Tensor, used, repeat: int) -> torch.Tensor:
        rows = []
        for i, name in enumerate(plan.row_names(repeat)):
            row = out[i:i + 1]
            if name in used:                       # None (the base) and adapters this layer lacks add nothing
                f = layer.lora_adapters[name]
                row = f.variant.forward(layer, f, x[i:i + 1], row.clone())
            rows.append(row)
        return torch.cat(rows)


def demo() -> float:
    """Registers the strategy for the demo only; returns max |mixed batch - each row run with its adapter|."""
    with ROW_STRATEGIES.scoped():
        register_row_strategy(RowByRow)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 8))
        for name in ("a", "b"):
            inject(model, LoraConfig(targets=["0"], r=2), adapter=name)
        with torch.no_grad():                      # as if both adapters had trained
            for _, layer in lora_layers(model):
                for f in layer.lora_adapters.values():
                    f.B.normal_()
        x, names = torch.randn(3, 8), ["a", None, "b"]
        with torch.no_grad(), per_row_adapters(model, names, strategy="row-by-row"):
            mixed = model(x)
        alone = []
        for i, name in enumerate(names):
            if name is None:
                with torch.no_grad(), disabled(model):
                    alone.append(model(x[i:i + 1]))
            else:
                set_adapter(model, name)
                with torch.no_grad():
                    alone.append(model(x[i:i + 1]))
        return (mixed - torch.cat(alone)).abs().max().item()


if __name__ == "__main__":
    print(f"max |mixed - alone| = {demo():.2e}")
