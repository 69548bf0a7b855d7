"""What every baseline shares: freezing, the task head, counting trainable values.

Every method trains the task head (the classifier a fine-tuning run creates fresh), as LoRA does via
`modules_to_save`; the head's module names come from the architecture table
(`loralab.models.architectures.task_head_modules`) unless the caller names them.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from loralab.core.targeting import matches
from loralab.errors import LoraLabError
from loralab.models.architectures import task_head_modules


def freeze_all(model: nn.Module) -> None:
    """requires_grad=False on every parameter (the starting point of every parameter-efficient method)."""
    for param in model.parameters():
        param.requires_grad_(False)


def head_modules(model: nn.Module, head: Sequence[str] | None = None) -> dict[str, nn.Module]:
    """{name: module} of the task head: the given rules, or the family's head names that exist in this model.

    A bare encoder (e.g. all-MiniLM-L6-v2 loaded with AutoModel) has no head, which gives {}. Rules given
    explicitly must each match something, so a typo is not silently ignored."""
    explicit = head is not None
    if head is None:
        head = task_head_modules(model)
    found: dict[str, nn.Module] = {}
    for rule in head:
        hits = {name: module for name, module in model.named_modules() if name and matches(name, rule)}
        if explicit and not hits:
            raise LoraLabError(f"head module {rule!r} matches no module of this model; "
                               f"pass head=[...] with names from model.named_modules()")
        found.update(hits)
    # A rule may select a module and one of its children; keep only the outermost ones.
    return {n: m for n, m in found.items() if not any(n.startswith(o + ".") for o in found if o != n)}


def train_head(model: nn.Module, head: Sequence[str] | None = None) -> int:
    """Unfreeze the task head; returns its number of parameter values."""
    total = 0
    for module in head_modules(model, head).values():
        for param in module.parameters():
            param.requires_grad_(True)
            total += param.numel()
    return total


def count_trainable(model: nn.Module) -> int:
    """Number of trainable values, each shared (tied) tensor counted once."""
    seen: set[int] = set()
    total = 0
    for param in model.parameters():  # parameters() already yields a tied tensor once
        if param.requires_grad and id(param) not in seen:
            seen.add(id(param))
            total += param.numel()
    return total


def count_all(model: nn.Module) -> int:
    """Number of parameter values in the model, tied tensors counted once."""
    return sum(p.numel() for p in model.parameters())
