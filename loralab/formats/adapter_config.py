"""The two descriptions that travel with an adapter's tensors: `adapter_config.json` (PEFT's LoraConfig
fields) and loralab's own metadata in the safetensors header ({"config": LoraConfig.to_dict(), "sliced":
{module: fused-slice description}, "base": ModelSource.record() of the base model, when known, "trained_on":
how the frozen base it trained on stored its weights, see base_storage}) — how they are written, and how they
are read back and checked.

A variant appears in PEFT's config only through its `peft_flag` (use_dora); loralab's metadata names it.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

from loralab.core.variants import VARIANTS
from loralab.errors import LoraLabError
from loralab.precision import dtype_name
from loralab.quantization.base import QuantizedLinear
from loralab.surgery.config import BIAS_MODES, LoraConfig, checked_fused_slices, stored_variant
from loralab.surgery.peft_names import check_saved_init, shared_peft_fields, variant_flags, warn_unknown_keys

METADATA_KEY = "loralab"

# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------
def sliced_metadata(slices, widths, r: int, alpha: float) -> dict:
    """How loralab's metadata describes one fused-slice adapter (so loading restores its slices); the
    widths only when they differ (files keep the 0.1 form for equal slices)."""
    entry = {"slices": list(slices), "r": r, "alpha": alpha}
    if len(set(widths)) > 1:
        entry["widths"] = list(widths)
    return entry


def file_metadata(config: LoraConfig, sliced: dict[str, dict], base: dict | None = None,
                  trained_on: dict[str, str] | None = None) -> dict[str, str]:
    """The safetensors header metadata of an adapter file: loralab's config, fused-slice descriptions and,
    when known, the base model's portable record (loralab.models.ModelSource.record()) and how the frozen
    base the adapter trained on stored its weights (`trained_on`, see base_storage)."""
    meta = {"config": config.to_dict(), "sliced": sliced, **({"base": base} if base else {}),
            **({"trained_on": trained_on} if trained_on else {})}
    return {"format": "pt", METADATA_KEY: json.dumps(meta)}


def base_storage(model) -> dict[str, str]:
    """How `model`'s frozen base stores its weights, recorded with each adapter saved from it as "trained_on"
    (absent in older files and in PEFT's): {"quantize": the scheme of its quantized Linear layers ("nf4",
    "int8", ...; "none"), "dtype": its other frozen weights' dtype ("fp32", "bf16", "fp16")}.
    `loralab merge` compares it with the base it merges into: the same ΔW on other base weights is another
    model."""
    from collections import Counter

    schemes = sorted({m.scheme.name for m in model.modules() if isinstance(m, QuantizedLinear)})
    dtypes = Counter(p.dtype for p in model.parameters() if p.is_floating_point() and not p.requires_grad)
    record = {"quantize": "+".join(schemes) or "none"}
    if dtypes:
        record["dtype"] = dtype_name(dtypes.most_common(1)[0][0])
    return record


def peft_config(config: LoraConfig, rank_pattern: dict, alpha_pattern: dict, saved_names: list[str],
                 fan_in_fan_out: bool, base_model_name_or_path: str | None, task_type: str | None) -> dict:
    """adapter_config.json: PEFT's fields. One rank/alpha for the common case keeps it readable; patterns
    only where a module differs. Each registered variant's PEFT flag says whether this adapter uses it."""
    r0 = max(set(rank_pattern.values()), key=list(rank_pattern.values()).count)
    a0 = max(set(alpha_pattern.values()), key=list(alpha_pattern.values()).count)
    return {
        "peft_type": "LORA",
        **shared_peft_fields(config),
        "task_type": task_type,
        "base_model_name_or_path": base_model_name_or_path,
        "r": r0,
        "lora_alpha": a0,
        "target_modules": sorted(rank_pattern),
        "exclude_modules": None,
        "rank_pattern": {n: r for n, r in rank_pattern.items() if r != r0},
        "alpha_pattern": {n: a for n, a in alpha_pattern.items() if a != a0},
        "modules_to_save": saved_names or None,
        "init_lora_weights": True,
        "fan_in_fan_out": fan_in_fan_out,
        "inference_mode": True,
    }


def task_type_of(model) -> str | None:
    """PEFT's task_type for a transformers model, read from transformers' own tables of task classes
    (BertForSequenceClassification -> "SEQ_CLS", LlamaForCausalLM -> "CAUSAL_LM"); None for other models."""
    from transformers.models.auto import modeling_auto as auto

    tables = {"SEQ_CLS": auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
              "CAUSAL_LM": auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
              "TOKEN_CLS": auto.MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES,
              "QUESTION_ANS": auto.MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES,
              "SEQ_2_SEQ_LM": auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES}
    name = type(model).__name__
    for task_type, table in tables.items():
        if any(name == value or (isinstance(value, (tuple, list)) and name in value) for value in table.values()):
            return task_type
    return None



