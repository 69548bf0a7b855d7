"""bf16: frozen weights stored in bfloat16 (half of fp32's memory; 8 mantissa bits, relative rounding error
at most 2^-9 per weight). Products run in bf16 where it is native, else in fp32 from the stored bf16 values.
The input is rounded to bf16 for the product too; LoRA's own path stays in the input's dtype."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from loralab.quantization.base import DequantizingLinear, QuantScheme, register_scheme, resolve_compute_dtype


@register_scheme
@dataclass(frozen=True)
class BF16Scheme(QuantScheme):
    name: ClassVar[str] = "bf16"
    offered: ClassVar[bool] = False          # the commands spell it `--dtype bf16`, not `--quantize`

    def quantize_weight(self, weight: torch.Tensor, bias: torch.Tensor | None) -> "BF16Linear":
        return BF16Linear(weight.detach().to(torch.bfloat16).clone(), bias, self)

    def weight_bytes(self, d_out: int, d_in: int) -> int:
        return 2 * d_out * d_in


class BF16Linear(DequantizingLinear):
    """`weight16` (d, k) bf16."""

    def __init__(self, weight16: torch.Tensor, bias: torch.Tensor | None, scheme: BF16Scheme):
        super().__init__(weight16.shape[1], weight16.shape[0], bias, scheme)
        self.register_buffer("weight16", weight16)
        self.compute_dtype = resolve_compute_dtype("auto", weight16.device)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.weight16.to(dtype)

    def storage_bytes(self) -> int:
        return self.weight16.nbytes
