"""Full fine-tuning: every parameter trains (the paper's FT baseline)."""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from loralab.errors import LoraLabError


def prepare_full(model: nn.Module, head: Sequence[str] | None = None, **options: object) -> nn.Module:
    """requires_grad=True on every parameter. Returns the same model object.

    head: accepted for a uniform call across METHODS (the head trains anyway); other options are errors."""
    if options:
        raise LoraLabError(f"full fine-tuning takes no options, got {sorted(options)}; remove them")
    for param in model.parameters():
        param.requires_grad_(True)
    return model
