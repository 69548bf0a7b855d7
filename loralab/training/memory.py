"""What a run does to its model to fit in less memory: a quantized frozen base (loralab.quantization) and
gradient checkpointing. (Sharding the base over several processes: loralab.training.fsdp.)"""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from loralab.errors import LoraLabError


def quantize_base(model: nn.Module, scheme: str, say: Callable[[str], None] = lambda message: None) -> None:
    """Quantize the frozen Linear weights of `model` in place with `scheme` ("none": nothing), before inject:
    LoRA then wraps the quantized layers. The output head stays in full precision."""
    if scheme == "none":
        return
    from loralab.quantization import quantize, quantized_memory

    quantize(model, scheme)
    memory = quantized_memory(model)
    say(f"quantized {memory.layers} Linear layers to {scheme}: {memory.weight_bytes / 2**20:.1f} MiB "
        f"({memory.weight_ratio:.0%} of fp32); whole model {memory.model_bytes / 2**20:.1f} MiB")


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """transformers' own activation checkpointing, non-reentrant: each block's activations are recomputed in
    backward. Non-reentrant checkpointing passes gradients to the LoRA factors inside a block even though the
    block's input does not require grad, so no `enable_input_require_grads` is needed."""
    enable = getattr(model, "activation_checkpointing_enable", None)     # transformers >= 5
    keyword = "activation_checkpointing_kwargs"
    if enable is None:
        enable, keyword = getattr(model, "gradient_checkpointing_enable", None), "gradient_checkpointing_kwargs"
    if enable is None or not getattr(model, "supports_gradient_checkpointing", False):
        raise LoraLabError(f"gradient checkpointing: {type(model).__name__} does not support it (transformers' "
                           "supports_gradient_checkpointing is false); drop --gradient-checkpointing")
    enable(**{keyword: {"use_reentrant": False}})