# ------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------
def read_peft_config(config_path: Path) -> dict:
    """adapter_config.json, with the fields loralab reads checked (one line per problem) and unknown keys
    warned about, naming the nearest PEFT field."""
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LoraLabError(f"{config_path} is not valid JSON ({exc}); the file is corrupted") from None
    if not isinstance(config, dict):
        raise LoraLabError(f"{config_path} must hold a JSON object, found {json_kind(config)}")
    peft_type = config.get("peft_type", "LORA")
    if peft_type != "LORA":
        raise LoraLabError(f"{config_path} describes a {peft_type} adapter; only LORA adapters can be loaded")
    warn_unknown_keys(config, str(config_path), stacklevel=4)
    if config.get("init_lora_weights") is not None:
        check_saved_init(config["init_lora_weights"], str(config_path))
    flags = set(variant_flags())
    checks = {**_CONFIG_CHECKS, **{flag: _CONFIG_CHECKS["use_rslora"] for flag in flags}}
    for key, (wanted, ok) in checks.items():
        if key in config and not ok(config[key]):
            raise LoraLabError(f"{config_path}: {key} must be {wanted}, got {config[key]!r}; fix the file or "
                               f"re-save the adapter")
    return config


def json_kind(value) -> str:
    """What a parsed JSON value is, for messages: "a list", "a string", "a number", "a boolean", "null"."""
    kinds = ((dict, "an object"), (list, "a list"), (str, "a string"), (bool, "a boolean"), ((int, float), "a number"))
    return "null" if value is None else next(name for types, name in kinds if isinstance(value, types))


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _positive_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


_CONFIG_CHECKS: dict[str, tuple[str, Callable[[object], bool]]] = {
    "r": ("a positive integer", _positive_int),
    "lora_alpha": ("a positive number", _positive_number),
    "lora_dropout": ("a number in [0, 1) or null",
                     lambda v: v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1)),
    "use_rslora": ("true, false or null", lambda v: v is None or isinstance(v, bool)),
    "rank_pattern": ("an object of positive integers or null",
                     lambda v: v is None or (isinstance(v, dict) and all(map(_positive_int, v.values())))),
    "alpha_pattern": ("an object of positive numbers or null",
                      lambda v: v is None or (isinstance(v, dict) and all(map(_positive_number, v.values())))),
    "bias": (f"one of {list(BIAS_MODES)} or null", lambda v: v is None or v in BIAS_MODES),
    "modules_to_save": ("a list of module names or null",
                        lambda v: v is None or (isinstance(v, list) and all(isinstance(m, str) for m in v))),
}


def read_metadata(metadata: dict[str, str], weights_path: Path) -> dict:
    """loralab's own description in the safetensors header ({} for PEFT's files), checked."""
    if METADATA_KEY not in metadata:
        return {}
    try:
        meta = json.loads(metadata[METADATA_KEY])
        if not isinstance(meta, dict) or not isinstance(meta.get("config", {}), dict):
            raise ValueError("not a JSON object with a config object")
        sliced = meta.get("sliced", {})
        if not isinstance(sliced, dict):
            raise ValueError("'sliced' is not an object")
        if not isinstance(meta.get("base", {}), dict):
            raise ValueError("'base' is not an object")
        trained_on = meta.get("trained_on", {})
        if not (isinstance(trained_on, dict) and all(isinstance(v, str) for v in trained_on.values())):
            raise ValueError("'trained_on' is not an object of strings")
        for module, info in sliced.items():
            if not (isinstance(info, dict) and _positive_int(info.get("r")) and _positive_number(info.get("alpha"))):
                raise ValueError(f"bad fused-slice entry for {module}: {info!r}")
            checked_fused_slices(module, fused_slices_value(info))
    except (ValueError, LoraLabError) as exc:
        raise LoraLabError(f"{weights_path}: the loralab metadata in its header is corrupted ({exc}); "
                           f"re-save the adapter") from None
    return meta


def fused_slices_value(info: dict) -> list[bool] | dict:
    """A sliced-metadata entry as a LoraConfig.fused_slices value (files before 0.2 have no widths: equal)."""
    if "widths" in info:
        return {"adapt": info.get("slices"), "widths": info["widths"]}
    return info.get("slices")


def variant_of(peft_config: dict, meta: dict) -> str:
    """The variant an adapter file uses: loralab's metadata names it; PEFT's files say it with a flag (use_dora)."""
    named = stored_variant(meta.get("config") or {})
    if named:
        return named
    return next((v.name for v in VARIANTS.values() if v.peft_flag and peft_config.get(v.peft_flag)), "lora")
