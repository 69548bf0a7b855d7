"""The architecture table against the installed transformers: every registered family is built on the
meta device from its config, and each table entry must name real modules of the right kind, fused slice
widths must add up to the projection and equal what the config implies, heads must exist on the family's
classification model and be hit by no role."""
import pytest
import torch
import transformers
from transformers.models.auto import modeling_auto

from loralab import LoraLabError
from loralab.core.kinds import kind_of
from loralab.core.targeting import matches
from loralab.models.architectures import (ARCHITECTURES, Architecture, FusedProjection, architecture, architecture_for,
                                          architectures, model_types, register_architecture, task_head_modules)

# The families the issue lists; every one must stay in the table.
REQUIRED = ("bert roberta xlm-roberta camembert electra mpnet ernie distilbert deberta-v2 gpt2 llama mistral mixtral "
            "qwen2 qwen3 gemma gemma2 gemma3_text olmo olmo2 phi3 granite smollm3 gpt_neo gptj opt t5 mt5 umt5 bart "
            "mbart whisper marian pegasus vit deit dinov2").split()

_ONE_LAYER = ("num_hidden_layers", "n_layer", "num_layers", "num_decoder_layers", "encoder_layers", "decoder_layers")
PHI3_MEDIUM = dict(hidden_size=5120, num_attention_heads=40, num_key_value_heads=10, intermediate_size=17920)

# (case id, model_type, config overrides, which naming must be picked: 0 the entry, i the i-th alternative,
#  {fused module: widths the config implies, written out by hand})
CASES = [(t, t, {}, 0, {}) for t in model_types() if t not in ("gpt2", "phi3", "mt5", "umt5")] + [
    ("gpt2", "gpt2", dict(n_embd=96, n_head=6), 0, {"c_attn": (96, 96, 96)}),
    ("phi3-medium", "phi3", PHI3_MEDIUM, 0, {"qkv_proj": (5120, 1280, 1280), "gate_up_proj": (17920, 17920)}),
    ("phi3-mini", "phi3", dict(hidden_size=3072, num_attention_heads=32, num_key_value_heads=32,
                               intermediate_size=8192), 0, {"qkv_proj": (3072,) * 3, "gate_up_proj": (8192, 8192)}),
    ("t5-v1.1", "t5", dict(feed_forward_proj="gated-gelu"), 1, {}),
    ("mt5", "mt5", {}, 1, {}), ("umt5", "umt5", {}, 1, {}),
]
# Namings no installed-transformers config produces, with the reason they stay in the table.
UNTESTED_NAMINGS = {
    ("vit", 1): "ViT/DeiT attention names of transformers < 5.x (query/key/value, intermediate/output.dense)",
    ("dinov2", 1): "DINOv2 attention names of transformers < 5.x (query/key/value, attention.output.dense)",
}


def _config(model_type: str, overrides: dict):
    try:
        config = transformers.AutoConfig.for_model(model_type, **overrides)
    except ValueError as exc:
        pytest.skip(f"transformers {transformers.__version__} does not provide {model_type!r}: {exc}")
    for key in _ONE_LAYER:
        if isinstance(getattr(config, key, None), int):
            setattr(config, key, 1)
    return config


def _classification_class(model_type: str):
    for mapping in ("SEQUENCE_CLASSIFICATION", "IMAGE_CLASSIFICATION", "AUDIO_CLASSIFICATION"):
        name = getattr(modeling_auto, f"MODEL_FOR_{mapping}_MAPPING_NAMES").get(model_type)
        if name:
            return getattr(transformers, name[0] if isinstance(name, tuple) else name)
    return None


def _projections(model, rule: str) -> dict:
    """{name: module} selected by a rule, and the names it selects that are not projections (Linear/Conv1D)."""
    hits = {n: m for n, m in model.named_modules() if n and matches(n, rule)}
    wrong = [n for n, m in hits.items() if kind_of(m) is None or kind_of(m).name not in ("linear", "conv1d-transposed")]
    assert not wrong, f"{rule!r} selects modules that are not projections: {wrong[:3]}"
    return hits


@pytest.mark.parametrize("case, model_type, overrides, naming, widths", CASES, ids=[c[0] for c in CASES])
def test_entry_names_real_modules_on_the_meta_device(case, model_type, overrides, naming, widths):
    config = _config(model_type, overrides)
    with torch.device("meta"):
        model = transformers.AutoModel.from_config(config)
    family = architecture(model_type)
    arch = architecture_for(model)
    assert arch is (family, *family.alternatives)[naming]
    for role in arch.roles:
        assert _projections(model, arch.rule(role)), f"{model_type} role {role!r}: {arch.rule(role)!r} matches nothing"
    assert {f.module for f in arch.fused} == set(widths)
    for fused in arch.fused:
        assert fused.widths(config) == widths[fused.module]
        for name, module in _projections(model, fused.module).items():
            assert kind_of(module).shape(module)[0] == sum(widths[fused.module]), name


