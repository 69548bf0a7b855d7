"""Full fine-tuning: every parameter trains (the paper's FT baseline)."""
from __future__ import annotations

from torch import nn


def prepare_full(model: nn.Module, **options: object) -> nn.Module:
    """requires_grad=True on every parameter; no options. Returns the same model object."""
    if options:
        from loralab.errors import LoraLabError
        raise LoraLabError(f"full fine-tuning takes no options, got {sorted(options)}; remove them")
    for param in model.parameters():
        param.requires_grad_(True)
    return model
