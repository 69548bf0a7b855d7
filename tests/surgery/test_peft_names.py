"""PEFT's LoraConfig names and files as loralab input: the constructor's aliases, from_peft / to_peft round trips
(checked against the installed peft's own LoraConfig), and the same layers, ranks and alphas as PEFT selects."""
import json
import re

import pytest

import loralab
from loralab import LoraConfig, LoraLabError
from loralab.testing import tiny_model

peft = pytest.importorskip("peft")


def test_peft_field_names_are_accepted_next_to_loralab_ones():
    assert LoraConfig(lora_alpha=32, target_modules=["query"]) == LoraConfig(alpha=32, targets=["query"])
    spelled_by_peft = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["q_proj", "v_proj"],
                                 exclude_modules=["lm_head"], use_rslora=True, use_dora=True,
                                 init_lora_weights="gaussian", layers_to_transform=1, layers_pattern="layers",
                                 bias="lora_only", modules_to_save=["score"], fan_in_fan_out=False,
                                 task_type=peft.TaskType.CAUSAL_LM, inference_mode=False, target_parameters=None)
    assert spelled_by_peft == LoraConfig(r=4, alpha=8, dropout=0.1, targets=["q_proj", "v_proj"], exclude=["lm_head"],
                                         rslora=True, variant="dora", init="gaussian", layers=[1],
                                         layers_pattern=["layers"], bias="lora_only", modules_to_save=["score"],
                                         task_type="CAUSAL_LM")
    # PEFT matches a target_modules string as a regex against the full name: loralab's "re:" rule
    assert LoraConfig(target_modules=r".*\.(q|v)_proj").targets == [r"re:.*\.(q|v)_proj"]
    assert LoraConfig(target_modules="all-linear").targets == "all-linear"
    assert LoraConfig(init_lora_weights=True).init == "kaiming"
    assert LoraConfig(init_lora_weights="pissa_niter_4").init == "pissa"   # loralab computes the SVD exactly
    # the same value in both spellings is fine
    assert LoraConfig(alpha=32, lora_alpha=32.0).alpha == 32.0
    assert LoraConfig(variant="dora", use_dora=True).variant == "dora"


@pytest.mark.parametrize("kwargs, message", [
    (dict(alpha=16, lora_alpha=32), "both alpha=16 and lora_alpha=32 are given; they are two spellings"),
    (dict(targets="query", target_modules="query"), "both targets='query' and target_modules='query'"),
    (dict(dropout=0.1, lora_dropout=0.2), "both dropout=0.1 and lora_dropout=0.2"),
    (dict(variant="dora", use_dora=False), "use_dora=False conflicts with variant='dora'"),
    (dict(init="pissa", init_lora_weights=True), "both init='pissa' and init_lora_weights=True"),
    (dict(init_lora_weights=False), "init_lora_weights=False .PEFT's random, non-zero start for debugging"),
    (dict(init_lora_weights="olora"), r"init_lora_weights='olora' has no loralab init; loralab supports True \(kaiming\)"),
    (dict(target_parameters=["experts.w1"]), "target_parameters .* is not supported"),
    (dict(task_type="SEQ_CLASSIFICATION"), "unknown task_type 'SEQ_CLASSIFICATION'; choose one of SEQ_CLS"),
    (dict(layers_to_transform=[-1]), "layers must be a non-empty list of layer indices"),
    (dict(layers_pattern="layers"), "layers_pattern only says where layer numbers are"),
    (dict(rank_pattern={"layers.(0": 2}), r"rank_pattern: 'layers.\(0' is not a valid regular expression"),
    (dict(use_dora="yes"), "use_dora must be True or False"),
])
def test_bad_or_conflicting_peft_names_are_one_clear_error(kwargs, message):
    with pytest.raises(LoraLabError, match=message):
        LoraConfig(**kwargs)


# Realistic PEFT configs, as users write them (peft.LoraConfig(...)).
PEFT_CONFIGS = {
    "bert-seq-cls": dict(task_type="SEQ_CLS", r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["query", "value"]),
    "llama-all-linear-dora": dict(task_type="CAUSAL_LM", r=16, lora_alpha=32, target_modules="all-linear",
                                  use_rslora=True, use_dora=True),
    "llama-regex-targets": dict(r=4, lora_alpha=8, target_modules=r".*\.(q_proj|v_proj)", exclude_modules=["lm_head"],
                                init_lora_weights="gaussian"),
    "llama-layers-and-patterns": dict(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                      layers_to_transform=[0], layers_pattern="layers",
                                      rank_pattern={"^model.layers.0.self_attn.q_proj": 4, "v_proj": 2},
                                      alpha_pattern={r"layers\.0\..*o_proj": 8}),
    "gpt2-fan-in-fan-out-pissa": dict(r=2, lora_alpha=4, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True,
                                      init_lora_weights="pissa", bias="lora_only", modules_to_save=["lm_head"]),
    "bert-exclude-regex": dict(r=4, lora_alpha=8, target_modules=["query", "key", "value", "dense"],
                               exclude_modules=r".*layer\.1\..*", task_type="FEATURE_EXTRACTION"),
}
# What a PEFT config says that a loralab config does not carry (where the adapter came from, how PEFT runs it).
PROVENANCE = {"peft_type", "base_model_name_or_path", "revision", "inference_mode", "auto_mapping", "peft_version"}


