"""Whole models: quantize the frozen Linear layers, turn them back into nn.Linear, count their memory.

    quantize(model, "nf4")              before or after loralab.inject; returns the same model
    dequantize_model(model)             every quantized layer back to an fp32 nn.Linear (the dequantized W0)
    quantized_memory(model)             bytes of the quantized weights vs fp32, and of the whole model
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from loralab.adapters.state import TrainableCopy
from loralab.core.kinds import kind_of
from loralab.core.lora import LoraLayer
from loralab.core.targeting import first_match, output_head_names
from loralab.errors import LoraLabError
from loralab.quantization.base import QuantizedLinear, QuantScheme, get_scheme

# Layer types quantize() replaces. Exact types, not subclasses: a subclass may be read directly by its
# parent (nn.MultiheadAttention reads out_proj.weight, and marks it NonDynamicallyQuantizableLinear).
# The weight is read through the layer's LoRA kind, so transposed storage (GPT-2's Conv1D) is handled there.
QUANTIZABLE: set[type] = {nn.Linear}


def register_quantizable(module_type: type) -> None:
    """Let quantize() replace layers of this type (it needs a LoRA kind giving its (d_out, d_in) weight)."""
    QUANTIZABLE.add(module_type)


def _register_transformers_conv1d() -> None:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        return
    register_quantizable(Conv1D)


_register_transformers_conv1d()


def _slots(model: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module, str, nn.Module]]:
    """(name, parent, attribute, child) for every submodule, named as LoRA names it (a LoraLayer's base
    under the LoraLayer's own name). Trained copies (modules_to_save) are not entered: they train in full."""
    for attr, child in model.named_children():
        if isinstance(child, TrainableCopy):
            continue
        name = prefix if isinstance(model, LoraLayer) else f"{prefix}.{attr}" if prefix else attr
        yield name, model, attr, child
        yield from _slots(child, name)


def replace_layer(parent: nn.Module, attr: str, new: nn.Module) -> None:
    """parent.attr = new; a LoraLayer parent also gets the new base layer's kind."""
    setattr(parent, attr, new)
    if isinstance(parent, LoraLayer):
        parent.kind = kind_of(new)


def _quantizable_slots(model: nn.Module, skip: Sequence[str], quantize_heads: bool) -> list[tuple]:
    """The (name, parent, attribute, layer) slots quantize() replaces: QUANTIZABLE layers outside the
    output head (unless quantize_heads) and the skip rules, that hold at least one weight."""
    heads = set() if quantize_heads else output_head_names(model)
    return [(name, parent, attr, child) for name, parent, attr, child in _candidate_slots(model)
            if name not in heads and first_match(name, skip) is None and not _zero_width(child)]


def _candidate_slots(model: nn.Module) -> list[tuple]:
    return [slot for slot in _slots(model) if type(slot[3]) in QUANTIZABLE]


def _zero_width(layer: nn.Module) -> bool:
    """A Linear with 0 inputs or 0 outputs: it has no weight to quantize (int8's per-row scale of an empty
    row does not exist), and nothing to gain; it stays as it is."""
    return 0 in kind_of(layer).shape(layer)


def _warn_zero_width(model: nn.Module) -> None:
    empty = [name for name, _, _, child in _candidate_slots(model) if _zero_width(child)]
    if empty:
        more = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
        warnings.warn(f"quantize: {empty[0]}{more} is a zero-width Linear (no weights), left as it is",
                      stacklevel=3)


def _check_finite(chosen: list[tuple]) -> None:
    """Refuse a weight holding NaN or inf before any layer is replaced: int8's per-row scale (max |w|) would
    be NaN or inf and turn the whole row into zeros or NaN, nf4's per-block scale a whole block."""
    for name, _, _, child in chosen:
        weight = kind_of(child).weight_matrix(child)
        bad = int((~torch.isfinite(weight)).sum())
        if bad:
            raise LoraLabError(f"{name}: the weight holds {bad} NaN or infinite value(s), which a quantized layer "
                               f"cannot hold (int8 and nf4 scale whole rows or blocks by their largest value); "
                               f"repair the model's weights, or leave the layer in full precision with "
                               f"skip=[{name!r}]")


def quantizable_layers(model: nn.Module, skip: Sequence[str] = (),
                       quantize_heads: bool = False) -> list[tuple[str, nn.Module]]:
    """(name, layer) for every layer quantize(model, ..., skip=skip, quantize_heads=quantize_heads) would
    replace; `loralab budget` counts their weights at a scheme's size."""
    return [(name, child) for name, _, _, child in _quantizable_slots(model, skip, quantize_heads)]


def quantize(model: nn.Module, scheme: str | QuantScheme = "int8", *, skip: Sequence[str] = (),
             quantize_heads: bool = False, **options) -> nn.Module:
    """Replace the model's Linear layers by frozen quantized ones (in place) and return the model.

    scheme: a registered name ("int8", "nf4", "bf16") or a scheme object; **options go to the scheme
    (e.g. double_quant=True for nf4, transposed_copy=False for int8). skip: module-name rules, as in
    LoraConfig.targets (suffix or 're:' regex), left in full precision. The output head (lm_head,
    classifier, ...) stays too unless quantize_heads; embeddings are not Linear layers and stay.
    Works before or after loralab.inject: inside a LoraLayer the base layer is replaced and LoRA keeps
    training on top. Quantized layers are frozen (their weight is no parameter); biases keep requires_grad.
    """
    scheme = get_scheme(scheme, **options)
    chosen = _quantizable_slots(model, skip, quantize_heads)
    if not chosen:
        done = any(isinstance(m, QuantizedLinear) for m in model.modules())
        why = "it is already quantized" if done else "it has none outside the output head and skip rules"
        raise LoraLabError(f"quantize found no Linear layer to quantize in {type(model).__name__}: {why}")
    for name, parent, _, _ in chosen:
        if isinstance(parent, LoraLayer) and parent.merged:
            raise LoraLabError(f"{name} holds merged adapters {parent.merged}; unmerge them before quantizing "
                               f"(loralab.unmerge), or merge_and_unload to quantize the merged weights")
    _check_finite(chosen)
    _warn_zero_width(model)
    for name, parent, attr, child in chosen:
        weight = kind_of(child).weight_matrix(child)
        replace_layer(parent, attr, scheme.quantize_weight(weight, getattr(child, "bias", None)))
    return model


def as_linear(layer: QuantizedLinear) -> nn.Linear:
    """A frozen fp32 nn.Linear holding the dequantized W0 and the same bias (parameter copied)."""
    weight = layer.dequantize(torch.float32)
    dense = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                      device=weight.device, dtype=torch.float32)
    dense.weight = nn.Parameter(weight, requires_grad=False)
    if layer.bias is not None:
        dense.bias = nn.Parameter(layer.bias.detach().clone(), requires_grad=layer.bias.requires_grad)
    return dense


