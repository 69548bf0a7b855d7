"""PEFT's LoraConfig, spoken by loralab's: the one place that maps PEFT's field names and values onto
loralab's and back.

  PEFT field              loralab field      value
  lora_alpha              alpha              the same (PEFT's default is 8, loralab's 16: from_peft applies PEFT's)
  lora_dropout            dropout            the same (None -> 0)
  target_modules          targets            a list: the same (suffix match); a string: PEFT matches it as a
                                             regex against the full name -> ["re:" + it]; "all-linear" and None
                                             (the family's default) stay
  exclude_modules         exclude            as target_modules (None -> [])
  use_rslora              rslora             the same
  use_dora (the flag of   variant            True -> "dora"; each registered variant's `peft_flag` is accepted
  each variant)
  init_lora_weights       init               each registered init's `peft_value`: True -> "kaiming",
                                             "gaussian", "pissa" ("pissa_niter_N" -> "pissa", computed exactly)
  layers_to_transform     layers             an int -> [int]
  r, bias, modules_to_save, rank_pattern, alpha_pattern, layers_pattern, fan_in_fan_out, task_type: the same
  names in both. rank_pattern / alpha_pattern keys are loralab target rules, a superset of PEFT's keys
  (see loralab.core.targeting.matches): PEFT's regex keys work unchanged.

`LoraConfig(...)` takes either spelling (`peft_kwargs_to_loralab`); giving both spellings of one field with
different values is an error. `LoraConfig.from_peft` reads a whole PEFT config (`from_peft_config`: PEFT's
defaults, provenance fields skipped, PEFT features loralab lacks refused unless switched off) and
`LoraConfig.to_peft` writes one (`to_peft_config`) that `peft.LoraConfig(**d)` accepts.
"""
from __future__ import annotations

import difflib
import warnings
from typing import Any

from loralab.core.inits import INITS
from loralab.core.targeting import ALL_LINEAR, REGEX_PREFIX, is_plain_name
from loralab.core.variants import VARIANTS
from loralab.errors import LoraLabError

# Every field of PEFT's LoraConfig (and its PeftConfig base) that PEFT versions up to 0.22 write.
PEFT_CONFIG_FIELDS = frozenset({
    "peft_type", "task_type", "base_model_name_or_path", "revision", "inference_mode", "auto_mapping",
    "peft_version", "r", "lora_alpha", "lora_dropout", "target_modules", "exclude_modules", "target_parameters",
    "fan_in_fan_out", "bias", "lora_bias", "use_rslora", "use_dora", "use_qalora", "qalora_group_size",
    "use_bdlora", "modules_to_save", "init_lora_weights", "layers_to_transform", "layers_pattern", "rank_pattern",
    "alpha_pattern", "megatron_config", "megatron_core", "loftq_config", "eva_config", "corda_config",
    "lora_ga_config", "kasa_config", "velora_config", "monteclora_config", "arrow_config", "layer_replication",
    "runtime_config", "trainable_token_indices", "ensure_weight_tying", "alora_invocation_tokens",
    "astra_config",
})
# Fields that say where an adapter came from or how PEFT runs it, not what it is: skipped by from_peft
# (`qalora_group_size` and `megatron_core` only configure features that are off unless their own flag is set).
PEFT_PROVENANCE_FIELDS = frozenset({"peft_type", "base_model_name_or_path", "revision", "inference_mode",
                                    "auto_mapping", "peft_version", "runtime_config", "qalora_group_size",
                                    "megatron_core"})
# PEFT's `task_type` values (peft.TaskType).
PEFT_TASK_TYPES = ("SEQ_CLS", "SEQ_2_SEQ_LM", "CAUSAL_LM", "TOKEN_CLS", "QUESTION_ANS", "FEATURE_EXTRACTION")
# The head modules PEFT's task classes add to modules_to_save (PeftModelForSequenceClassification, ...);
# PEFT 0.22 added DistilBERT's "pre_classifier" for both classification tasks.
PEFT_TASK_HEADS = {"SEQ_CLS": ("classifier", "score", "pre_classifier"),
                   "TOKEN_CLS": ("classifier", "score", "pre_classifier"),
                   "QUESTION_ANS": ("qa_outputs",)}
