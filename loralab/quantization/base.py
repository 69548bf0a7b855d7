"""Quantized frozen Linear layers: the module base class, the scheme registry and the one autograd path.

A *scheme* (int8, nf4, bf16, ...) is a frozen dataclass registered by name in `SCHEMES` with
`@register_scheme` (a name registered twice is refused); its fields are its options (nf4's double_quant),
`quantize_weight(weight, bias)` turns a (d_out, d_in) weight into a `QuantizedLinear` module, `weight_bytes`
is its memory formula (what `loralab budget` counts), `bitsandbytes_options` its export (export.py), and
`offered` puts it in `--quantize` / TrainConfig.quantize (QUANTIZE_CHOICES, read from SCHEMES). Every such
module computes y = x·W0ᵀ + b with W0 frozen, and provides two products:

    matmul(x)      x (N, d_in)   -> x·W0ᵀ  (N, d_out)     the forward
    input_grad(g)  g (N, d_out)  -> g·W0   (N, d_in)      dL/dx, so gradients reach adapters in earlier layers

`FrozenLinearFn` wires them into autograd: W0 gets no gradient (it is frozen and has none to get), the bias
gets one only if it requires grad. LoRA then adds s·B·A·x on top in full precision (see `kind.py`).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from loralab.core.registry import Registry
from loralab.errors import LoraLabError, choose
from loralab.precision import DTYPES

SCHEMES = Registry("quantization scheme")       # name -> QuantScheme subclass


def register_scheme(cls: type["QuantScheme"]) -> type["QuantScheme"]:
    """Class decorator: make a QuantScheme subclass available by its `name` (quantize(model, name)); a name
    already registered is refused (SCHEMES.remove(name) first to replace it)."""
    SCHEMES.add(cls.name, cls)
    return cls


def get_scheme(scheme: "str | QuantScheme", **options) -> "QuantScheme":
    """A scheme object from a registered name and its options (or a scheme object, returned as is)."""
    if isinstance(scheme, QuantScheme):
        if options:
            raise LoraLabError(f"options {sorted(options)} given with a ready {scheme.name} scheme object; "
                               f"pass them to its constructor instead")
        return scheme
    cls = SCHEMES.lookup(scheme)
    try:
        return cls(**options)
    except TypeError as exc:
        raise LoraLabError(f"quantization scheme {scheme!r}: {exc}") from None


class OfferedSchemes(Sequence):
    """What `--quantize` and TrainConfig.quantize take: "none", then every registered scheme whose `offered`
    is set, in registration order; read from SCHEMES at each use, so a scheme registered later is in it."""

    def _names(self) -> tuple[str, ...]:
        return ("none", *(name for name, cls in SCHEMES.items() if cls.offered))

    def __getitem__(self, index: Any) -> Any:
        return self._names()[index]

    def __len__(self) -> int:
        return len(self._names())

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __repr__(self) -> str:
        return repr(self._names())


QUANTIZE_CHOICES = OfferedSchemes()


def native_bf16(device: torch.device) -> bool:
    """True where bf16 matmuls run natively (CUDA; CPUs with AVX-512 BF16). Elsewhere bf16 is emulated
    and slower than fp32, so 'auto' compute picks fp32 there."""
    if device.type == "cuda":
        return True
    if device.type == "cpu":
        check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
        return bool(check and check())
    return False


def resolve_compute_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto' -> bf16 where it is native, else fp32; 'fp32' / 'bf16' / 'fp16' as named."""
    if name == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    return DTYPES[name]


def check_compute_dtype(name: str) -> None:
    choose(name, ("auto", *DTYPES), "compute_dtype")