def dequantize_model(model: nn.Module) -> nn.Module:
    """Replace every quantized layer by an fp32 nn.Linear with its dequantized weight (in place)."""
    for _, parent, attr, child in list(_slots(model)):
        if isinstance(child, QuantizedLinear):
            replace_layer(parent, attr, as_linear(child))
    return model


@dataclass(frozen=True)
class QuantizedMemory:
    """Bytes of the quantized Linear weights (codes, scales and kept copies; biases excluded) next to the
    same weights in fp32, and of the whole model (every parameter and buffer, shared ones once)."""
    layers: int
    weight_bytes: int
    weight_fp32_bytes: int
    model_bytes: int
    model_fp32_bytes: int

    @property
    def weight_ratio(self) -> float:
        return self.weight_bytes / self.weight_fp32_bytes if self.weight_fp32_bytes else 1.0

    @property
    def model_ratio(self) -> float:
        return self.model_bytes / self.model_fp32_bytes if self.model_fp32_bytes else 1.0


def quantized_memory(model: nn.Module) -> QuantizedMemory:
    layers = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
    weight = sum(m.storage_bytes() for m in layers)
    fp32 = sum(4 * m.in_features * m.out_features for m in layers)
    own = {id(b) for m in layers for b in m.buffers(recurse=False)}
    seen, rest = set(), 0
    for t in (*model.parameters(), *model.buffers()):
        if id(t) in own or t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        rest += t.nbytes
    return QuantizedMemory(len(layers), weight, fp32, rest + weight, rest + fp32)
