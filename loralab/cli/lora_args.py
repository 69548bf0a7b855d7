"""The LoRA flags, generated from LoraConfig's fields (--r, --alpha, --dropout, --targets, --exclude, --init,
--rslora, --variant, --bias, --modules-to-save, --no-strict), shared by every command that builds an
adapter (inspect, train, e2e, experiment). Dict fields (rank_pattern, alpha_pattern, fused_slices) are set
in a --lora-config file or with `lora.FIELD=VALUE` overrides (train)."""
from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import Any

from loralab.cli.dataclass_args import add_field_flags, given_fields
from loralab.cli.deprecated import add_deprecated

FLAG_FIELDS = ("r", "alpha", "dropout", "targets", "exclude", "layers", "layers_pattern", "init", "rslora",
               "variant", "bias", "modules_to_save", "strict")
# LoraConfig fields with no flag: PEFT file fields that loralab derives itself (task_type from the run's task,
# fan_in_fan_out from each layer's kind); they are read from --lora-config / PEFT files only.
FILE_ONLY_FIELDS = ("task_type", "fan_in_fan_out")
_TWEAKS = {
    "targets": {"metavar": "RULE", "help": "modules to adapt: suffixes like 'query', full names, 're:REGEX', or "
                                          "'all-linear'"},
    "exclude": {"metavar": "RULE"},
    "layers": {"metavar": "INDEX"},
    "layers_pattern": {"metavar": "REGEX"},
    "modules_to_save": {"metavar": "NAME"},
    "bias": {"choices": ("none", "all", "lora_only")},
}


def add_lora_arguments(parser: argparse.ArgumentParser, fields: Iterable[str] = FLAG_FIELDS,
                       shown_defaults: dict[str, Any] | None = None, lora_config_file: bool = True) -> None:
    """The "LoRA" group: a flag per LoraConfig field in `fields`, --lora-config, and the old --dora."""
    from loralab.surgery.config import LoraConfig

    fields = tuple(fields)
    group = parser.add_argument_group("LoRA")
    if lora_config_file:
        group.add_argument("--lora-config", metavar="FILE",
                           help="a LoraConfig as JSON (all of it: it replaces a --config file's lora section); "
                                "the flags below change its fields")
    # LoraConfig's targets=None means the architecture's preset; a command with another default names it
    shown_defaults = {"targets": "the architecture's preset, the paper's Wq and Wv", **(shown_defaults or {})}
    add_field_flags(group, LoraConfig, fields, _TWEAKS, shown_defaults)
    if "variant" in fields:
        add_deprecated(group, "--dora", dest="variant", new="--variant dora", const="dora")
    parser.set_defaults(_lora_fields=fields)


def lora_fields_given(args: argparse.Namespace) -> dict[str, Any]:
    """{LoraConfig field: value} of the LoRA flags given (LoraConfig reads `--targets all-linear`'s list)."""
    return given_fields(args, getattr(args, "_lora_fields", FLAG_FIELDS))


def lora_file_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The LoraConfig fields of --lora-config (every field: the file is a whole config), or {}."""
    from loralab.surgery.config import LoraConfig

    path = getattr(args, "lora_config", None)
    return LoraConfig.from_json(path).to_dict() if path else {}


def lora_config_from_args(args: argparse.Namespace, **defaults: Any):
    """A validated LoraConfig: `defaults` (fields this command decides), then --lora-config, then the flags."""
    from loralab.surgery.config import LoraConfig

    return LoraConfig(**{**defaults, **lora_file_settings(args), **lora_fields_given(args)})