# PEFT's own defaults where they differ from loralab's, applied by from_peft to fields a PEFT config omits.
PEFT_DEFAULTS = {"lora_alpha": 8}
# PEFT's defaults of fields loralab does not support that are not "off" values (None, False, {}, [], ""): a field
# at its default asks for nothing and is accepted (and ignored).
PEFT_UNSUPPORTED_DEFAULTS = {"peft_type": "LORA", "megatron_core": "megatron.core", "qalora_group_size": 16}
# Why loralab refuses a PEFT field (and what to use instead); fields not listed get the generic reason.
UNSUPPORTED_REASONS = {
    "lora_bias": "loralab's adapters have no bias of their own on lora_B; train the adapted layers' biases with "
                 "bias='lora_only' (or 'all') instead",
    "use_qalora": "QA-LoRA's pooled adapter input is not implemented; quantize the base with quantize='nf4' "
                  "and train plain LoRA (QLoRA)",
    "qalora_group_size": "it configures QA-LoRA, which loralab does not have",
    "astra_config": "Astra's adapter layers and init are not implemented; train plain LoRA or a registered variant",
    "loftq_config": "LoftQ's init is not implemented; use init='pissa' or quantize the base with quantize='nf4'",
    "layer_replication": "loralab adapts the model's own layers and does not replicate them",
    "trainable_token_indices": "train the embedding through modules_to_save, or adapt it with targets",
    "megatron_config": "Megatron's parallel layers are not a loralab layer kind",
    "megatron_core": "Megatron's parallel layers are not a loralab layer kind",
    "base_model_name_or_path": "LoraConfig describes the adapter, not its base; save_adapter(..., "
                               "base_model_name_or_path=...) writes it into adapter_config.json",
    "revision": "LoraConfig describes the adapter, not its base's revision; loralab records the base it "
                "loaded in the adapter's metadata",
    "auto_mapping": "it is PEFT's bookkeeping for custom models; LoraConfig does not take it",
    "peft_version": "it is PEFT's bookkeeping; loralab writes its own version into saved adapters",
    "runtime_config": "PEFT's runtime options (ephemeral GPU offload) have no loralab equivalent",
    "ensure_weight_tying": "loralab adapts tied weights through the module that owns them; name that module in "
                           "targets or modules_to_save",
}
# PEFT-only names LoraConfig(...) accepts, with the loralab field each sets.
RENAMED = {"lora_alpha": "alpha", "lora_dropout": "dropout", "target_modules": "targets",
           "exclude_modules": "exclude", "use_rslora": "rslora", "init_lora_weights": "init",
           "layers_to_transform": "layers"}


def variant_flags() -> dict[str, str]:
    """{PEFT flag: loralab variant name} over the registered variants, e.g. {"use_dora": "dora"}."""
    return {v.peft_flag: v.name for v in VARIANTS.values() if v.peft_flag}


def accepted_peft_names() -> tuple[str, ...]:
    """The PEFT-only keyword names LoraConfig(...) accepts next to its own fields."""
    return (*RENAMED, *variant_flags(), "target_parameters", "inference_mode")


# ------------------------------------------------------------------------------------------------
# PEFT -> loralab
# ------------------------------------------------------------------------------------------------
def unsupported_peft_field(name: str, value: Any) -> str:
    """The one line refusing PEFT field `name` set to `value` (a PEFT feature loralab does not have)."""
    reason = UNSUPPORTED_REASONS.get(name, "it is a PEFT feature loralab does not have")
    return f"PEFT's {name}={value!r} is not supported by loralab: {reason}; remove it or set it to its default"


def _is_off(name: str, value: Any) -> bool:
    """True when a PEFT field's value asks for nothing (None, False, empty, or PEFT's default)."""
    return (value is None or value is False or (isinstance(value, (dict, list, tuple, set, str)) and not value)
            or getattr(value, "value", value) == PEFT_UNSUPPORTED_DEFAULTS.get(name, object()))


def check_keyword_names(kwargs: dict[str, Any], own: set[str]) -> None:
    """Refuse, in one LoraLabError line, a keyword that is neither one of LoraConfig's fields (`own`) nor a PEFT
    name loralab maps: a PEFT field loralab does not support is named with why (one at its default is dropped
    from `kwargs`); any other name gets the nearest known name."""
    accepted = own | set(accepted_peft_names())
    for name in sorted(set(kwargs) - accepted):
        if name in PEFT_CONFIG_FIELDS:
            if not _is_off(name, kwargs[name]):
                raise LoraLabError(unsupported_peft_field(name, kwargs[name]))
            del kwargs[name]
            continue
        near = difflib.get_close_matches(name, sorted(accepted | PEFT_CONFIG_FIELDS), n=1)
        hint = f"; did you mean {near[0]!r}?" if near else "; see help(loralab.LoraConfig) for its fields"
        raise LoraLabError(f"LoraConfig has no field {name!r}{hint}")