@dataclass(frozen=True)
class QuantScheme:
    """How frozen Linear weights are stored and multiplied. Subclasses set `name` and register; their
    dataclass fields are the scheme's options."""
    name: ClassVar[str] = ""
    offered: ClassVar[bool] = True
    """In `--quantize` / TrainConfig.quantize (QUANTIZE_CHOICES); bf16 is not: it is `--dtype bf16` there."""
    budget_options: ClassVar[dict[str, Any]] = {}
    """Options `loralab budget` counts the scheme with, where its defaults depend on the machine."""

    @classmethod
    def takes(cls, option: str) -> bool:
        """True when `option` (e.g. "double_quant") is one of the scheme's options."""
        return option in {f.name for f in dataclasses.fields(cls)}

    def bitsandbytes_options(self) -> dict[str, Any] | None:
        """transformers' BitsAndBytesConfig keyword arguments that store this scheme's weights in bitsandbytes'
        format (quantization/export.py); None: there is no such format."""
        return None

    def quantize_weight(self, weight: torch.Tensor, bias: torch.Tensor | None) -> "QuantizedLinear":
        """A frozen layer computing x·Q(weight)ᵀ + bias; weight is (d_out, d_in) in any float dtype."""
        raise NotImplementedError

    def weight_bytes(self, d_out: int, d_in: int) -> int:
        """Bytes that one (d_out, d_in) weight takes in this scheme (scales and kept copies included,
        bias excluded): the memory formula, for budgets without building anything."""
        raise NotImplementedError


class QuantizedLinear(nn.Module):
    """A frozen linear layer whose weight W0 (d_out, d_in) is stored by a scheme; the bias stays as it was.

    Subclasses store the weight and implement `dequantize`, `matmul`, `input_grad` and `storage_bytes`.
    `weight` is a dequantized fp32 copy for code that reads it; writing to it changes nothing stored.
    """

    def __init__(self, in_features: int, out_features: int, bias: torch.Tensor | None, scheme: QuantScheme):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.scheme = scheme
        if bias is None:
            self.register_parameter("bias", None)
        else:
            self.bias = nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """W0 as a new dense (d_out, d_in) tensor of `dtype`."""
        raise NotImplementedError

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x·W0ᵀ for x (N, d_in) -> (N, d_out), in x's dtype (the bias is added by the caller)."""
        raise NotImplementedError

    def input_grad(self, g: torch.Tensor) -> torch.Tensor:
        """g·W0 for g (N, d_out) -> (N, d_in), in g's dtype."""
        raise NotImplementedError

    def storage_bytes(self) -> int:
        """Bytes held for W0: codes, scales and any extra copy kept for speed (not the bias)."""
        raise NotImplementedError

    @property
    def weight(self) -> torch.Tensor:
        return self.dequantize(torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return FrozenLinearFn.apply(x, self.bias, self)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, scheme={self.scheme}")


class FrozenLinearFn(torch.autograd.Function):
    """y = x·W0ᵀ + b through a QuantizedLinear's own kernels. Backward: dL/dx = g·W0 (the layer's
    `input_grad`) and dL/db = Σ g, each only when needed; W0 is frozen and never gets a gradient.
    Nothing of size (d_out, d_in) is kept between forward and backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bias: torch.Tensor | None, layer: QuantizedLinear) -> torch.Tensor:
        ctx.layer, ctx.bias_dtype = layer, None if bias is None else bias.dtype
        out = layer.matmul(x.reshape(-1, layer.in_features))
        if bias is not None:
            out = out.add_(bias.to(out.dtype))
        return out.view(*x.shape[:-1], layer.out_features)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        layer = ctx.layer
        flat = g.reshape(-1, layer.out_features)
        gx = layer.input_grad(flat).view(*g.shape[:-1], layer.in_features) if ctx.needs_input_grad[0] else None
        gb = flat.sum(0).to(ctx.bias_dtype) if ctx.needs_input_grad[1] else None
        return gx, gb, None


class DequantizingLinear(QuantizedLinear):
    """Products through a dense copy of W0 made per call in `compute_dtype` (bf16 where native), freed at
    once: the path for schemes without a direct low-bit kernel. Backward dequantizes again rather than keep
    the (d_out, d_in) copy alive from forward to backward (dequantizing costs a few % of the matmul)."""

    compute_dtype: torch.dtype = torch.float32

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.compute_dtype
        return torch.mm(x.to(dtype), self.dequantize(dtype).t()).to(x.dtype)

    def input_grad(self, g: torch.Tensor) -> torch.Tensor:
        dtype = self.compute_dtype
        return torch.mm(g.to(dtype), self.dequantize(dtype)).to(g.dtype)
