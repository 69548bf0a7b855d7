"""Target rules: which module names a rule like "query", "encoder.layer.0.attention.self.query",
"re:.*\\.(q|v)_proj" or "all-linear" selects. See LoraConfig's docstring for the rules."""
from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

from torch import nn

ALL_LINEAR = "all-linear"
REGEX_PREFIX = "re:"


def matches(name: str, rule: str) -> bool:
    """True if the full dotted module name is selected by one rule (suffix match or 're:' full regex)."""
    if rule.startswith(REGEX_PREFIX):
        return re.fullmatch(rule[len(REGEX_PREFIX):], name) is not None
    return name == rule or name.endswith("." + rule)


def first_match(name: str, rules: Iterable[str]) -> str | None:
    """The first rule (in order) that selects `name`, or None."""
    return next((rule for rule in rules if matches(name, rule)), None)


def nearest_names(rule: str, names: list[str], n: int = 5) -> list[str]:
    """Module names closest to a rule that matched nothing, for the error message.

    Users type short names ("q_proj") while module names are long ("model.layers.0.self_attn.q_proj"),
    so every dotted suffix of every name is a candidate; each hit is shown as one full module name."""
    text = rule[len(REGEX_PREFIX):] if rule.startswith(REGEX_PREFIX) else rule
    example_of: dict[str, str] = {}
    for name in names:
        parts = name.split(".")
        for i in range(len(parts)):
            example_of.setdefault(".".join(parts[i:]), name)
    close = difflib.get_close_matches(text, list(example_of), n=n, cutoff=0.5)
    return list(dict.fromkeys(example_of[c] for c in close))


def output_head_names(model: nn.Module) -> set[str]:
    """Names of the model's output projection(s) (lm_head, classifier, ...), excluded from 'all-linear'
    because adapting the layer that produces the logits is rarely what 'all linear layers' means."""
    heads = set()
    get_out = getattr(model, "get_output_embeddings", None)
    out = get_out() if callable(get_out) else None
    for name, module in model.named_modules():
        if out is not None and module is out:
            heads.add(name)
        if name.split(".")[-1] in ("lm_head", "classifier", "score", "qa_outputs") and not list(module.children()):
            heads.add(name)
    return heads