def _peft_dict(kwargs: dict) -> dict:
    """peft.LoraConfig(**kwargs) as JSON would store it (sets become sorted lists)."""
    d = peft.LoraConfig(**kwargs).to_dict()
    return json.loads(json.dumps(d, default=lambda v: sorted(v) if isinstance(v, (set, frozenset)) else str(v)))


def _described(d: dict) -> dict:
    """The fields of a PEFT config dict that describe the adapter (PEFT's own defaults filled in)."""
    full = _peft_dict({k: v for k, v in d.items() if k not in PROVENANCE and k in peft.LoraConfig.__dataclass_fields__})
    return {k: v for k, v in full.items() if k not in PROVENANCE}


@pytest.mark.parametrize("case", list(PEFT_CONFIGS))
def test_peft_config_round_trips_through_loralab(case):
    d = _peft_dict(PEFT_CONFIGS[case])
    config = LoraConfig.from_peft(d)
    back = config.to_peft()
    assert _described(back) == _described(d)
    assert LoraConfig.from_peft(back) == config


LORALAB_CONFIGS = {
    "bert-seq-cls": LoraConfig(r=4, alpha=8, dropout=0.1, targets=["query", "value"], task_type="SEQ_CLS"),
    "all-linear-rslora-dora": LoraConfig(r=16, alpha=32, targets="all-linear", rslora=True, variant="dora"),
    "regex-targets-and-exclude": LoraConfig(targets=[r"re:.*\.(q|v)_proj"], exclude=[r"re:.*layers\.1\..*"]),
    "layers-and-patterns": LoraConfig(targets=["q_proj", "v_proj"], layers=[0], layers_pattern=["layers"],
                                      rank_pattern={r"re:model\.layers\.0\.self_attn\.q_proj": 4, "v_proj": 2},
                                      alpha_pattern={r"layers\.0\..*v_proj": 8.0}, init="gaussian"),
    "gpt2-whole-c-attn-pissa": LoraConfig(r=2, alpha=4, targets=["c_attn"], fan_in_fan_out=True, init="pissa",
                                          bias="lora_only", modules_to_save=["lm_head"]),
}


@pytest.mark.parametrize("case", list(LORALAB_CONFIGS))
def test_loralab_config_round_trips_through_peft_and_peft_accepts_it(case):
    config = LORALAB_CONFIGS[case]
    d = config.to_peft()
    assert LoraConfig.from_peft(d) == config
    theirs = _peft_dict(d)                                   # the installed peft accepts every field as written
    assert {k: theirs[k] for k in d if k != "peft_type"} == json.loads(json.dumps({k: v for k, v in d.items()
                                                                                   if k != "peft_type"}))


def _peft_layers(model, d: dict) -> dict:
    """{module: (r, alpha)} of every layer PEFT adapts with config d."""
    peft_model = peft.get_peft_model(model, peft.LoraConfig(**d))
    return {name.removeprefix("base_model.model."): (m.r["default"], m.lora_alpha["default"])
            for name, m in peft_model.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer)}


def _our_layers(model, config: LoraConfig) -> dict:
    return {p.name: (p.r, p.alpha) for p in loralab.plan_injection(model, config)}


@pytest.mark.parametrize("family, d", [
    ("llama", dict(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"],
                   rank_pattern={r"layers\.1\..*_proj": 2, "^model.layers.0.self_attn.q_proj": 4},
                   alpha_pattern={"o_proj": 4, r".*\.0\.mlp\.up_proj": 3})),
    ("llama", dict(r=4, lora_alpha=8, target_modules=["q_proj", "gate_proj"], layers_to_transform=[1])),
    ("llama", dict(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"], layers_to_transform=0,
                   layers_pattern="layers")),
    ("llama", dict(r=4, lora_alpha=8, target_modules=r"model\.layers\.\d+\.self_attn\.(q|v)_proj",
                   exclude_modules=r".*\.1\.self_attn\.v_proj")),
    ("bert", dict(r=4, lora_alpha=8, target_modules=["query", "value", "dense"], exclude_modules=["output.dense"],
                  rank_pattern={"attention.self.query": 2}, layers_to_transform=[0, 1], layers_pattern=["layer"])),
])
def test_a_peft_config_adapts_the_same_layers_with_the_same_ranks_and_alphas_as_peft(family, d):
    assert _our_layers(tiny_model(family), LoraConfig.from_peft(d)) == _peft_layers(tiny_model(family), d)


