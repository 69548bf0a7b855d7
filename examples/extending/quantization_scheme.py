"""Recipe: a quantization scheme for frozen bases. Copy this file, rename the classes and `name`, replace the
storage and `dequantize`.

The toy stores each weight in fp16 (2 bytes a value) and de-quantizes it per product (DequantizingLinear does
the autograd path). Once registered it is a choice of `--quantize` in every command, of TrainConfig.quantize,
of `loralab.quantize(model, "name")` and of `loralab budget`, with its own byte count.
Run: python examples/extending/quantization_scheme.py
"""
from typing import Any, ClassVar

import torch
from torch import nn

from loralab import LoraConfig, inject
from loralab.quantization import SCHEMES, QuantScheme, quantize, register_scheme
from loralab.quantization.base import DequantizingLinear


class Half(QuantScheme):
    name: ClassVar[str] = "half"     # --quantize half

    def quantize_weight(self, weight: torch.Tensor, bias: torch.Tensor | None) -> "HalfLinear":
        return HalfLinear(weight.detach().to(torch.float16).clone(), bias, self)

    def weight_bytes(self, d_out: int, d_in: int) -> int:
        return 2 * d_out * d_in                    # what `loralab budget --quantize half` counts

    def bitsandbytes_options(self) -> dict[str, Any] | None:
        return None                                # no bitsandbytes export for this storage


class HalfLinear(DequantizingLinear):
    def __init__(self, weight16: torch.Tensor, bias: torch.Tensor | None, scheme: Half):
        super().__init__(weight16.shape[1], weight16.shape[0], bias, scheme)
        self.register_buffer("weight16", weight16)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.weight16.to(dtype)

    def storage_bytes(self) -> int:
        return self.weight16.nbytes


def demo() -> float:
    """Registers the scheme for the demo only; returns max |quantized model + LoRA - fp32 model| at step 0."""
    with SCHEMES.scoped():
        register_scheme(Half)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
        x = torch.randn(3, 16)
        expected = model(x)
        quantize(model, "half")
        inject(model, LoraConfig(targets=["0", "2"], r=2))      # LoRA wraps the quantized layers
        return (model(x) - expected).abs().max().item()          # fp16 rounding of W0 only


if __name__ == "__main__":
    print(f"max |half + LoRA - fp32| = {demo():.2e}")