@pytest.mark.parametrize("case, model_type, overrides, naming, widths", CASES, ids=[c[0] for c in CASES])
def test_head_exists_on_the_classification_model_and_no_role_hits_it(case, model_type, overrides, naming, widths):
    cls = _classification_class(model_type)
    if cls is None:
        pytest.skip(f"transformers has no classification model for {model_type!r}")
    with torch.device("meta"):
        model = cls(_config(model_type, {**overrides, "num_labels": 3}))
    arch = architecture_for(model)
    assert task_head_modules(model) == arch.head and arch.head
    head_names = set()
    for rule in arch.head:
        hits = [n for n, _ in model.named_modules() if n and matches(n, rule)]
        assert hits, f"{model_type} head {rule!r} matches nothing in {cls.__name__}"
        head_names.update(hits)
    for rule in arch.rules():
        inside = [n for n, _ in model.named_modules() if matches(n, rule) and any(n.startswith(h + ".") for h in head_names)]
        assert not inside, f"{model_type} rule {rule!r} also selects the fresh head: {inside}"


def test_every_listed_family_is_in_the_table_and_every_naming_is_checked():
    assert set(REQUIRED) <= set(model_types())
    checked = {(t, n) for _, t, _, n, _ in CASES}
    for arch in architectures():
        for i in range(1 + len(arch.alternatives)):
            assert any((t, i) in checked for t in arch.model_types) or (arch.model_types[0], i) in UNTESTED_NAMINGS


def test_phi3_was_q_proj_v_proj_and_is_now_fused():
    arch = architecture("phi3")
    assert arch.rule("q") == arch.rule("v") == "qkv_proj" and arch.rule("gate") == "gate_up_proj"
    config = transformers.AutoConfig.for_model("phi3", **PHI3_MEDIUM)
    targets = arch.lora_targets(["q", "v"], config)
    assert targets.targets == ["qkv_proj"]
    assert targets.fused_slices == {"qkv_proj": {"adapt": [True, False, True], "widths": [5120, 1280, 1280]}}
    assert arch.lora_targets(["up", "o"], config).fused_slices == {"gate_up_proj": [False, True]}   # equal widths


def test_opt_output_projection_is_out_proj():
    assert architecture("opt").rule("o") == "out_proj"
    assert architecture("gpt_neo").rule("o") == "out_proj" and architecture("gptj").rule("o") == "out_proj"


def test_registration_rejects_ambiguous_entries():
    with pytest.raises(LoraLabError, match="already in the architecture table"):
        register_architecture(Architecture(model_types=("bert",), q="query"))
    with pytest.raises(LoraLabError, match="named twice"):
        Architecture(model_types=("x",), q="q_proj", fused=(FusedProjection("qkv", ("q", "k", "v")),))
    with pytest.raises(LoraLabError, match="distinct roles"):
        FusedProjection("qkv", ("q", "o"))
    with pytest.raises(LoraLabError, match="tuple of model_type"):
        Architecture(model_types="llama", q="q_proj")
    with pytest.raises(LoraLabError, match=r"ragged lists \['gpt2'\], which are not among its model_types"):
        Architecture(model_types=("x",), q="q_proj", ragged=("x", "gpt2"))
    with pytest.raises(LoraLabError, match="has no 'gate' projection; roles it has: q, k, v, o, up, down"):
        architecture("bert").lora_targets(["gate"], None)


@pytest.fixture
def scoped_table():
    with ARCHITECTURES.scoped():                                         # the registrations end with the test
        yield
    assert "loralab-test" not in ARCHITECTURES


def test_registering_a_family_is_enough_for_presets_and_roles(scoped_table):
    from loralab.budget.roles import resolve_targets
    from loralab.surgery.presets import preset_for

    register_architecture(Architecture(model_types=("loralab-test",), q="wq", k="wk", v="wv", o="wo", head=("head",)))
    model = torch.nn.Module()
    model.config = transformers.PretrainedConfig()
    model.config.model_type = "loralab-test"
    assert preset_for(model).targets == ("wq", "wv") and task_head_modules(model) == ("head",)
    assert resolve_targets(model, ["k", "o", "extra"]).targets == ["wk", "wo", "extra"]
    assert architecture("loralab-test").roles == ("q", "k", "v", "o")


def test_the_table_is_a_registry_all_or_nothing_with_replace(scoped_table):
    first = register_architecture(Architecture(model_types=("loralab-test",), q="wq"))
    with pytest.raises(LoraLabError, match="model type 'loralab-test' is already in the architecture table; pass "
                                           "replace=True"):
        register_architecture(Architecture(model_types=("loralab-new", "loralab-test"), q="x"))
    assert "loralab-new" not in ARCHITECTURES                          # nothing added
    second = register_architecture(Architecture(model_types=("loralab-test",), q="wq2"), replace=True)
    assert architecture("loralab-test") is second and architectures().count(first) == 0
    with pytest.raises(ValueError, match="architecture 'loralab-test' is already registered"):
        ARCHITECTURES.add("loralab-test", first)
