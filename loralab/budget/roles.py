"""The paper's matrix names (Wq, Wk, Wv, Wo, plus the MLP's projections) as LoraConfig targets.

`loralab budget --targets q v` means "the query and value projections", whatever a family calls
them (the names come from `loralab.models.architectures`). This module only translates role names
into LoraConfig `targets` / `fused_slices`; which modules a rule then selects is decided by the
surgery code (plan_injection), never here. Anything that is not a role name (a module name, an
"re:" rule, "all-linear") passes through as is.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loralab.errors import LoraLabError
from loralab.models.architectures import ROLES, SliceSpec, architecture, architecture_for

__all__ = ["ROLES", "ResolvedTargets", "resolve_targets"]


@dataclass(frozen=True)
class ResolvedTargets:
    targets: list[str] | str | None
    """LoraConfig.targets (None: the architecture preset, the paper's Wq, Wv)."""
    fused_slices: dict[str, SliceSpec]
    label: str
    """How the selection is shown to the user, e.g. "q, v" or "preset (Wq, Wv)"."""


def _family(model: Any):
    """(table entry, model type, config) of a model, or of a model_type string (transformers' default config)."""
    if isinstance(model, str) or model is None:
        arch = architecture(model)
        config = None
        if arch is not None and arch.fused:
            from transformers import AutoConfig

            config = AutoConfig.for_model(model)
        return arch, model, config
    return architecture_for(model), getattr(model.config, "model_type", None), model.config


def resolve_targets(model: Any, targets: list[str] | None) -> ResolvedTargets:
    """Translate role names in `targets` for one model family; other entries pass through unchanged.

    model: the model (its family, naming and config are read from it) or a `model_type` string
    (then fused slice widths come from transformers' default config of that type).

    >>> resolve_targets("gpt2", ["q", "v"]).fused_slices
    {'c_attn': [True, False, True]}
    """
    if targets is None:
        return ResolvedTargets(None, {}, "preset (the paper's Wq, Wv)")
    if targets == ["all-linear"] or targets == "all-linear":
        return ResolvedTargets("all-linear", {}, "all-linear")
    if "all-linear" in targets:
        raise LoraLabError("'all-linear' cannot be combined with other targets; pass it alone")
    arch, model_type, config = _family(model)
    if arch is None:
        return ResolvedTargets(list(dict.fromkeys(targets)), {}, ", ".join(targets))
    for entry in targets:
        if entry in ROLES and entry not in arch.roles:
            raise LoraLabError(f"model type {model_type!r} has no {entry!r} projection; "
                               f"roles it has: {', '.join(arch.roles)}")
    roles = [t for t in targets if t in ROLES]
    rules = list(dict.fromkeys(arch.rule(t) if t in ROLES else t for t in targets))
    return ResolvedTargets(rules, arch.fused_slices(roles, config), ", ".join(targets))
