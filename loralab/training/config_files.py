"""Run configs as files and `key=value` overrides: reading YAML/JSON, checking keys, merging layers, and
printing the resolved config.

    loralab train --config run.yaml lora.r=4 lr=1e-3 --print-config

A config file holds TrainConfig fields, the same keys as a run's config.json, with these sections:

    lora:               loralab.LoraConfig fields (r, alpha, targets, variant, ...)
    read_options:       loralab.data.readers.ReadOptions fields (format, text_column, ...)
    method_options:     the baseline method's own settings (any keys)
    scheduler_options:  the schedule's own settings (num_cycles, power, lr_end)

An override is KEY=VALUE. KEY is a top-level field (`lr`, `epochs`), or SECTION.FIELD (`lora.r`,
`read_options.text_column`); `train.` may prefix a top-level field (`train.lr` is `lr`). VALUE is read as a
YAML value: `4` an int, `1e-3` a float (numbers as YAML 1.2 reads them), `true`, `null`, `[query, value]`,
`{q_proj: 8}`; a string field keeps the text as typed unless it is quoted YAML (`prompt_template="Q: {prompt}\\n"`).
An unknown key is one error line naming the nearest known key.

Layers merge in order, each changing only the keys it names; a section merges key by key, so `lora.r=4`
keeps the file's `lora.alpha`.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import os
import re
import typing
from pathlib import Path
from typing import Any

from loralab.errors import LoraLabError

# Sections whose keys are checked against a config class (the others take any key).
SECTIONS = ("lora", "read_options", "method_options", "scheduler_options")
TRAIN_PREFIX = "train."
# transformers' TrainingArguments and PEFT's LoraConfig names for loralab's settings: what a user coming
# from them types first, suggested by name in the unknown-key error.
OTHER_SPELLINGS = {
    "learning_rate": "lr", "num_train_epochs": "epochs", "per_device_train_batch_size": "batch_size",
    "per_device_eval_batch_size": "eval_batch_size", "gradient_accumulation_steps": "grad_accum",
    "lr_scheduler_type": "scheduler", "lr_scheduler_kwargs": "scheduler_options", "max_seq_length": "max_length",
    "logging_steps": "log_every", "eval_steps": "eval_every", "save_steps": "checkpoint_every",
    "model_name_or_path": "model", "adam_epsilon": "eps", "num_epochs": "epochs",
    "lora.lora_alpha": "lora.alpha", "lora.lora_dropout": "lora.dropout", "lora.target_modules": "lora.targets",
    "lora.use_rslora": "lora.rslora", "lora.use_dora": "lora.variant", "lora.init_lora_weights": "lora.init",
}


# How deep a config may nest (mappings and lists inside each other). A run config needs four levels at most
# (settings, a section, a list, a fused_slices entry); the limit stops a file of 5,000 `[` long before Python's
# recursion limit, which PyYAML's composer and constructor would otherwise hit.
MAX_DEPTH = 64
# How many values a config may hold once its aliases are expanded. Aliases share one object, so reading is
# cheap, but everything that walks the settings (merging layers, printing, checking keys) visits each use:
# nine levels of ten aliases ("billion laughs") would be 10⁹ visits. Real configs hold a few hundred.
MAX_VALUES = 100_000


class RefusedStructure(LoraLabError):
    """A config whose structure loralab will not build: nested deeper than MAX_DEPTH, or an alias inside the
    anchor it names (a list or mapping containing itself). The caller prefixes the file or override."""


def yaml_loader() -> type:
    """PyYAML's safe loader reading numbers as YAML 1.2 does: `1e-3` and `5E+4` are floats (YAML 1.1 makes
    them strings), as they are in JSON and Python. It refuses (RefusedStructure) nesting deeper than MAX_DEPTH
    and recursive aliases (`a: &x [*x]`) while composing, before anything is built."""
    import yaml

    class Loader(yaml.SafeLoader):
        def __init__(self, stream):
            super().__init__(stream)
            self.open_anchors: list[str | None] = []        # the collections being composed, outermost first

        def compose_node(self, parent, index):
            event = self.peek_event()
            line = event.start_mark.line + 1
            if isinstance(event, yaml.AliasEvent) and event.anchor in self.open_anchors:
                raise RefusedStructure(f"the alias *{event.anchor} (line {line}) is used inside the anchor "
                                       f"&{event.anchor} it refers to, which would make a structure that contains "
                                       "itself; write the values out instead")
            if not isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                return super().compose_node(parent, index)
            if len(self.open_anchors) >= MAX_DEPTH:
                raise RefusedStructure(_too_deep(f" (line {line})"))
            self.open_anchors.append(event.anchor)
            try:
                return super().compose_node(parent, index)
            finally:
                self.open_anchors.pop()

        def compose_document(self):
            node = super().compose_document()
            if node is not None and _expanded_size(node, {}) > MAX_VALUES:
                raise RefusedStructure(f"holds more than {MAX_VALUES:,} values once its aliases are expanded; "
                                       "a run config needs a few hundred, so write the values out instead")
            return node

    float_pattern = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                                   |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                                   |[-+]?\.(?:inf|Inf|INF)
                                   |\.(?:nan|NaN|NAN))$""", re.X)
    Loader.yaml_implicit_resolvers = {key: [(tag, regexp) for tag, regexp in resolvers
                                            if tag != "tag:yaml.org,2002:float"]
                                      for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", float_pattern, list("-+0123456789."))
    return Loader


def _expanded_size(node, sizes: dict[int, int]) -> int:
    """How many YAML nodes `node` stands for with every alias expanded; `sizes` memoises shared nodes, so the
    count costs one visit per distinct node however often an alias repeats it."""
    if id(node) not in sizes:
        children = node.value if isinstance(node.value, list) else []
        flat = [part for child in children for part in (child if isinstance(child, tuple) else (child,))]
        sizes[id(node)] = 1 + sum(_expanded_size(child, sizes) for child in flat)
    return sizes[id(node)]


RECIPES_DIR = Path(__file__).resolve().parents[1] / "configs"


def recipes() -> dict[str, Path]:
    """{name: file} of the run configs shipped with loralab (loralab/configs/*.yaml)."""
    return {path.stem: path for path in sorted(RECIPES_DIR.glob("*.yaml"))}


def config_path(spec: str | os.PathLike) -> Path:
    """The config file `spec` names: a path, or the name of a shipped recipe (`sst2` -> .../configs/sst2.yaml)."""
    path = Path(spec)
    if path.exists() or path.suffix in (".yaml", ".yml", ".json") or os.sep in str(spec):
        return path
    shipped = recipes()
    if str(spec) in shipped:
        return shipped[str(spec)]
    raise LoraLabError(f"no config file {spec!r}, and no recipe of that name; give a YAML/JSON file or one of the "
                       f"shipped recipes: {', '.join(shipped)}")


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The settings in a YAML or JSON file (`.json` is read as JSON, anything else as YAML, which also reads
    JSON); one error line for a missing, unreadable or non-mapping file."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LoraLabError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LoraLabError(f"{path}: cannot read the config file ({exc})") from None
    try:
        data = _read_json_config(text) if path.suffix == ".json" else yaml.load(text, Loader=yaml_loader())
    except RefusedStructure as exc:
        raise LoraLabError(f"{path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise LoraLabError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        raise LoraLabError(f"{path}: not valid YAML ({getattr(exc, 'problem', None) or exc}{where})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LoraLabError(f"{path}: a config file holds settings as `key: value` lines, not a "
                           f"{type(data).__name__}")
    return data


def _too_deep(where: str = "") -> str:
    return (f"nested more than {MAX_DEPTH} levels deep{where}; a run config needs a few levels (settings, "
            "sections, lists)")


def _read_json_config(text: str) -> Any:
    """JSON text, refused (RefusedStructure) when nested deeper than MAX_DEPTH; the json module has no hook
    to stop earlier, so what is too deep for Python's own recursion limit is refused the same way."""
    try:
        data = json.loads(text)
    except RecursionError:
        raise RefusedStructure(_too_deep()) from None
    stack = [(data, 0)]                          # (value, how many collections hold it)
    while stack:
        value, outer = stack.pop()
        if isinstance(value, (dict, list)):
            if outer >= MAX_DEPTH:
                raise RefusedStructure(_too_deep())
            stack.extend((child, outer + 1) for child in (value.values() if isinstance(value, dict) else value))
    return data


# --------------------------------------------------------------------------------------------------
# Which keys exist
# --------------------------------------------------------------------------------------------------
def known_keys() -> dict[str, tuple[str, ...] | None]:
    """{"": TrainConfig fields, section: its class's fields (None: any key)}."""
    from loralab.data.readers import ReadOptions
    from loralab.surgery.config import LoraConfig
    from loralab.training.config import TrainConfig

    return {"": tuple(f.name for f in dataclasses.fields(TrainConfig)),
            # the constructor's parameters: fields and accepted old spellings (e.g. "dora")
            "lora": tuple(inspect.signature(LoraConfig).parameters),
            "read_options": tuple(f.name for f in dataclasses.fields(ReadOptions)),
            "method_options": None, "scheduler_options": None}


def _unknown(key: str, candidates: list[str], where: str) -> LoraLabError:
    near = [OTHER_SPELLINGS[key]] if key in OTHER_SPELLINGS else difflib.get_close_matches(key, candidates, n=1,
                                                                                           cutoff=0.6)
    hint = f"; did you mean {near[0]!r}?" if near else "; `loralab train --print-config` shows every setting"
    return LoraLabError(f"{where}unknown setting {key!r}{hint}")


def check_keys(data: dict[str, Any], where: str = "") -> None:
    """Every key of a settings dict (and of its lora / read_options sections) names a field; else one
    error line naming the nearest known key. `where` prefixes the message (e.g. "run.yaml: ")."""
    keys = known_keys()
    everything = list(keys[""]) + [f"{s}.{k}" for s, fields in keys.items() if s and fields for k in fields]
    for key, value in data.items():
        if key not in keys[""]:
            raise _unknown(key, everything, where)
        fields = keys.get(key)
        if key in SECTIONS and isinstance(value, dict) and fields is not None:
            for inner in value:
                if inner not in fields:
                    raise _unknown(f"{key}.{inner}", everything, where)


# --------------------------------------------------------------------------------------------------
# Overrides and layers
# --------------------------------------------------------------------------------------------------
def parse_override(text: str) -> tuple[tuple[str, ...], Any]:
    """`lora.r=4` -> (("lora", "r"), 4); the value is typed by the field it sets (see the module docstring)."""
    import yaml

    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise LoraLabError(f"{text!r} is not an override; write KEY=VALUE, e.g. lora.r=4 or lr=1e-3")
    if key.startswith(TRAIN_PREFIX):
        key = key[len(TRAIN_PREFIX):]
    path = tuple(key.split("."))
    if len(path) > 2 or (len(path) == 2 and path[0] not in SECTIONS):
        keys = known_keys()
        everything = list(keys[""]) + [f"{s}.{k}" for s, fields in keys.items() if s and fields for k in fields]
        raise _unknown(key, everything, "")
    try:
        value = yaml.load(raw, Loader=yaml_loader()) if raw.strip() else ""
    except RefusedStructure as exc:
        raise LoraLabError(f"override {key}: {exc}") from None
    except yaml.YAMLError:
        value = raw
    if _is_text_field(path) and not (isinstance(value, str) or (value is None and raw.strip() in ("null", "~"))):
        value = raw  # e.g. prompt_template={prompt}: YAML would read a mapping
    return path, value


def _is_text_field(path: tuple[str, ...]) -> bool:
    """Whether the field a key names holds a string (and nothing but a string or None)."""
    from loralab.data.readers import ReadOptions
    from loralab.training.config import TrainConfig

    owner = {1: TrainConfig, 2: {"read_options": ReadOptions}.get(path[0])}[len(path)]
    if owner is None:
        return False
    hint = typing.get_type_hints(owner).get(path[-1])
    return hint is not None and set(typing.get_args(hint) or (hint,)) <= {str, type(None)}


def apply_overrides(settings: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`settings` with each KEY=VALUE of `overrides` applied (a new dict; sections copied, not shared)."""
    layer: dict[str, Any] = {}
    for text in overrides:
        path, value = parse_override(text)
        if len(path) == 1:
            layer[path[0]] = value
        else:
            layer.setdefault(path[0], {})[path[1]] = value
    check_keys(layer)
    return merge_settings(settings, layer)


def merge_settings(base: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    """`base` updated by `layer`: top-level keys replace, sections (dicts) merge key by key. A layer naming
    `train_file` without `data` (or `data` without `train_file`) switches the data source: the other is
    cleared."""
    merged = {key: dict(value) if isinstance(value, dict) else value for key, value in base.items()}
    for key, value in layer.items():
        if key == "lora" and isinstance(value, dict):
            value = _loralab_lora_names(value)   # `lora_alpha` in one layer replaces `alpha` of another
            if isinstance(merged.get(key), dict):
                merged[key] = _loralab_lora_names(merged[key])
        if key in SECTIONS and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = dict(value) if isinstance(value, dict) else value
    for named, other in (("train_file", "data"), ("data", "train_file")):
        if layer.get(named) is not None and other not in layer:
            merged[other] = None
    return merged


def _loralab_lora_names(section: dict[str, Any]) -> dict[str, Any]:
    """A lora section with PEFT's field names (lora_alpha, use_dora, ...) spelt as loralab's, so that layers
    written in either spelling override each other field by field."""
    from loralab.surgery.peft_names import peft_kwargs_to_loralab

    return peft_kwargs_to_loralab(section)


def config_yaml(config) -> str:
    """A TrainConfig as YAML, every field spelt out: reading it back with --config gives the same config."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:  # "{prompt}\n" on one line, escaped
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style='"' if "\n" in value else None)

    Dumper.add_representer(str, text)
    return yaml.dump(config.to_dict(), Dumper=Dumper, sort_keys=False, allow_unicode=True, width=100,
                     default_flow_style=None)