def test_from_peft_applies_peft_defaults_and_refuses_features_loralab_lacks(tmp_path):
    assert LoraConfig.from_peft({"r": 4, "target_modules": ["query"]}).alpha == 8.0      # PEFT's default lora_alpha
    assert LoraConfig(r=4, target_modules=["query"]).alpha == 16.0                    # the constructor keeps loralab's
    with pytest.raises(LoraLabError, match=r"^PEFT config: PEFT's use_qalora=True is not supported by loralab: QA-LoRA"):
        LoraConfig.from_peft({"r": 4, "use_qalora": True})
    with pytest.raises(LoraLabError, match="describes a PREFIX_TUNING adapter"):
        LoraConfig.from_peft({"peft_type": "PREFIX_TUNING"})
    with pytest.warns(UserWarning, match="unknown key 'lora_alhpa' is ignored; did you mean 'lora_alpha'"):
        LoraConfig.from_peft({"lora_alhpa": 4})
    # the heads PEFT's SEQ_CLS class adds to modules_to_save are left to task_type (inject adds the model's head)
    saved = LoraConfig.from_peft({"task_type": "SEQ_CLS", "modules_to_save": ["classifier", "score", "pooler"]})
    assert saved.modules_to_save == ["pooler"] and saved.task_type == "SEQ_CLS"


def test_from_peft_reads_an_adapter_folder_or_its_config_file_and_from_json_recognises_it(tmp_path):
    model = peft.get_peft_model(tiny_model("bert"), peft.LoraConfig(task_type="SEQ_CLS", r=2, lora_alpha=4,
                                                                    target_modules=["query"]))
    model.save_pretrained(str(tmp_path / "peft"))
    expected = LoraConfig(r=2, alpha=4, targets=["query"], task_type="SEQ_CLS")
    assert LoraConfig.from_peft(tmp_path / "peft") == expected
    assert LoraConfig.from_peft(str(tmp_path / "peft" / "adapter_config.json")) == expected
    assert LoraConfig.from_json(tmp_path / "peft" / "adapter_config.json") == expected
    mixed = tmp_path / "mixed.json"      # loralab and PEFT names in one object: read by the constructor
    mixed.write_text(json.dumps({"alpha": 4, "target_modules": ["query"], "r": 2}))
    assert LoraConfig.from_json(mixed) == LoraConfig(r=2, alpha=4, targets=["query"])
    with pytest.raises(LoraLabError, match="cannot read LoRA config"):
        LoraConfig.from_peft(tmp_path / "nowhere")


def test_to_peft_refuses_what_peft_cannot_say():
    from loralab.core.variants import VARIANTS, Variant, register_variant

    with pytest.raises(LoraLabError, match="fused_slices has no PEFT equivalent"):
        LoraConfig(targets=["c_attn"], fused_slices={"c_attn": [True, False, True]}).to_peft()
    with pytest.raises(LoraLabError, match="PEFT applies layers_to_transform only to a list of target names"):
        LoraConfig(targets=["re:.*q_proj"], layers=[0]).to_peft()
    with pytest.raises(LoraLabError, match="PEFT applies layers_to_transform only"):
        LoraConfig(targets="all-linear", layers=[0]).to_peft()
    with VARIANTS.scoped():
        @register_variant
        class Scaled(Variant):
            name = "scaled"
        with pytest.raises(LoraLabError, match="variant 'scaled' has no PEFT flag"):
            LoraConfig(variant="scaled").to_peft()


def test_task_type_seq_cls_trains_and_saves_the_head_as_peft_does():
    model = tiny_model("bert")
    loralab.inject(model, LoraConfig(r=2, targets=["query"], task_type="SEQ_CLS"))
    config = loralab.adapters.state.adapter_state(model).configs["default"]
    assert config.modules_to_save == ["classifier"]
    assert model.classifier.trainable_copies["default"].weight.requires_grad
    distil = tiny_model("llama")                       # a causal LM has no head to add
    loralab.inject(distil, LoraConfig(r=2, targets=["q_proj"], task_type="CAUSAL_LM"))
    assert loralab.adapters.state.adapter_state(distil).configs["default"].modules_to_save == []


def test_pattern_keys_that_match_no_adapted_module_are_refused():
    model = tiny_model("llama")
    with pytest.raises(LoraLabError, match=re.escape("rank_pattern key 'layers\\\\.7\\\\..*' matches none of the 4 ")):
        loralab.inject(model, LoraConfig(targets=["q_proj", "v_proj"], rank_pattern={r"layers\.7\..*": 2}))
    with pytest.raises(LoraLabError, match="alpha_pattern key 'k_proj' matches none"):
        loralab.plan_injection(model, LoraConfig(targets=["q_proj"], alpha_pattern={"k_proj": 2}))
    plan = loralab.plan_injection(model, LoraConfig(targets=["q_proj"], alpha_pattern={"k_proj": 2}, strict=False))
    assert {p.alpha for p in plan} == {16.0}


