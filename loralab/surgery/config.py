"""LoraConfig: what to adapt and how. Validated when constructed, so a bad value fails before any surgery."""
from __future__ import annotations

import functools
import inspect
import json
import math
import os
from dataclasses import InitVar, asdict, dataclass, field, fields
from pathlib import Path
from typing import NamedTuple

from loralab.errors import LoraLabError, choose

BIAS_MODES = ("none", "all", "lora_only")


class FusedSlices(NamedTuple):
    """How one fused projection is adapted: which slices (in stacking order) and their output widths
    (None: equal widths)."""
    adapt: tuple[bool, ...]
    widths: tuple[int, ...] | None


@dataclass
class LoraConfig:
    """Configuration of one LoRA adapter.

    Target rules (used by `targets`, `exclude`, `rank_pattern`, `alpha_pattern`, `modules_to_save`,
    `fused_slices`), checked against each module's full dotted name, e.g.
    "bert.encoder.layer.0.attention.self.query":
      * "query"                     suffix match: the name is "query" or ends with ".query"
      * "encoder.layer.0.attention.self.query"   a longer suffix or the exact full name
      * "re:.*layer\\.[0-5]\\..*query"  a regular expression matched against the full name
      * "layer\\.[0-5]\\..*query"     a rule holding regex syntax without "re:" is read as PEFT reads its
                                    rank_pattern keys: a regex matched against a dotted suffix of the name
      * "all-linear" (as `targets`)  every linear layer except the output head

    PEFT's field names are accepted too (`lora_alpha`, `target_modules`, `lora_dropout`, `use_rslora`,
    `use_dora`, `init_lora_weights`, `layers_to_transform`, `exclude_modules`, ...; see
    loralab.surgery.peft_names), so `LoraConfig(lora_alpha=32, target_modules=["query"])` works; one field in
    both spellings with different values is an error. `from_peft` / `to_peft` convert whole PEFT configs.
    """

    r: int = 8
    """Rank of ΔW = B·A (A: r×k, B: d×r)."""
    alpha: float = 16.0
    """Scale numerator: ΔW is multiplied by alpha/r (alpha/sqrt(r) with rslora), a scaling of at most 1e4."""
    dropout: float = 0.0
    """Dropout probability on the LoRA path's input, in [0, 1)."""
    targets: list[str] | str | None = None
    """Modules to adapt; None = the architecture preset (the paper's Wq, Wv)."""
    exclude: list[str] = field(default_factory=list)
    """Modules never adapted, even if `targets` matches them."""
    rank_pattern: dict[str, int] = field(default_factory=dict)
    """Per-module rank overrides: {target rule: r}. The first matching rule wins; PEFT's regex keys work as in
    PEFT. With `strict`, a key matching none of the adapted modules is an error (PEFT ignores it silently)."""
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    """Per-module alpha overrides: {target rule: alpha}."""
    init: str = "kaiming"
    """Initialisation, a registered name (loralab.core.inits): "kaiming" (reference code), "gaussian" (paper)
    or "pissa" (SVD of W0)."""
    rslora: bool = False
    """Scale by alpha/sqrt(r) instead of alpha/r (rank-stabilised LoRA)."""
    variant: str = "lora"
    """How ΔW is applied, a registered name (loralab.core.variants): "lora" (plain) or "dora" (weight-decomposed:
    a trainable magnitude per output row, linear layers only)."""
    bias: str = "none"
    """Which biases train too: "none", "all", or "lora_only" (biases of adapted layers)."""
    modules_to_save: list[str] = field(default_factory=list)
    """Modules trained in full and saved with the adapter (e.g. a new classifier head)."""
    fused_slices: dict[str, list[bool] | dict] = field(default_factory=dict)
    """Fused projections adapted slice by slice: {target rule: [adapt slice 0?, slice 1?, ...]} for slices of
    equal width, e.g. GPT-2 {"c_attn": [True, False, True]} adapts q and v of the stacked [q; k; v]; or
    {target rule: {"adapt": [...], "widths": [output rows of each slice]}}, e.g. Phi-3-medium's qkv_proj
    {"adapt": [True, False, True], "widths": [5120, 1280, 1280]} (grouped-query attention)."""
    layers: list[int] | None = None
    """Only modules inside these layers (PEFT's `layers_to_transform`); a module's layer is the first number
    segment after a named one (3 in "model.layers.3.self_attn.q_proj"), or after `layers_pattern`."""
    layers_pattern: list[str] | None = None
    """Names (regexes) of the segment before the layer number, e.g. ["layers"] (PEFT's `layers_pattern`)."""
    task_type: str | None = None
    """PEFT's task type ("SEQ_CLS", "CAUSAL_LM", ...). As in PEFT, "SEQ_CLS"/"TOKEN_CLS"/"QUESTION_ANS" also
    train and save the model's task head (added to modules_to_save at inject); saved in adapter_config.json."""
    fan_in_fan_out: bool = False
    """PEFT's flag for layers storing Wᵀ (GPT-2's Conv1D). loralab reads each layer's layout from its kind and
    never needs it; it is kept so `to_peft()` gives it back."""
    strict: bool = True
    """Every entry of `targets`, `rank_pattern` and `alpha_pattern` must match at least one module."""
    dora: InitVar[bool | None] = None
    """Old spelling (loralab 0.1) of variant="dora": True sets it. Not stored; read `variant`."""

    def __post_init__(self, dora: bool | None) -> None:
        if dora:
            if self.variant not in ("lora", "dora"):
                raise LoraLabError(f"dora=True (the old spelling of variant='dora') conflicts with "
                                   f"variant={self.variant!r}; give only variant")
            self.variant = "dora"
        if isinstance(self.targets, (list, tuple)):
            self.targets = list(self.targets)      # each entry checked as a rule below (a nested list is refused)
            if not self.targets:
                raise LoraLabError("targets is an empty list; give module names, 'all-linear', or None for the preset")
            if "all-linear" in self.targets:      # a YAML list or `lora.targets=[all-linear]` holding the keyword
                if len(self.targets) > 1:
                    raise LoraLabError(f"targets {self.targets} mixes 'all-linear' with other rules; 'all-linear' "
                                       "already selects every linear layer but the head: give it alone")
                self.targets = "all-linear"
        elif self.targets is not None and not isinstance(self.targets, str):
            raise LoraLabError(f"targets must be a list of names, a string or None, not {type(self.targets).__name__}")
        elif isinstance(self.targets, str) and self.targets != "all-linear":
            self.targets = [self.targets]
        _positive_int("r", self.r)
        self.alpha = _positive_number("alpha", self.alpha)
        from loralab.core.lora import check_scale
        try:
            check_scale(self.r, self.alpha, self.rslora)
        except ValueError as exc:
            raise LoraLabError(str(exc)) from None
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise LoraLabError(f"dropout must be in [0, 1), got {self.dropout!r}")
        from loralab.core.inits import INITS
        from loralab.core.variants import VARIANTS
        INITS.lookup(self.init)
        VARIANTS.lookup(self.variant)
        choose(self.bias, BIAS_MODES, "bias mode")
        self.exclude = _str_list("exclude", self.exclude)
        self.modules_to_save = _str_list("modules_to_save", self.modules_to_save)
        from loralab.core.targeting import check_rule
        for name in ("targets", "exclude", "rank_pattern", "alpha_pattern", "modules_to_save", "fused_slices"):
            rules = getattr(self, name)
            for rule in rules if isinstance(rules, (list, dict)) else ():
                check_rule(name, rule)
        self._check_peft_fields()
        for key, value in self.rank_pattern.items():
            _positive_int(f"rank_pattern[{key!r}]", value)
        for key, value in self.alpha_pattern.items():
            _positive_number(f"alpha_pattern[{key!r}]", value)
        self.fused_slices = {key: checked_fused_slices(key, value) for key, value in self.fused_slices.items()}

    def _check_peft_fields(self) -> None:
        from loralab.surgery.peft_names import PEFT_TASK_TYPES

        if self.layers is not None:
            self.layers = [self.layers] if isinstance(self.layers, int) and not isinstance(self.layers, bool) \
                else self.layers
            if not (isinstance(self.layers, (list, tuple)) and self.layers and all(
                    isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in self.layers)):
                raise LoraLabError(f"layers must be a non-empty list of layer indices (integers >= 0) or None, "
                                   f"got {self.layers!r}")
            self.layers = list(self.layers)
        if self.layers_pattern is not None:
            self.layers_pattern = _str_list("layers_pattern", self.layers_pattern) or None
            if self.layers is None:
                raise LoraLabError("layers_pattern only says where layer numbers are; give layers "
                                   "(layers_to_transform) too, or drop it")
        self.task_type = getattr(self.task_type, "value", self.task_type)    # peft.TaskType is a str enum
        if self.task_type is not None:
            choose(self.task_type, PEFT_TASK_TYPES, "task_type", " or None")
        if not isinstance(self.fan_in_fan_out, bool):
            raise LoraLabError(f"fan_in_fan_out must be True or False, got {self.fan_in_fan_out!r}")

    def rank_for(self, module_name: str) -> int:
        from loralab.core.targeting import first_match
        key = first_match(module_name, self.rank_pattern)
        return self.rank_pattern[key] if key is not None else self.r

    def alpha_for(self, module_name: str) -> float:
        from loralab.core.targeting import first_match
        key = first_match(module_name, self.alpha_pattern)
        return float(self.alpha_pattern[key]) if key is not None else self.alpha

    def slices_for(self, module_name: str) -> FusedSlices | None:
        from loralab.core.targeting import first_match
        key = first_match(module_name, self.fused_slices)
        if key is None:
            return None
        entry = self.fused_slices[key]
        if isinstance(entry, dict):
            return FusedSlices(tuple(entry["adapt"]), tuple(entry["widths"]))
        return FusedSlices(tuple(entry), None)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "LoraConfig":
        """A config from its `to_dict()` form; configs stored by loralab 0.1 (with "dora") load too."""
        from loralab.surgery.peft_names import accepted_peft_names

        known = {f.name for f in fields(cls)} | {"dora", *accepted_peft_names()}
        unknown = sorted(set(data) - known)
        if unknown:
            raise LoraLabError(f"unknown LoraConfig field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "LoraConfig":
        """A config from a JSON file: loralab's `to_dict()` form, or a PEFT config (an adapter_config.json,
        or any object with PEFT's field names such as "lora_alpha" or "peft_type"), read with `from_peft`."""
        data = _read_json(path)
        return cls.from_peft(data, where=str(path)) if is_peft_config(data) else cls.from_dict(data)

    @classmethod
    def from_peft(cls, config, where: str | None = None) -> "LoraConfig":
        """A config from PEFT's LoraConfig: a `peft.LoraConfig` object, a dict (`peft.LoraConfig(...).to_dict()`,
        an adapter_config.json's content), an adapter_config.json file, or an adapter folder holding one. PEFT's
        defaults fill omitted fields (lora_alpha 8); PEFT features loralab does not have are an error unless
        switched off."""
        from loralab.surgery.peft_names import from_peft_config, peft_object_dict

        if not isinstance(config, (dict, str, os.PathLike)):
            where, config = where or f"{type(config).__module__.partition('.')[0]}.{type(config).__name__}", peft_object_dict(config)
        if not isinstance(config, dict):
            path = Path(config)
            path = path / "adapter_config.json" if path.is_dir() else path
            where, config = where or str(path), _read_json(path)
        return cls(**from_peft_config(config, where or "PEFT config"))

    def to_peft(self) -> dict:
        """PEFT's LoraConfig fields for this config: `peft.LoraConfig(**config.to_peft())` builds the same
        adapter. LoraLabError for what PEFT cannot say (fused_slices, a variant or init PEFT lacks)."""
        from loralab.surgery.peft_names import to_peft_config

        return to_peft_config(self)


def _with_peft_names(init):
    """LoraConfig's generated __init__, also taking PEFT's field names (translated by peft_names; a field given
    in both spellings with different values is an error). Positional arguments keep loralab's field order.
    peft_names (which reads the variant and init registries, so torch) loads at the first call, not at import:
    `loralab train --help` builds LoraConfig's flags without torch."""
    names = [f.name for f in fields(LoraConfig) if f.init]
    own = {f.name for f in fields(LoraConfig)} | {"dora"}

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        for name, value in zip(names, args):
            if name in kwargs:
                raise TypeError(f"LoraConfig got multiple values for argument {name!r}")
            kwargs[name] = value
        init(self, *args[len(names):], **_peft_names().peft_kwargs_to_loralab(kwargs, own))

    return __init__


def _peft_names():
    from loralab.surgery import peft_names

    return peft_names


class _Signature:
    """LoraConfig's signature: its fields, then PEFT's names it accepts (keyword-only), computed when asked
    (inspect.signature, help()), since the names come from the registries."""

    def __get__(self, instance, owner) -> inspect.Signature:
        fields_only = inspect.signature(owner.__init__).replace()
        parameters = list(fields_only.parameters.values())[1:]         # without self
        extra = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None)
                 for n in _peft_names().accepted_peft_names()]
        return fields_only.replace(parameters=[*parameters, *extra])


