"""Layer kinds: how each base-layer type maps onto LoRA's matrix view W0: (d, k).

A kind answers these questions for its layer type:
  * `shape(layer)`                 -> (d, k): output and input features of the matrix view
  * `weight(layer)` / `to_weight_layout(layer, ΔW)`: where W0 is stored and how a (d, k) ΔW is laid out there
  * `lora_input(layer, x, A)`      -> A·x for this layer's input  (..., r)  [or (N, r, *spatial) for convs]
  * `lora_output(layer, a, B)`     -> B·a in this layer's output layout
  * `add_lora_output(layer, out, a, B, s)` -> out + s·B·a, fused where the layout allows (the forward's hot path)
    Precision: the factors may be wider than the base (fp32 LoRA on a bf16 base). `lora_input` casts x to A's
    dtype, `add_lora_output` adds in the factors' dtype and rounds once to `out`'s dtype, so the layer's output
    keeps the base's dtype. Under autocast the products run in the autocast dtype and nothing is cast here.
  * `peft_names`, `to_peft`, `from_peft`: the keys and layouts of A and B in PEFT-layout adapter files
  * `is_linear`: the layer computes x·W0ᵀ on its last dimension (it counts for targets="all-linear",
    and variants that recompute W0·x, like DoRA, accept it); `fan_in_fan_out`: W0 is stored as (k, d)

New layer types are added with `@register_kind(SomeModuleType)` on a `LayerKind` subclass; lookup follows
the type's MRO, so subclasses of nn.Linear (e.g. NonDynamicallyQuantizableLinear) are found without extra
code. `KINDS.remove(SomeModuleType)` (or `with KINDS.scoped():`) undoes a registration.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from loralab.core.registry import Registry

KINDS = Registry("layer kind")      # module type -> LayerKind instance


def register_kind(*module_types: type):
    """Class decorator: one instance of the LayerKind subclass handles every given module type."""
    def deco(cls):
        kind = cls()
        _check_peft_names(kind)
        for t in module_types:
            KINDS.add(t, kind)
        return cls
    return deco


def _check_peft_names(kind: "LayerKind") -> None:
    """Files are read without a model, so the PEFT key names alone must say how to read a tensor back:
    two kinds may share key names only if they read them the same way."""
    for other in set(KINDS.values()):
        same_names = set(other.peft_names) & set(kind.peft_names)
        if same_names and type(other).from_peft is not type(kind).from_peft:
            raise ValueError(f"layer kind {kind.name!r} stores {sorted(same_names)} in PEFT files like kind "
                             f"{other.name!r} but reads them back differently; give it its own peft_names")


def kind_of(module: nn.Module) -> "LayerKind | None":
    """The registered kind for a module's type (or a base class of it), else None."""
    for t in type(module).__mro__:
        if t in KINDS:
            return KINDS[t]
    return None


