"""int8: per-output-channel symmetric int8 weights, W0 ≈ diag(scale)·Q with Q in [-127, 127].

Rounding to the nearest step scale_i = max_j |W0[i, j]| / 127 moves each weight by at most scale_i / 2,
so each entry moves by at most 1/254 of its row's largest entry (0.7 % relative error on Gaussian rows).

On x86 CPUs the products run on fbgemm's int8 kernels (`torch.ops.quantized.linear_dynamic`): the input is
quantized on the fly to 8 bits, multiplied in int8 with int32 accumulation, and rescaled per output
channel. On this project's CPU that was 3.4x faster than the fp32 matmul for a 384->1536 layer over 2,048
tokens (see docs/precision.md). The input quantization adds its own error (about 1 % relative on Gaussian
inputs); rows are scaled to max 1 before it, so that it is per token (`_int8_product`).

Those kernels have no autograd, and a frozen layer still needs dL/dx = g·W0 for earlier adapters. With
`transposed_copy=True` a second packed int8 matrix holds W0ᵀ (re-quantized per column from the dequantized
W0, so it is a function of the stored weight alone) and the backward runs on the int8 kernel too; with
False the backward unpacks Q and multiplies in bf16: half the memory, a ~10 % slower MiniLM step on this
CPU (native bf16), so 'auto' keeps the copy only where bf16 is not native (there the backward is fp32).
Elsewhere (no fbgemm, or a GPU) the layer dequantizes to `compute_dtype` and multiplies.

`torch.ops.quantized` and quantized tensors are deprecated in torch 2.13 but present; when they go, the
dequantizing path (`Int8Linear`) still works, only slower.
"""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from loralab.errors import LoraLabError
from loralab.quantization.base import (DequantizingLinear, QuantScheme, check_compute_dtype, native_bf16,
                                       register_scheme, resolve_compute_dtype)

QMAX = 127


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q int8 (d, k), scale fp32 (d,)) with weight ≈ scale[:, None]·Q, symmetric, nearest rounding."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1) / QMAX
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))     # an all-zero row: any scale is exact
    q = torch.round(w / scale[:, None]).clamp_(-QMAX, QMAX).to(torch.int8)
    return q, scale


def dequantize_per_channel(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """scale[:, None]·Q as a (d, k) tensor of `dtype` (int8 values are exact in bf16 too)."""
    return q.to(dtype) * scale.to(dtype)[:, None]


@functools.cache
def fbgemm_available() -> bool:
    """True where torch's x86 int8 kernels (fbgemm) back torch.ops.quantized.linear_dynamic."""
    return (torch.backends.quantized.engine in ("x86", "fbgemm")
            and hasattr(torch.ops.quantized, "linear_dynamic"))


def _prepack(q: torch.Tensor, scale: torch.Tensor):
    """fbgemm's packed form of a per-channel int8 (d, k) matrix (an opaque object, no bias)."""
    zero = torch.zeros(q.shape[0], dtype=torch.long)
    with warnings.catch_warnings():          # quantized tensors are deprecated in torch 2.13; see the docstring
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        qt = torch._make_per_channel_quantized_tensor(q.contiguous(), scale.double(), zero, 0)
    return torch.ops.quantized.linear_prepack(qt, None)


@functools.cache
def needs_reduce_range() -> bool:
    """Whether fbgemm needs 7-bit activations on this CPU. Its pre-VNNI kernels add pairs of uint8·int8
    products in int16, which saturates for 8-bit activations (255·127·2 > 32767); that is why PyTorch
    defaults to 7 bits on x86. With VNNI the products accumulate in int32 and 8 bits are exact (and more
    accurate: 1.3 % vs 2.2 % output error on Gaussian data). Probed once, with the worst case."""
    k = 256
    packed = _prepack(torch.full((4, k), QMAX, dtype=torch.int8), torch.ones(4))
    x = torch.ones(2, k)
    x[0, 0] = 0.0                             # input range [0, 1]: every other entry quantizes to 255
    y = torch.ops.quantized.linear_dynamic(x, packed, False)
    return not torch.allclose(y[1], torch.full((4,), float(QMAX * k)), rtol=1e-3)


@register_scheme
@dataclass(frozen=True)
class Int8Scheme(QuantScheme):
    """int8 per-output-channel weights.

    transposed_copy (CPU/fbgemm): keep W0ᵀ packed too, so that dL/dx runs on the int8 kernel: twice the
    int8 memory for a ~10 % faster LoRA step here (docs/precision.md). 'auto' keeps it only where bf16
    is not native, where the backward would otherwise run in fp32. compute_dtype ('auto' = bf16 where
    native, else fp32): for products without an int8 kernel."""
    name: ClassVar[str] = "int8"
    # The transposed copy is a speed-up kept only on CPUs without native bf16: budgets count the weights without it.
    budget_options: ClassVar[dict[str, Any]] = {"transposed_copy": False}
    transposed_copy: bool | str = "auto"
    compute_dtype: str = "auto"

    def __post_init__(self):
        check_compute_dtype(self.compute_dtype)
        if self.transposed_copy not in (True, False, "auto"):
            raise LoraLabError(f"int8 transposed_copy must be True, False or 'auto', got {self.transposed_copy!r}")

    def keeps_transposed_copy(self) -> bool:
        if self.transposed_copy == "auto":
            return fbgemm_available() and not native_bf16(torch.device("cpu"))
        return bool(self.transposed_copy) and fbgemm_available()

    def quantize_weight(self, weight: torch.Tensor, bias: torch.Tensor | None) -> DequantizingLinear:
        q, scale = quantize_per_channel(weight)
        fast = weight.device.type == "cpu" and fbgemm_available()
        return (FbgemmInt8Linear if fast else Int8Linear)(q, scale, bias, self)

    def weight_bytes(self, d_out: int, d_in: int) -> int:
        """d·k int8 + d fp32 scales (+ k·d + 4k for W0ᵀ when the transposed copy is kept, CPU). fbgemm's
        packed layout takes 0-25 % more than the int8 values, depending on d_in (docs/precision.md)."""
        one = d_out * d_in + 4 * d_out
        return one + (d_in * d_out + 4 * d_in if self.keeps_transposed_copy() else 0)

    def bitsandbytes_options(self) -> dict[str, Any]:
        """LLM.int8() rows: bitsandbytes' CB, SCB = 127·scale are this scheme's codes and scales."""
        return {"load_in_8bit": True}


class Int8Linear(DequantizingLinear):
    """int8 weights in plain tensors (`qweight` (d, k) int8, `scale` (d,) fp32), multiplied through a dense
    copy in compute_dtype: the path without fbgemm (GPUs, non-x86 CPUs)."""

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, scheme: Int8Scheme):
        super().__init__(qweight.shape[1], qweight.shape[0], bias, scheme)
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale)
        self.compute_dtype = resolve_compute_dtype(scheme.compute_dtype, qweight.device)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_per_channel(self.qweight, self.scale, dtype)

    def storage_bytes(self) -> int:
        return self.qweight.nbytes + self.scale.nbytes