def peft_kwargs_to_loralab(kwargs: dict[str, Any], own: set[str] | None = None) -> dict[str, Any]:
    """LoraConfig keyword arguments with PEFT's names replaced by loralab's (values converted). A field given
    in both spellings must mean the same; otherwise one LoraLabError line names both. With `own` (LoraConfig's
    field names), any other keyword is refused by `check_keyword_names`."""
    out = dict(kwargs)
    if own is not None:
        check_keyword_names(out, own)
    converted: dict[str, tuple[str, Any]] = {}           # loralab field -> (PEFT name, value)
    for peft_name, field in RENAMED.items():
        if peft_name in out:
            converted[field] = (peft_name, _CONVERT[peft_name](out.pop(peft_name)))
    for flag, variant in variant_flags().items():
        if flag in out:
            value = out.pop(flag)
            if value is None:
                continue
            if not isinstance(value, bool):
                raise LoraLabError(f"{flag} must be True or False, got {value!r}")
            if value:
                converted["variant"] = (flag, variant)
            elif out.get("variant") == variant:
                raise LoraLabError(f"{flag}=False conflicts with variant={variant!r}; give only one of them")
    if out.pop("target_parameters", None):
        raise LoraLabError("target_parameters (PEFT's LoRA on bare nn.Parameters, e.g. MoE experts) is not "
                           "supported; target modules with target_modules / targets")
    out.pop("inference_mode", None)      # what trains is decided by inject / set_adapter, not by the config
    for field, (peft_name, value) in converted.items():
        if field in out and _normalised(field, out[field]) != value:
            raise LoraLabError(f"both {field}={out[field]!r} and {peft_name}={kwargs[peft_name]!r} are given; "
                               f"they are two spellings of one field: give only one")
        out[field] = value
    return out


def _rules_from_peft(value) -> list[str] | str | None:
    """target_modules / exclude_modules: a list is suffix rules (as in loralab); a string is PEFT's full-name
    regex, i.e. loralab's "re:" rule; "all-linear" and None mean the same in both."""
    if value is None or value == ALL_LINEAR:
        return value
    if isinstance(value, str):
        return [REGEX_PREFIX + value]
    if isinstance(value, (list, tuple, set, frozenset)):
        return sorted(value) if isinstance(value, (set, frozenset)) else list(value)
    raise LoraLabError(f"target_modules / exclude_modules must be a list of names, a regex string or None, "
                       f"got {value!r}")


def init_from_peft(value) -> str:
    """The registered init PEFT's `init_lora_weights` value names. The registry (`INITS`, each Init's
    `peft_value`) is the one place that decides which PEFT inits loralab takes: LoftQ, OLoRA, EVA, CorDA, ...
    have no registered Init and are refused with one line naming the value and what loralab supports."""
    init = _init_named(value)
    if init is None:
        raise LoraLabError(_no_init(value, INITS.values()))
    return init.name


def check_saved_init(value, where: str) -> None:
    """A saved adapter's `init_lora_weights` (`where`: its adapter_config.json): a registered init, and not
    one that changes the base weights (PiSSA): PEFT writes such a value only for factors saved unconverted,
    relative to the changed base rather than to the original model (a converted file, like loralab's own,
    says True). Other inits only chose the factors' start, so a trained adapter loads whichever it used."""
    init = _init_named(value)
    loadable = [i for i in INITS.values() if not i.changes_base_weight]
    if init is None and _start_only(value):
        return
    if init is None:
        raise LoraLabError(f"{where}: {_no_init(value, loadable)}")
    if init.changes_base_weight:
        raise LoraLabError(f"{where}: init_lora_weights={value!r}: these factors belong to the base weights "
                           f"{init.name} changed, not to the original model; re-save the adapter with PEFT's "
                           f"save_pretrained(path_initial_model_for_weight_conversion=...)")


# PEFT's init_lora_weights values (PEFT 0.21) that only choose where A and B start and leave the base weights
# alone: a trained adapter saved with one is a plain ΔW = B·A that loads like any other. loralab cannot start
# a new adapter this way (no registered Init), but it can load one. PEFT's other values change the base
# (PiSSA, OLoRA, CorDA; LoftQ replaces it) or the forward (MiCA) and stay refused.
PEFT_START_ONLY_INITS = (False, "eva", "orthogonal")


def _start_only(value) -> bool:
    return any(value is known if isinstance(known, bool) else value == known for known in PEFT_START_ONLY_INITS)