def in_dtype_of(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """The LoRA input `x` in the factor's dtype (a bf16 activation meeting fp32 factors), unless autocast is
    active: then autocast picks the products' dtype, and a cast here would only copy x."""
    if x.dtype == factor.dtype or torch.is_autocast_enabled(x.device.type):
        return x
    return x.to(factor.dtype)


def widened(out: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """`out` in the factor's dtype when the factor is wider (fp32 LoRA on a 16-bit base) and no autocast
    is active; `out` itself otherwise (under autocast the add runs in the autocast dtype anyway)."""
    if out.dtype == factor.dtype or torch.is_autocast_enabled(out.device.type):
        return out
    return out.to(torch.promote_types(out.dtype, factor.dtype))


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """A base layer's W0 in the matrix view (d_out, d_in); a view where possible, never a copy of a Linear."""
    kind = kind_of(module)
    if kind is None:
        raise TypeError(f"{type(module).__name__} is not a layer type LoRA can adapt")
    return kind.weight_matrix(module)


class LayerKind:
    """The base of every kind. Its defaults describe a layer that stores W0 as the (d, k) matrix view
    and takes features on the last input dimension; a kind overrides what differs."""
    name = "layer"
    is_linear = False             # counts for "all-linear"; variants that recompute W0·x accept it
    fan_in_fan_out = False        # W0 stored as (k, d) (PEFT's config flag of the same name)
    input_dropout = True          # embeddings look up ids: dropout on the input makes no sense there
    peft_names = ("lora_A.weight", "lora_B.weight")    # A's and B's keys after the module path in PEFT files

    def check(self, layer: nn.Module) -> None:
        """Raise ValueError if this particular layer cannot take LoRA."""

    def check_merge(self, layer: nn.Module) -> None:
        """Raise ValueError if W0 of this layer cannot change in place (W0 += ΔW on merge, PiSSA's init);
        checked on every layer before any is touched."""

    def shape(self, layer: nn.Module) -> tuple[int, int]:
        return tuple(self.weight_matrix(layer).shape)

    def weight(self, layer: nn.Module) -> torch.Tensor:
        return layer.weight

    def weight_matrix(self, layer: nn.Module) -> torch.Tensor:
        return layer.weight

    def to_weight_layout(self, layer: nn.Module, delta: torch.Tensor) -> torch.Tensor:
        return delta

    def lora_input(self, layer: nn.Module, x: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
        return F.linear(in_dtype_of(x, A), A)

    def lora_output(self, layer: nn.Module, a: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
        return F.linear(a, B)

    def add_lora_output(self, layer: nn.Module, out: torch.Tensor, a: torch.Tensor, B: torch.Tensor,
                        scale: float) -> torch.Tensor:
        """out + scale·B·a as one addmm over the flattened tokens: no separate scale, no (..., d)-sized
        temporary for B·a and no extra pass to add it (in a 2048×384 layer benchmark this halved the
        unmerged adapter's extra time). A 16-bit `out` with wider factors is added in the factors' dtype
        and rounded once back to its own dtype."""
        wide = widened(out, B).reshape(-1, out.shape[-1])
        flat = torch.addmm(wide, a.reshape(-1, a.shape[-1]), B.t(), alpha=scale)
        return flat.view(out.shape).to(out.dtype)

    def to_peft(self, layer: nn.Module, A: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A (r, k) and B (d, r) as a PEFT file stores them under `peft_names`."""
        return A, B

    def from_peft(self, A: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The inverse of `to_peft`, without the layer (files are read without a model): A (r, k), B (d, r)."""
        return A.reshape(A.shape[0], -1), B.reshape(B.shape[0], -1)


@register_kind(nn.Linear)
class LinearKind(LayerKind):
    """nn.Linear: weight (d, k) is already the matrix view; h = x·W0ᵀ."""
    name = "linear"
    is_linear = True


def _conv1d_transformers() -> type | None:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # transformers is optional for plain PyTorch models
        return None
    return Conv1D


class TransposedLinearKind(LayerKind):
    """GPT-2's Conv1D: a linear layer whose weight is stored transposed, (k, d); h = x·W + b."""
    name = "conv1d-transposed"
    is_linear = True
    fan_in_fan_out = True

    def weight_matrix(self, layer: nn.Module) -> torch.Tensor:
        return layer.weight.T

    def to_weight_layout(self, layer: nn.Module, delta: torch.Tensor) -> torch.Tensor:
        return delta.T


if _conv1d_transformers() is not None:
    register_kind(_conv1d_transformers())(TransposedLinearKind)


@register_kind(nn.Embedding)
class EmbeddingKind(LayerKind):
    """nn.Embedding: a lookup table (num_embeddings, dim) is the linear map from a one-hot id
    (k = num_embeddings) to a vector (d = dim), so W0 in the matrix view is weightᵀ and A·x is row
    lookups of Aᵀ. (PEFT stores the same A (r, num) and B (dim, r) as lora_embedding_A/B.)"""
    name = "embedding"
    input_dropout = False
    peft_names = ("lora_embedding_A", "lora_embedding_B")

    def weight_matrix(self, layer: nn.Embedding) -> torch.Tensor:
        return layer.weight.T

    def to_weight_layout(self, layer: nn.Module, delta: torch.Tensor) -> torch.Tensor:
        return delta.T

    def lora_input(self, layer: nn.Embedding, x: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
        return F.embedding(x, A.T, padding_idx=layer.padding_idx, max_norm=layer.max_norm,
                           norm_type=layer.norm_type, scale_grad_by_freq=layer.scale_grad_by_freq,
                           sparse=layer.sparse)


@register_kind(nn.Conv1d, nn.Conv2d, nn.Conv3d)
class ConvKind(LayerKind):
    """Convolutions: A is a convolution with W0's kernel, stride and padding but r output channels;
    B is a 1×…×1 convolution from r to the output channels (as PEFT does). In the matrix view
    k = in_channels·prod(kernel) and ΔW = s·B·A reshapes back to W0's (out, in, *kernel)."""
    name = "conv"

    _conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}

    def weight_matrix(self, layer: nn.Module) -> torch.Tensor:
        return layer.weight.flatten(1)

    def to_weight_layout(self, layer: nn.Module, delta: torch.Tensor) -> torch.Tensor:
        return delta.reshape(layer.weight.shape)

    def lora_input(self, layer: nn.Module, x: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
        kernel = A.reshape(A.shape[0], *layer.weight.shape[1:])
        conv = self._conv[layer.weight.dim() - 2]
        return conv(in_dtype_of(x, A), kernel, None, layer.stride, layer.padding, layer.dilation)

    def lora_output(self, layer: nn.Module, a: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
        spatial = layer.weight.dim() - 2
        return self._conv[spatial](a, B.reshape(*B.shape, *([1] * spatial)))

    def add_lora_output(self, layer: nn.Module, out: torch.Tensor, a: torch.Tensor, B: torch.Tensor,
                        scale: float) -> torch.Tensor:
        # Channels are dim 1 here, not last: no addmm; scale the r-channel map, the cheapest place.
        return (widened(out, B) + self.lora_output(layer, a * scale, B)).to(out.dtype)

    def to_peft(self, layer: nn.Module, A: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A as an r-channel kernel (r, in, *kernel), B as a 1×…×1 kernel (out, r, 1, ...), as PEFT stores them."""
        spatial = layer.weight.dim() - 2
        return A.reshape(A.shape[0], *layer.weight.shape[1:]), B.reshape(*B.shape, *([1] * spatial))

    def check(self, layer: nn.Module) -> None:
        if layer.groups != 1:
            raise ValueError("LoRA on grouped convolutions is not supported (groups must be 1)")
        if layer.padding_mode != "zeros":
            raise ValueError(f"LoRA on convolutions with padding_mode={layer.padding_mode!r} is not supported")
