"""What a run does to its model to fit in less memory: a quantized frozen base (loralab.quantization, through
loralab.runtime.quantize_base) and gradient checkpointing. (Sharding the base over several processes:
loralab.training.fsdp.)"""
from __future__ import annotations

from torch import nn

from loralab.errors import LoraLabError
from loralab.runtime.load import quantize_base  # noqa: F401  (alias for one release: moved to loralab.runtime)


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