def _init_named(value):
    """The registered Init whose PEFT value `value` is, or None."""
    return next((init for init in INITS.values() if init.accepts_peft(value)), None)


def _no_init(value, supported) -> str:
    known = ", ".join(f"{i.peft_value!r} ({i.name})" for i in supported if i.peft_value is not None)
    why = (" (PEFT's random, non-zero start for debugging: every loralab init leaves the model's output "
           "unchanged)") if value is False else ""
    return f"init_lora_weights={value!r}{why} has no loralab init; loralab supports {known}"


def _layers_from_peft(value) -> list[int] | None:
    if value is None or value == []:
        return None
    return [value] if isinstance(value, int) and not isinstance(value, bool) else value


_CONVERT = {
    "lora_alpha": lambda v: v,
    "lora_dropout": lambda v: 0.0 if v is None else v,
    "target_modules": _rules_from_peft,
    "exclude_modules": lambda v: [] if v is None else _rules_from_peft(v),
    "use_rslora": lambda v: False if v is None else v,
    "init_lora_weights": init_from_peft,
    "layers_to_transform": _layers_from_peft,
}


def _normalised(field: str, value):
    """A loralab field's value as LoraConfig stores it, to compare with a converted PEFT value."""
    if field == "targets" and isinstance(value, str) and value != ALL_LINEAR:
        return [value]
    if field in ("alpha", "dropout") and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if field == "layers" and isinstance(value, int) and not isinstance(value, bool):
        return [value]
    return list(value) if isinstance(value, tuple) else value


def from_peft_config(data: dict, where: str) -> dict[str, Any]:
    """LoraConfig keyword arguments for a whole PEFT LoraConfig dict (an adapter_config.json, or
    `peft.LoraConfig(...).to_dict()`): PEFT's defaults for omitted fields, provenance fields skipped, the
    heads PEFT's task classes add to modules_to_save left to `task_type` (inject adds the model's own head).
    `where` names the source in messages."""
    if data.get("peft_type", "LORA") not in ("LORA", None):
        raise LoraLabError(f"{where} describes a {data['peft_type']} adapter; only LORA configs can be read")
    warn_unknown_keys(data, where, stacklevel=4)
    flags = set(variant_flags())
    known = set(RENAMED) | flags | {"r", "bias", "modules_to_save", "rank_pattern", "alpha_pattern",
                                    "layers_pattern", "fan_in_fan_out", "task_type", "target_parameters"}
    kwargs = {**PEFT_DEFAULTS}
    for key, value in data.items():
        if key in known:
            kwargs[key] = value
        elif key in PEFT_CONFIG_FIELDS - PEFT_PROVENANCE_FIELDS and not _is_off(key, value):
            raise LoraLabError(f"{where}: {unsupported_peft_field(key, value)}")
    task_type = _task_type(kwargs.get("task_type"))
    heads = PEFT_TASK_HEADS.get(task_type, ())
    saved = [m for m in kwargs.pop("modules_to_save", None) or [] if m not in heads]
    patterns = {key: {_key_from_peft(k): v for k, v in (kwargs.pop(key, None) or {}).items()}
                for key in ("rank_pattern", "alpha_pattern")}
    kwargs.update(patterns, modules_to_save=saved, task_type=task_type, bias=kwargs.get("bias") or "none")
    if kwargs.get("layers_pattern") in ("", []):
        kwargs["layers_pattern"] = None
    return peft_kwargs_to_loralab(kwargs)


def peft_object_dict(config: Any) -> dict:
    """The fields of a PEFT config object (`peft.LoraConfig(...)`, anything with PEFT's `to_dict()`) as a dict
    for `from_peft_config`; one LoraLabError line for any other object."""
    to_dict = getattr(config, "to_dict", None)
    data = to_dict() if callable(to_dict) else None
    if not isinstance(data, dict):
        raise LoraLabError(f"LoraConfig.from_peft takes a peft.LoraConfig, a dict of its fields, or the path of an "
                           f"adapter_config.json (or its folder), not {type(config).__name__}")
    return data


def warn_unknown_keys(data: dict, where: str, stacklevel: int = 3) -> None:
    """A warning per key that is no PEFT LoraConfig field, naming the nearest one (a typo such as "lora_alhpa"
    would otherwise silently fall back to a default)."""
    known = PEFT_CONFIG_FIELDS | set(variant_flags())
    for key in sorted(set(data) - known):
        near = difflib.get_close_matches(key, sorted(known), n=1)
        hint = f"; did you mean {near[0]!r}?" if near else " (not a PEFT LoraConfig field)"
        warnings.warn(f"{where}: unknown key {key!r} is ignored{hint}", stacklevel=stacklevel)


