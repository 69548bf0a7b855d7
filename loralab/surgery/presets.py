"""Default targets: the paper's choice, the attention query and value projections (Wq, Wv; Hu et al.
§4.2, §7.1), looked up in the architecture table (`loralab.models.architectures`). Where a family fuses
them into one layer (GPT-2's c_attn, Phi-3's qkv_proj) the preset adapts the q and v slices.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from loralab.errors import LoraLabError
from loralab.models.architectures import SliceSpec, architecture_for, model_type_of, model_types

DEFAULT_ROLES = ("q", "v")


@dataclass(frozen=True)
class Preset:
    targets: tuple[str, ...]
    fused_slices: dict[str, SliceSpec] = field(default_factory=dict)
    head: tuple[str, ...] = ()
    """Task heads created fresh for fine-tuning (trained in full via modules_to_save)."""


def preset_for(model: nn.Module) -> Preset:
    """The preset of a transformers model; a clear error for plain PyTorch models or unknown families."""
    mt = model_type_of(model)
    if mt is None:
        raise LoraLabError("this model has no transformers config, so there is no default target; "
                           "pass LoraConfig(targets=[...]) with module names (see `loralab inspect`)")
    arch = architecture_for(model)
    if arch is None:
        raise LoraLabError(f"no LoRA preset for model_type {mt!r}; pass LoraConfig(targets=[...]) or register the "
                           f"family in loralab.models.architectures (known: {', '.join(sorted(model_types()))})")
    targets = arch.lora_targets(DEFAULT_ROLES, model.config)
    return Preset(tuple(targets.targets), targets.fused_slices, arch.head)

