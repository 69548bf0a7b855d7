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
    """Module names closest to a rule that matched nothing, for the error message."""
    text = rule[len(REGEX_PREFIX):] if rule.startswith(REGEX_PREFIX) else rule
    # Compare against short suffixes too: users type "q_proj", names are "model.layers.0.self_attn.q_proj".
    candidates = {}
    for name in names:
        parts = name.split(".")
        for i in range(len(parts)):
            candidates.setdefault(".".join(parts[i:]), name)
    close = difflib.get_close_matches(text, list(candidates), n=n * 3, cutoff=0.5)
    seen, result = set(), []
    for c in close:
        short = c if "." not in c else c
        if short not in seen:
            seen.add(short)
            result.append(short)
    return result[:n]


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
