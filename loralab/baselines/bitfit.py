"""BitFit (Ben Zaken et al. 2022): train only the bias terms, plus the task head.

"Bias" means every parameter whose own name is `bias`: the biases of the linear layers and of the
LayerNorms (as in BitFit's reference setup, which freezes everything except parameters named bias).
Trainable values = Σ bias sizes + head sizes. Models without biases (LLaMA, Mistral) are refused:
BitFit would train nothing but the head there.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from loralab.baselines.common import freeze_all, train_head
from loralab.errors import LoraLabError


def bias_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """{full name: parameter} of every bias term (tied tensors once, under their first name)."""
    return {name: p for name, p in model.named_parameters() if name.rsplit(".", 1)[-1] == "bias"}


def prepare_bitfit(model: nn.Module, head: Sequence[str] | None = None) -> nn.Module:
    """Freeze everything, then unfreeze every bias and the task head. Returns the same model object.

    head: module name rules of the task head (default: the architecture preset's head names)."""
    biases = bias_parameters(model)
    if not biases:
        raise LoraLabError("this model has no bias parameters, so BitFit would train nothing but the head; "
                           "pick another method (lora, houlsby, prefix)")
    freeze_all(model)
    for param in biases.values():
        param.requires_grad_(True)
    train_head(model, head)
    return model