@pytest.mark.parametrize("value", ["loftq", "olora", "eva", "corda"])
def test_peft_values_that_loralab_lacks_are_refused_by_name(value):
    expected = (f"init_lora_weights={value!r} has no loralab init; loralab supports True (kaiming), 'gaussian' "
                f"(gaussian), 'pissa' (pissa)")
    for make in (lambda: LoraConfig(init_lora_weights=value),
                 lambda: LoraConfig.from_peft({"peft_type": "LORA", "r": 2, "init_lora_weights": value})):
        with pytest.raises(LoraLabError) as caught:
            make()
        assert str(caught.value) == expected
    from loralab.core.inits import INITS, Init, register_init

    with INITS.scoped():                         # the init registry decides: registering one makes it accepted
        @register_init
        class Registered(Init):
            name = f"my-{value}"
            peft_value = value
        assert LoraConfig(init_lora_weights=value).init == f"my-{value}"


def test_from_peft_takes_a_peft_config_object():
    theirs = peft.LoraConfig(r=4, lora_alpha=16, lora_dropout=0.1, target_modules=["query", "value"],
                             task_type="SEQ_CLS", use_dora=True, layers_to_transform=[1], layers_pattern="layer")
    assert LoraConfig.from_peft(theirs) == LoraConfig(r=4, alpha=16, dropout=0.1, targets=["query", "value"],
                                                      task_type="SEQ_CLS", variant="dora", layers=[1],
                                                      layers_pattern=["layer"])
    assert LoraConfig.from_peft(peft.LoraConfig()).alpha == 8.0                      # PEFT's defaults, as a dict's
    with pytest.raises(LoraLabError, match=r"^peft.LoraConfig: PEFT's lora_bias=True is not supported by loralab"):
        LoraConfig.from_peft(peft.LoraConfig(lora_bias=True))
    with pytest.raises(LoraLabError, match=r"^LoraConfig.from_peft takes a peft.LoraConfig, a dict of its fields, or "
                                           r"the path of an adapter_config.json \(or its folder\), not int$"):
        LoraConfig.from_peft(3)


def _unmapped_peft_fields() -> list[str]:
    """Every field of the installed peft.LoraConfig that LoraConfig(...) neither has nor translates."""
    import dataclasses

    from loralab.surgery.peft_names import accepted_peft_names

    own = {f.name for f in dataclasses.fields(LoraConfig)}
    return sorted({f.name for f in dataclasses.fields(peft.LoraConfig)} - own - set(accepted_peft_names()))


def test_the_unmapped_fields_are_the_peft_features_loralab_lacks():
    assert "lora_bias" in _unmapped_peft_fields() and "use_qalora" in _unmapped_peft_fields()
    assert not {"lora_alpha", "use_dora", "target_modules", "r", "task_type"} & set(_unmapped_peft_fields())


@pytest.mark.parametrize("name", _unmapped_peft_fields())
def test_every_peft_field_loralab_does_not_support_is_refused_in_one_line_naming_it(name):
    with pytest.raises(LoraLabError) as info:
        LoraConfig(r=4, **{name: "on"})
    message = str(info.value)
    assert message.startswith(f"PEFT's {name}='on' is not supported by loralab: ") and "\n" not in message
    assert message.endswith("; remove it or set it to its default")


@pytest.mark.parametrize("given", [dict(lora_bias=False), dict(use_qalora=False), dict(qalora_group_size=16),
                                   dict(megatron_core="megatron.core"), dict(loftq_config={}), dict(eva_config=None),
                                   dict(peft_type=peft.PeftType.LORA)])
def test_an_unsupported_peft_field_at_its_default_asks_for_nothing_and_is_accepted(given):
    assert LoraConfig(r=4, **given) == LoraConfig(r=4)


def test_an_unknown_keyword_is_one_line_with_the_nearest_name():
    with pytest.raises(LoraLabError, match=r"^LoraConfig has no field 'lora_alhpa'; did you mean 'lora_alpha'\?$"):
        LoraConfig(lora_alhpa=4)
    with pytest.raises(LoraLabError, match=r"^LoraConfig has no field 'use_doraa'; did you mean 'use_dora'\?$"):
        LoraConfig(use_doraa=True)
    with pytest.raises(LoraLabError, match=r"^LoraConfig has no field 'zzz'; see help\(loralab.LoraConfig\) for its "
                                           r"fields$"):
        LoraConfig(zzz=1)
