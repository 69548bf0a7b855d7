"""LoraConfig: what to adapt and how. Validated when constructed, so a bad value fails before any surgery."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

from loralab.errors import LoraLabError

BIAS_MODES = ("none", "all", "lora_only")


@dataclass
class LoraConfig:
    """Configuration of one LoRA adapter.

    Target rules (used by `targets`, `exclude`, `rank_pattern`, `alpha_pattern`, `modules_to_save`,
    `fused_slices`), checked against each module's full dotted name, e.g.
    "bert.encoder.layer.0.attention.self.query":
      * "query"                     suffix match: the name is "query" or ends with ".query"
      * "encoder.layer.0.attention.self.query"   a longer suffix or the exact full name
      * "re:.*layer\\.[0-5]\\..*query"  a regular expression matched against the full name
      * "all-linear" (as `targets`)  every linear layer except the output head
    """

    r: int = 8
    """Rank of ΔW = B·A (A: r×k, B: d×r)."""
    alpha: float = 16.0
    """Scale numerator: ΔW is multiplied by alpha/r (alpha/sqrt(r) with rslora)."""
    dropout: float = 0.0
    """Dropout probability on the LoRA path's input, in [0, 1)."""
    targets: list[str] | str | None = None
    """Modules to adapt; None = the architecture preset (the paper's Wq, Wv)."""
    exclude: list[str] = field(default_factory=list)
    """Modules never adapted, even if `targets` matches them."""
    rank_pattern: dict[str, int] = field(default_factory=dict)
    """Per-module rank overrides: {target rule: r}. The first matching rule wins."""
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    """Per-module alpha overrides: {target rule: alpha}."""
    init: str = "kaiming"
    """A's initialisation: "kaiming" (reference code), "gaussian" (paper) or "pissa" (SVD of W0)."""
    rslora: bool = False
    """Scale by alpha/sqrt(r) instead of alpha/r (rank-stabilised LoRA)."""
    dora: bool = False
    """Weight-decomposed LoRA: a trainable magnitude per output row (linear layers only)."""
    bias: str = "none"
    """Which biases train too: "none", "all", or "lora_only" (biases of adapted layers)."""
    modules_to_save: list[str] = field(default_factory=list)
    """Modules trained in full and saved with the adapter (e.g. a new classifier head)."""
    fused_slices: dict[str, list[bool]] = field(default_factory=dict)
    """Fused projections adapted slice by slice: {target rule: [adapt slice 0?, slice 1?, ...]},
    e.g. GPT-2 {"c_attn": [True, False, True]} adapts q and v of the stacked [q; k; v]."""
    strict: bool = True
    """Every entry of `targets` must match at least one module."""

    def __post_init__(self) -> None:
        if isinstance(self.targets, (list, tuple)):
            self.targets = [str(t) for t in self.targets]
            if not self.targets:
                raise LoraLabError("targets is an empty list; give module names, 'all-linear', or None for the preset")
        elif self.targets is not None and not isinstance(self.targets, str):
            raise LoraLabError(f"targets must be a list of names, a string or None, not {type(self.targets).__name__}")
        elif isinstance(self.targets, str) and self.targets != "all-linear":
            self.targets = [self.targets]
        _positive_int("r", self.r)
        if not (isinstance(self.alpha, (int, float)) and self.alpha > 0):
            raise LoraLabError(f"alpha must be a positive number, got {self.alpha!r}")
        self.alpha = float(self.alpha)
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise LoraLabError(f"dropout must be in [0, 1), got {self.dropout!r}")
        from loralab.core.lora import INITS
        if self.init not in INITS:
            raise LoraLabError(f"unknown init {self.init!r}; choose one of {sorted(INITS)}")
        if self.bias not in BIAS_MODES:
            raise LoraLabError(f"unknown bias mode {self.bias!r}; choose one of {list(BIAS_MODES)}")
        self.exclude = _str_list("exclude", self.exclude)
        self.modules_to_save = _str_list("modules_to_save", self.modules_to_save)
        for key, value in self.rank_pattern.items():
            _positive_int(f"rank_pattern[{key!r}]", value)
        for key, value in self.alpha_pattern.items():
            if not (isinstance(value, (int, float)) and value > 0):
                raise LoraLabError(f"alpha_pattern[{key!r}] must be a positive number, got {value!r}")
        for key, slices in self.fused_slices.items():
            if not (isinstance(slices, (list, tuple)) and len(slices) >= 2 and all(isinstance(s, bool) for s in slices)
                    and any(slices)):
                raise LoraLabError(f"fused_slices[{key!r}] must be a list of >= 2 booleans with at least one True, "
                                   f"got {slices!r}")
            self.fused_slices[key] = list(slices)

    def rank_for(self, module_name: str) -> int:
        from loralab.surgery.targeting import first_match
        key = first_match(module_name, self.rank_pattern)
        return self.rank_pattern[key] if key is not None else self.r

    def alpha_for(self, module_name: str) -> float:
        from loralab.surgery.targeting import first_match
        key = first_match(module_name, self.alpha_pattern)
        return float(self.alpha_pattern[key]) if key is not None else self.alpha

    def slices_for(self, module_name: str) -> list[bool] | None:
        from loralab.surgery.targeting import first_match
        key = first_match(module_name, self.fused_slices)
        return self.fused_slices[key] if key is not None else None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "LoraConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise LoraLabError(f"unknown LoraConfig field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_json(cls, path: str) -> "LoraConfig":
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, json.JSONDecodeError) as exc:
            raise LoraLabError(f"cannot read LoRA config {path}: {exc}") from None
        return cls.from_dict(data)


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LoraLabError(f"{name} must be a positive integer, got {value!r}")


def _str_list(name: str, value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise LoraLabError(f"{name} must be a list of module names, got {value!r}")
    return list(value)