LoraConfig.__init__ = _with_peft_names(LoraConfig.__init__)
LoraConfig.__signature__ = _Signature()


def is_peft_config(data: dict) -> bool:
    """True when a config dict is a PEFT config: it holds PEFT-only field names (lora_alpha, peft_type, ...) and
    none of loralab's own (a dict mixing both is read by the constructor, which takes either spelling)."""
    from loralab.surgery.peft_names import PEFT_CONFIG_FIELDS

    own = {f.name for f in fields(LoraConfig)} | {"dora"}
    return bool(set(data) & (PEFT_CONFIG_FIELDS - own)) and not set(data) & (own - PEFT_CONFIG_FIELDS)


def _read_json(path: str | os.PathLike) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LoraLabError(f"cannot read LoRA config {path}: {exc}") from None
    if not isinstance(data, dict):
        raise LoraLabError(f"LoRA config {path} must hold a JSON object, not {type(data).__name__}")
    return data


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LoraLabError(f"{name} must be a positive integer, got {value!r}")


def _positive_number(name: str, value) -> float:
    """`value` as a float if it is a finite number > 0 (not a bool), else one error line."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise LoraLabError(f"{name} must be a positive number, got {value!r}")
    if not math.isfinite(value):
        raise LoraLabError(f"{name} must be finite, got {value!r}")
    return float(value)


def stored_variant(data: dict) -> str | None:
    """The variant a stored config dict names: its "variant", or "dora" for loralab 0.1's `"dora": true`."""
    return data.get("variant") or ("dora" if data.get("dora") is True else None)


def checked_fused_slices(key: str, value) -> list[bool] | dict:
    """One fused_slices value, checked: a list of >= 2 booleans (equal widths) or {"adapt": [...], "widths": [...]}."""
    adapt, widths = (value.get("adapt"), value.get("widths")) if isinstance(value, dict) else (value, None)
    if not (isinstance(adapt, (list, tuple)) and len(adapt) >= 2 and all(isinstance(s, bool) for s in adapt)
            and any(adapt)) or (isinstance(value, dict) and set(value) != {"adapt", "widths"}):
        raise LoraLabError(f"fused_slices[{key!r}] must be a list of >= 2 booleans with at least one True, or "
                           f"{{'adapt': [booleans], 'widths': [output rows of each slice]}}, got {value!r}")
    if not isinstance(value, dict):
        return list(adapt)
    if not (isinstance(widths, (list, tuple)) and len(widths) == len(adapt)
            and all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths)):
        raise LoraLabError(f"fused_slices[{key!r}]['widths'] must be {len(adapt)} positive integers (one per "
                           f"slice), got {widths!r}")
    return {"adapt": list(adapt), "widths": list(widths)}


def _str_list(name: str, value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise LoraLabError(f"{name} must be a list of module names, got {value!r}")
    return list(value)