def _task_type(value) -> str | None:
    value = getattr(value, "value", value)          # peft.TaskType members are str enums
    return value or None


def _key_from_peft(key: str) -> str:
    """A PEFT pattern key as loralab spells it: "^(?:R)" (what to_peft writes for "re:R") back to "re:R";
    other keys mean the same in both rules and stay."""
    if key.startswith("^(?:") and key.endswith(")"):
        return REGEX_PREFIX + key[4:-1]
    return key


# ------------------------------------------------------------------------------------------------
# loralab -> PEFT
# ------------------------------------------------------------------------------------------------
def shared_peft_fields(config) -> dict[str, Any]:
    """The PEFT fields a config and a saved adapter's adapter_config.json state the same way."""
    return {
        "task_type": config.task_type,
        "lora_dropout": config.dropout,
        "bias": config.bias,
        "use_rslora": config.rslora,
        **{flag: variant == config.variant for flag, variant in variant_flags().items()},
    }


def to_peft_config(config) -> dict[str, Any]:
    """A PEFT LoraConfig dict meaning the same as `config` (`peft.LoraConfig(**d)` accepts it). LoraLabError
    for what PEFT cannot say: fused-projection slices, a variant or init PEFT lacks, layers with regex targets."""
    if config.fused_slices:
        raise LoraLabError("fused_slices has no PEFT equivalent (PEFT adapts a fused projection whole); a trained "
                           "adapter still saves in PEFT's layout (save_adapter writes the exact ΔW)")
    if config.variant not in variant_flags().values() and config.variant != "lora":
        raise LoraLabError(f"variant {config.variant!r} has no PEFT flag; PEFT cannot describe it")
    init = INITS[config.init].peft_value
    if init is None:
        raise LoraLabError(f"init {config.init!r} has no PEFT init_lora_weights value; PEFT cannot describe it")
    targets = _rules_to_peft(config.targets)
    if config.layers is not None and isinstance(targets, str):
        raise LoraLabError("PEFT applies layers_to_transform only to a list of target names, and these targets are "
                           "a regex or 'all-linear' in PEFT's terms; list plain target names to convert this config")
    return {
        "peft_type": "LORA",
        **shared_peft_fields(config),
        "r": config.r,
        "lora_alpha": _number(config.alpha),
        "target_modules": targets,
        "exclude_modules": _rules_to_peft(config.exclude) if config.exclude else None,
        "rank_pattern": {_key_to_peft(k): v for k, v in config.rank_pattern.items()},
        "alpha_pattern": {_key_to_peft(k): _number(v) for k, v in config.alpha_pattern.items()},
        "modules_to_save": list(config.modules_to_save) or None,
        "init_lora_weights": init,
        "layers_to_transform": list(config.layers) if config.layers is not None else None,
        "layers_pattern": _one_or_list(config.layers_pattern),
        "fan_in_fan_out": bool(config.fan_in_fan_out),
    }


def _rules_to_peft(rules) -> list[str] | str | None:
    """loralab target rules as PEFT's target_modules: a list when every rule is a plain name, else one regex
    matched against the full name (the rules joined with "|")."""
    if rules is None or rules == ALL_LINEAR:
        return rules
    if all(is_plain_name(rule) for rule in rules):
        return list(rules)
    regexes = [rule[len(REGEX_PREFIX):] if rule.startswith(REGEX_PREFIX) else
               (rf"(?:.*\.)?{_escaped(rule)}" if is_plain_name(rule) else rf"(?:.*\.)?(?:{rule})") for rule in rules]
    return regexes[0] if len(regexes) == 1 else "|".join(f"(?:{r})" for r in regexes)


def _one_or_list(values: list[str] | None) -> list[str] | str | None:
    """layers_pattern as PEFT users usually write it: one name as a string."""
    return values[0] if values and len(values) == 1 else (list(values) if values else None)


def _escaped(name: str) -> str:
    return name.replace(".", r"\.")


def _key_to_peft(key: str) -> str:
    """A loralab pattern key as a PEFT key: "re:R" (R matches the whole name) becomes "^(?:R)", which PEFT's
    re.match(rf"(.*\\.)?({key})$", name) reads the same way; plain names and PEFT regex keys stay."""
    return f"^(?:{key[len(REGEX_PREFIX):]})" if key.startswith(REGEX_PREFIX) else key


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value
