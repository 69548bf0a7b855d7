"""Target rules: which module names a rule like "query", "encoder.layer.0.attention.self.query",
"re:.*\\.(q|v)_proj", "layers\\.[01]\\..*v_proj" or "all-linear" selects (see LoraConfig's docstring), and
which layer a module sits in (`layer_index`, PEFT's `layers_to_transform` rule)."""
from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Iterable, Sequence

from torch import nn

from loralab.errors import LoraLabError

ALL_LINEAR = "all-linear"
REGEX_PREFIX = "re:"
# A rule spelled only with these characters is a module name (or a dotted suffix of one).
_PLAIN_NAME = re.compile(r"[\w.\-]+")


@functools.lru_cache(maxsize=4096)
def is_plain_name(rule: str) -> bool:
    """True when the rule is a module name or dotted suffix, not a regular expression."""
    return _PLAIN_NAME.fullmatch(rule) is not None


def matches(name: str, rule: str) -> bool:
    """True if the full dotted module name is selected by one rule:
      * "re:REGEX"  the regex matches the whole name;
      * a plain dotted name: the name equals it or ends with "." + it (a suffix of whole segments);
      * anything else (a rule holding regex syntax, e.g. "layers\\.[01]\\..*v_proj") is read as PEFT reads
        rank_pattern keys: the regex matches a dotted suffix of the name, re.match(rf"(.*\\.)?({rule})$", name).
    A plain name means the same in both rules (PEFT's regex would also let its dots match any character)."""
    if rule.startswith(REGEX_PREFIX):
        return re.fullmatch(rule[len(REGEX_PREFIX):], name) is not None
    if is_plain_name(rule):
        return name == rule or name.endswith("." + rule)
    return re.match(rf"(.*\.)?({rule})$", name) is not None


def check_rule(field: str, rule) -> str:
    """`rule` if it is a usable rule (a string; a regex that compiles), else a LoraLabError naming `field`."""
    if not isinstance(rule, str) or not rule:
        raise LoraLabError(f"{field}: rules are non-empty strings (module names or 're:REGEX'), got {rule!r}")
    if not is_plain_name(rule):
        pattern = rule[len(REGEX_PREFIX):] if rule.startswith(REGEX_PREFIX) else rule
        try:
            re.compile(pattern)
        except re.error as exc:
            raise LoraLabError(f"{field}: {rule!r} is not a valid regular expression ({exc})") from None
    return rule


def first_match(name: str, rules: Iterable[str]) -> str | None:
    """The first rule (in order) that selects `name`, or None."""
    rules = tuple(rules)
    try:
        compiled = compile_rules(rules)
    except TypeError:                           # an unhashable rule: no cache, `matches` says what is wrong
        compiled = RuleSet(rules)
    found = compiled.first(name)
    return None if found is None else found[1]


@functools.lru_cache(maxsize=16384)
def dotted_suffixes(name: str) -> tuple[str, ...]:
    """The name and every suffix after one of its dots ("a.b.c" -> "a.b.c", "b.c", "c"): a plain rule
    selects the name exactly when it is one of these (`matches`: equal, or the name ends with "." + rule).
    Cached: a server matches the same module names at every adapter it loads."""
    out = [name]
    at = name.find(".")
    while at != -1:
        out.append(name[at + 1:])
        at = name.find(".", at + 1)
    return tuple(out)


class RuleSet:
    """A list of target rules compiled for matching many names: the plain-name rules sit in a dict
    {rule: its positions}, looked up once per dotted suffix of a name, so a name costs O(its depth) for
    them however many there are (an adapter file lists every adapted module by its full name); the other
    rules ("re:...", PEFT's regex keys) are tried one by one with `matches`. Same answers as `matches`
    applied rule by rule, in order."""

    def __init__(self, rules: Sequence[str]):
        self.rules = tuple(rules)
        self.plain: dict[str, list[int]] = {}   # plain rule -> its positions (a rule may be listed twice)
        self.other: list[int] = []              # positions of the other rules, in order
        for i, rule in enumerate(self.rules):
            if isinstance(rule, str) and not rule.startswith(REGEX_PREFIX) and is_plain_name(rule):
                self.plain.setdefault(rule, []).append(i)
            else:
                self.other.append(i)

    def _plain_hits(self, name: str) -> list[list[int]]:
        return [self.plain[s] for s in dotted_suffixes(name) if s in self.plain]

    def first(self, name: str) -> tuple[int, str] | None:
        """(position, rule) of the first rule (in order) that selects `name`, or None."""
        best = min((at[0] for at in self._plain_hits(name)), default=len(self.rules))
        for i in self.other:
            if i >= best:
                break
            if matches(name, self.rules[i]):
                return i, self.rules[i]
        return (best, self.rules[best]) if best < len(self.rules) else None

    def matching(self, name: str) -> set[int]:
        """Positions of every rule that selects `name`."""
        hits = {i for at in self._plain_hits(name) for i in at}
        hits.update(i for i in self.other if matches(name, self.rules[i]))
        return hits


@functools.lru_cache(maxsize=256)
def compile_rules(rules: tuple[str, ...]) -> RuleSet:
    """The RuleSet of a tuple of rules (cached: a config's rules are matched against every module name)."""
    return RuleSet(rules)


def layer_index(name: str, layers_pattern: list[str] | None = None) -> int | None:
    """The index of the layer a module sits in, found as PEFT finds it for `layers_to_transform`: the first
    number segment after a named segment ("model.layers.3.self_attn.q_proj" -> 3), or, with `layers_pattern`,
    the number after one of those segment names (a regex each, e.g. "layers", "h"). None when there is none."""
    if not layers_pattern:
        found = re.match(r".*?\.[^.]*\.(\d+)\.", name)
    else:
        found = next((m for m in (re.match(rf"(?:^|.*?\.){p}\.(\d+)\.", name) for p in layers_pattern) if m), None)
    return int(found.group(1)) if found else None


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
