"""The paper's matrix names (Wq, Wk, Wv, Wo, plus the MLP's projections) as LoraConfig targets.

`loralab budget --targets q v` means "the query and value projections", whatever a family calls
them. This module only translates those role names into LoraConfig `targets` / `fused_slices`;
which modules a rule then selects is decided by the surgery code (plan_injection), never here.
Anything that is not a role name (a module name, an "re:" rule, "all-linear") passes through as is.
"""
from __future__ import annotations

from dataclasses import dataclass

from loralab.errors import LoraLabError

ROLES = ("q", "k", "v", "o", "gate", "up", "down")
"""q/k/v/o: attention query, key, value, output projections (the paper's Wq, Wk, Wv, Wo);
gate/up/down: the MLP's projections (gate only in gated MLPs such as LLaMA's SwiGLU)."""

_BERT = {"q": "query", "k": "key", "v": "value", "o": "attention.output.dense", "up": "intermediate.dense",
         # "output.dense" alone would also match attention.output.dense: pin the MLP's one with a regex.
         "down": r"re:.*layer\.\d+\.output\.dense"}
_LLAMA = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "gate": "gate_proj", "up": "up_proj",
          "down": "down_proj"}

# model_type -> role -> target rule. GPT-2 keeps q, k, v stacked in c_attn: those roles become slices.
ROLE_TARGETS: dict[str, dict[str, str]] = {
    **{t: _BERT for t in ("bert", "roberta", "xlm-roberta", "camembert", "electra", "ernie")},
    "distilbert": {"q": "q_lin", "k": "k_lin", "v": "v_lin", "o": "out_lin", "up": "lin1", "down": "lin2"},
    "gpt2": {"o": "attn.c_proj", "up": "mlp.c_fc", "down": "mlp.c_proj"},
    **{t: _LLAMA for t in ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text",
                           "olmo", "olmo2", "granite", "smollm3")},
    "opt": {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "out_proj", "up": "fc1", "down": "fc2"},
}
_FUSED_QKV: dict[str, str] = {"gpt2": "c_attn"}


@dataclass(frozen=True)
class ResolvedTargets:
    targets: list[str] | str | None
    """LoraConfig.targets (None: the architecture preset, the paper's Wq, Wv)."""
    fused_slices: dict[str, list[bool]]
    label: str
    """How the selection is shown to the user, e.g. "q, v" or "preset (Wq, Wv)"."""


def resolve_targets(model_type: str | None, targets: list[str] | None) -> ResolvedTargets:
    """Translate role names in `targets` for one model family; other entries pass through unchanged.

    >>> resolve_targets("gpt2", ["q", "v"]).fused_slices
    {'c_attn': [True, False, True]}
    """
    if targets is None:
        return ResolvedTargets(None, {}, "preset (the paper's Wq, Wv)")
    if targets == ["all-linear"] or targets == "all-linear":
        return ResolvedTargets("all-linear", {}, "all-linear")
    table = ROLE_TARGETS.get(model_type or "")
    fused = _FUSED_QKV.get(model_type or "")
    rules: list[str] = []
    slices = [False, False, False]
    for entry in targets:
        if entry == "all-linear":
            raise LoraLabError("'all-linear' cannot be combined with other targets; pass it alone")
        if entry in ROLES and table is not None:
            if fused is not None and entry in ("q", "k", "v"):
                slices["qkv".index(entry)] = True
                rule = fused
            elif entry in table:
                rule = table[entry]
            else:
                raise LoraLabError(f"model type {model_type!r} has no {entry!r} projection; "
                                   f"roles it has: {', '.join(r for r in ROLES if r in table or (fused and r in 'qkv'))}")
        else:
            rule = entry
        if rule not in rules:
            rules.append(rule)
    fused_slices = {fused: slices} if fused is not None and any(slices) else {}
    return ResolvedTargets(rules, fused_slices, ", ".join(targets))