class FbgemmInt8Linear(DequantizingLinear):
    """int8 weights packed for fbgemm (CPU). The packed objects are not tensors: the state dict carries
    `qweight` (unpacked) and `scale` like Int8Linear's, and loading one repacks."""

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, scheme: Int8Scheme):
        super().__init__(qweight.shape[1], qweight.shape[0], bias, scheme)
        self.register_buffer("scale", scale)
        self.compute_dtype = resolve_compute_dtype(scheme.compute_dtype, torch.device("cpu"))
        self._pack(qweight)

    def _pack(self, qweight: torch.Tensor) -> None:
        self._packed = _prepack(qweight, self.scale)
        self._packed_t = self._scale_t = None
        if self.scheme.keeps_transposed_copy():
            q_t, self._scale_t = quantize_per_channel(dequantize_per_channel(qweight, self.scale, torch.float32).t())
            self._packed_t = _prepack(q_t, self._scale_t)

    def qweight(self) -> torch.Tensor:
        """Q (d, k) int8, unpacked (a new tensor)."""
        return self._packed.unpack()[0].int_repr()

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_per_channel(self.qweight(), self.scale, dtype)

    def _int8_product(self, packed, x: torch.Tensor) -> torch.Tensor:
        """x (N, ·) times a packed int8 matrix. fbgemm quantizes its input with ONE scale per call; rows
        (tokens) can differ by orders of magnitude (gradients above all), and one scale would round the
        small rows away. So each row is scaled to max 1 first and back after (the product is linear in
        each row): one scale per token, for two cheap passes."""
        if x.device.type != "cpu":
            raise LoraLabError("this int8 layer was quantized on the CPU and runs there only; "
                               "quantize after moving the model to its device")
        # max |x| per row as max(max x, -min x): two reads, no |x| temporary (2.5x faster than abs().amax)
        row_max = torch.maximum(x.amax(dim=1, keepdim=True), x.amin(dim=1, keepdim=True).neg_())
        row_max = row_max.float().clamp_(min=torch.finfo(torch.float32).tiny)
        out = torch.ops.quantized.linear_dynamic(x.float() / row_max, packed, needs_reduce_range())
        return out.mul_(row_max).to(x.dtype)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        return self._int8_product(self._packed, x)

    def input_grad(self, g: torch.Tensor) -> torch.Tensor:
        if self._packed_t is None:
            return super().input_grad(g)
        return self._int8_product(self._packed_t, g)

    def storage_bytes(self) -> int:
        """d·k + 4d (+ k·d + 4k for the transposed copy): the int8 values and scales held. fbgemm's packed
        buffers are opaque; their real size (padding included) is measured by RSS in benchmarks/quantized.py."""
        d, k = self.out_features, self.in_features
        return d * k + self.scale.nbytes + (k * d + self._scale_t.nbytes if self._packed_t is not None else 0)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "qweight"] = self.qweight()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        key = prefix + "qweight"
        if key in state_dict:
            self._pack(state_dict[key].to(torch.int8))
            if key in unexpected_keys:
                unexpected_keys.remove(key)
        elif strict:
            missing_keys.append(key)
