"""Injection: presets per family, target rules, strictness, dry run, freezing, bias modes, modules_to_save."""
import pytest
import torch
from torch import nn

import loralab
from loralab import LoraConfig, LoraLabError
from loralab.testing import FAMILIES, model_output, tiny_inputs, tiny_model

# family -> (number of adapted modules with the preset, suffix of the first one)
PRESET_EXPECTED = {
    "bert": (4, "attention.self.query"), "roberta": (4, "attention.self.query"), "gpt2": (2, "attn.c_attn"),
    "llama": (4, "self_attn.q_proj"), "mistral": (4, "self_attn.q_proj"), "qwen2": (4, "self_attn.q_proj"),
    "opt": (4, "self_attn.v_proj"), "t5": (12, "SelfAttention.q"), "vit": (4, "attention.q_proj"),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_preset_adapts_wq_wv_and_output_is_unchanged(family):
    model = tiny_model(family)
    inputs = tiny_inputs(model)
    before = model_output(model, inputs)
    plan = loralab.plan_injection(model, LoraConfig(r=4))
    loralab.inject(model, LoraConfig(r=4))
    names = [n for n, _ in loralab.lora_layers(model)]
    count, suffix = PRESET_EXPECTED[family]
    assert len(names) == count and names[0].endswith(suffix)
    assert torch.equal(model_output(model, inputs), before)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == sum(p.num_params for p in plan)


def test_parameter_count_is_2_L_d_r_per_matrix_type():
    model = tiny_model("bert")          # hidden 32, 2 layers; Wq and Wv
    loralab.inject(model, LoraConfig(r=4))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 2 * (2 * 2) * 32 * 4


def test_gpt2_preset_adapts_q_and_v_slices_of_c_attn():
    model = tiny_model("gpt2")          # n_embd 32: c_attn is 32 -> 96
    plan = loralab.plan_injection(model, LoraConfig(r=2))
    assert [p.slices for p in plan] == [(True, False, True)] * 2
    assert all(p.num_params == 2 * 2 * 32 * 2 for p in plan)   # q and v: 2·d·r each


def test_plan_works_on_meta_device():
    from transformers import GPT2Config, GPT2Model
    with torch.device("meta"):
        model = GPT2Model(GPT2Config(n_embd=1024, n_layer=24, n_head=16))    # GPT-2 medium
    plan = loralab.plan_injection(model, LoraConfig(r=4))
    assert sum(p.num_params for p in plan) == 393_216     # the paper's "0.35M" (formula: 0.39M)


def test_target_rules_suffix_exact_regex_and_exclude():
    model = tiny_model("llama")
    full = "model.layers.1.self_attn.k_proj"
    plan = loralab.plan_injection(model, LoraConfig(targets=["re:.*\\.(q|o)_proj", full], exclude=["layers.0.self_attn.o_proj"]))
    assert sorted(p.name for p in plan) == sorted([
        "model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj",
        "model.layers.1.self_attn.o_proj", full])


def test_all_linear_skips_output_head():
    model = tiny_model("llama")
    names = {p.name for p in loralab.plan_injection(model, LoraConfig(targets="all-linear"))}
    assert len(names) == 2 * 7 and "lm_head" not in names     # q,k,v,o,gate,up,down per layer


def test_unknown_target_lists_nearest_names():
    model = tiny_model("llama")
    with pytest.raises(LoraLabError, match=r"target 'q_prj' matches no module .*nearest module names: .*q_proj"):
        loralab.inject(model, LoraConfig(targets=["q_prj"]))
    with pytest.raises(LoraLabError, match="matches no adaptable layer"):
        loralab.inject(model, LoraConfig(targets=["self_attn"]))
    assert not list(loralab.lora_layers(model))      # nothing half-done


def test_plain_pytorch_model_needs_targets():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(LoraLabError, match="no transformers config"):
        loralab.inject(model, LoraConfig())
    with pytest.warns(UserWarning, match=r"r=2 is not below min\(d, k\)=2 for 2: ΔW is no longer low-rank"):
        loralab.inject(model, LoraConfig(targets=["0", "2"], r=2))
    assert [n for n, _ in loralab.lora_layers(model)] == ["0", "2"]


def test_rank_and_alpha_patterns_apply_per_module():
    model = tiny_model("bert")
    loralab.inject(model, LoraConfig(r=4, rank_pattern={"layer.1.attention.self.value": 2}, alpha_pattern={"query": 1}))
    layers = dict(loralab.lora_layers(model))
    assert layers["bert.encoder.layer.1.attention.self.value"].lora_adapters["default"].r == 2
    assert layers["bert.encoder.layer.0.attention.self.query"].lora_adapters["default"].scale == 0.25
    assert layers["bert.encoder.layer.0.attention.self.value"].lora_adapters["default"].scale == 4.0


@pytest.mark.parametrize("bias, expected", [("none", 0), ("lora_only", 4 * 32), ("all", None)])
def test_bias_modes(bias, expected):
    model = tiny_model("bert")
    all_bias = sum(p.numel() for n, p in model.named_parameters() if n.endswith("bias"))
    loralab.inject(model, LoraConfig(r=4, bias=bias))
    trained_bias = sum(p.numel() for n, p in model.named_parameters() if n.endswith("bias") and p.requires_grad)
    assert trained_bias == (all_bias if expected is None else expected)


def test_modules_to_save_trains_a_copy_and_summary_line():
    model = tiny_model("bert")
    loralab.inject(model, LoraConfig(r=4, modules_to_save=["classifier"]))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "classifier.trainable_copies.default.weight" in trainable
    assert "classifier.original_module.weight" not in trainable
    assert model.classifier.out_features == 3                    # attribute access passes through
    n_train = 4 * (4 * 32 + 32 * 4) + 3 * 32 + 3      # 4 adapted matrices + the head copy
    assert loralab.trainable_summary(model).startswith(f"trainable params: {n_train:,} || all params: ")


def test_second_adapter_and_bad_names():
    model = tiny_model("bert")
    loralab.inject(model, LoraConfig(r=4))
    with pytest.raises(LoraLabError, match="already exists"):
        loralab.inject(model, LoraConfig(r=4))
    with pytest.raises(LoraLabError, match="without dots"):
        loralab.inject(model, LoraConfig(r=4), adapter="a.b")
    loralab.inject(model, LoraConfig(r=2, targets=["query"]), adapter="second")
    layer = dict(loralab.lora_layers(model))["bert.encoder.layer.0.attention.self.query"]
    assert set(layer.lora_adapters) == {"default", "second"}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".second." in n for n in trainable)


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, [type(m) for m in model.modules()]


def _assert_untouched(model, snapshot):
    tensors, types = snapshot
    assert [type(m) for m in model.modules()] == types and not hasattr(model, "loralab_state")
    assert model.state_dict().keys() == tensors.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in tensors.items())


def test_pissa_rank_above_min_d_k_is_refused_before_any_layer_changes():
    model = tiny_model("llama")              # v_proj: 32 -> 16 (2 key/value heads of 8)
    before = _snapshot(model)
    config = LoraConfig(r=4, init="pissa", targets=["q_proj", "v_proj"], rank_pattern={"layers.1.self_attn.v_proj": 17})
    with pytest.raises(LoraLabError, match=r"cannot adapt model.layers.1.self_attn.v_proj: PiSSA needs r <= "
                                           r"min\(d, k\) = 16 singular vectors, got r=17"):
        loralab.inject(model, config)
    _assert_untouched(model, before)


def test_a_failure_on_the_last_layer_undoes_the_whole_injection(monkeypatch):
    from loralab.core.inits import PiSSA

    model = tiny_model("llama")
    before = _snapshot(model)
    calls = []
    original = PiSSA.init

    def failing_on_the_fourth(self, layer, f):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("out of memory (simulated)")
        original(self, layer, f)

    monkeypatch.setattr(PiSSA, "init", failing_on_the_fourth)
    with pytest.raises(RuntimeError, match="simulated"):
        loralab.inject(model, LoraConfig(r=4, init="pissa", targets=["q_proj", "v_proj"], modules_to_save=["lm_head"]))
    assert len(calls) == 4                   # three layers had their W0 rewritten before the failure
    _assert_untouched(model, before)


def test_inject_refuses_while_another_adapter_is_merged():
    model = tiny_model("bert")
    loralab.inject(model, LoraConfig(r=4), adapter="a")
    loralab.merge(model)
    before = _snapshot(model)[0]
    with pytest.raises(LoraLabError, match=r"adapter\(s\) 'a' are merged into the base weights; call "
                                           r"loralab.unmerge\(model\) first"):
        loralab.inject(model, LoraConfig(r=2), adapter="b")
    assert loralab.list_adapters(model) == ["a"] and loralab.is_merged(model)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


class FusedQKV(nn.Module):
    """Grouped-query attention's fused projection: 32 query rows, 8 key rows, 8 value rows."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.qkv_proj = nn.Linear(32, 48)

    def forward(self, x):
        return self.qkv_proj(x)


def test_fused_slices_of_unequal_widths():
    gqa = {"qkv_proj": {"adapt": [True, False, True], "widths": [32, 8, 8]}}
    model = FusedQKV()
    plan = loralab.plan_injection(model, LoraConfig(r=2, targets=["qkv_proj"], fused_slices=gqa))
    assert [(p.slices, p.slice_widths, p.num_params) for p in plan] == [
        ((True, False, True), (32, 8, 8), 2 * (32 + 32) + 2 * (8 + 32))]
    loralab.inject(model, LoraConfig(r=2, targets=["qkv_proj"], fused_slices=gqa))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == plan[0].num_params
    bad = {"qkv_proj": {"adapt": [True, False, True], "widths": [32, 4, 4]}}
    for call in (loralab.plan_injection, loralab.inject):
        with pytest.raises(LoraLabError, match=r"cannot adapt qkv_proj: fused slice widths \[32, 4, 4\] do not add "
                                               r"up to the layer's 48 outputs"):
            call(FusedQKV(), LoraConfig(r=2, targets=["qkv_proj"], fused_slices=bad))


# -- limits checked before work (docs/reliability.md, "Limits checked before work") -----------------------------
def test_a_rank_needing_more_memory_than_there_is_is_refused_before_allocating(monkeypatch):
    from loralab.surgery import inject as surgery

    model = tiny_model("bert")                # 4 adapted layers, 32 -> 32
    before = _snapshot(model)
    asked = []
    monkeypatch.setattr(surgery, "available_memory", lambda device: asked.append(str(device)) or 2**30)
    monkeypatch.setattr(surgery, "_checked_layers", _never_called)     # where the real factors are created
    with pytest.raises(LoraLabError) as caught:
        loralab.inject(model, LoraConfig(r=2**22))   # 4 layers * 2**22 * (32 + 32) values * 4 bytes = 4 GiB
    assert str(caught.value) == (
        "LoRA rank r=4194304 needs 4.0 GiB for the factors of 4 layers, more than the 1.0 GiB of memory available "
        "on cpu; choose a smaller r (below min(d, k) = 32 for bert.encoder.layer.0.attention.self.query keeps ΔW "
        "low-rank)")
    assert asked == ["cpu"]
    _assert_untouched(model, before)
    assert not hasattr(model, "loralab_state")


def _never_called(*args, **kwargs):
    raise AssertionError("real factors were created before the memory check")


def test_a_rank_of_a_billion_is_one_line_on_this_machine():
    model = tiny_model("bert")
    with pytest.raises(LoraLabError, match=r"^LoRA rank r=1000000000 needs 953\.7 GiB for the factors of 4 layers, "
                                           r"more than the [\d,.]+ GiB of memory available on cpu; choose a smaller r"):
        loralab.inject(model, LoraConfig(r=10**9))


def test_legal_ranks_above_min_d_k_still_inject_with_the_warning():
    model = tiny_model("bert")
    with pytest.warns(UserWarning, match=r"LoRA rank r=40 is not below min\(d, k\)=32"):
        loralab.inject(model, LoraConfig(r=40))
    assert next(loralab.lora_layers(model))[1].lora_adapters["default"].A.shape == (40, 32)


def test_a_pattern_pair_whose_scaling_would_overflow_is_refused_per_module():
    model = tiny_model("bert")
    before = _snapshot(model)
    config = LoraConfig(r=8, alpha=16, alpha_pattern={"layer.1.attention.self.value": 2e5})
    with pytest.raises(LoraLabError) as caught:
        loralab.inject(model, config)
    assert str(caught.value) == (
        "cannot adapt bert.encoder.layer.1.attention.self.value: alpha=200000 with r=8 scales the adapter's output "
        "by alpha/r = 2.5e+04, above the 10000 loralab accepts (larger scalings overflow the activations into NaN); "
        "use alpha <= 80000")
    _assert_untouched(model, before)


# -- selection by compiled rule sets: the same modules as rule by rule ---------------------------------------------
def _selected_rule_by_rule(model, config):
    """select_modules as defined: every rule tried on every candidate with `matches` (its non-strict part)."""
    from loralab.adapters.state import base_modules
    from loralab.core.kinds import kind_of
    from loralab.core.targeting import layer_index, matches, output_head_names

    config = loralab.surgery.inject.resolve_config(model, config)
    candidates = [n for n, m in base_modules(model) if kind_of(m) is not None]
    if config.targets == "all-linear":
        heads = output_head_names(model)
        chosen = [n for n in candidates if kind_of(model.get_submodule(n)).is_linear and n not in heads]
    else:
        chosen = [n for n in candidates if any(matches(n, rule) for rule in config.targets)]
    chosen = [n for n in chosen if not any(matches(n, rule) for rule in config.exclude)]
    if config.layers is not None:
        chosen = [n for n in chosen if layer_index(n, config.layers_pattern) in config.layers]
    return chosen


@pytest.mark.parametrize("family, config", [
    ("llama", dict(targets=["q_proj", "v_proj"])),
    ("llama", dict(targets=["self_attn.q_proj", "model.layers.1.mlp.up_proj", "layers.0.self_attn.v_proj"])),
    ("llama", dict(targets=[r"re:.*\.(q|o)_proj", "model.layers.1.self_attn.k_proj"], exclude=["layers.0.self_attn.o_proj"])),
    ("llama", dict(targets=[r"layers\.[01]\..*_proj", "q_proj"], exclude=[r"re:.*mlp.*"])),
    ("llama", dict(targets="all-linear")),
    ("llama", dict(targets="all-linear", exclude=["k_proj"], layers=[1])),
    ("bert", dict(targets=["query", "value", "attention.output.dense"], layers=[0])),
    ("bert", dict(targets=None)),
])
def test_selection_matches_rule_by_rule(family, config):
    from loralab.surgery.inject import select_modules

    model = tiny_model(family)
    config = LoraConfig(**config)
    assert list(select_modules(model, config)) == _selected_rule_by_rule(model, config)


def test_selection_by_a_files_full_names_with_other_adapters_on_the_model():
    from loralab.surgery.inject import select_modules

    model = tiny_model("llama")
    loralab.inject(model, LoraConfig(r=2, targets="all-linear"), adapter="first")
    names = [n for n, _ in loralab.lora_layers(model) if n.endswith(("q_proj", "v_proj"))]
    config = LoraConfig(r=2, targets=sorted(names), rank_pattern={n: 2 for n in names})
    assert list(select_modules(model, config)) == _selected_rule_by_rule(model, config) == names
    assert len(names) == 4


def test_the_first_pattern_key_in_order_sets_the_rank():
    model = tiny_model("llama")
    config = LoraConfig(r=4, targets=["q_proj", "v_proj"], rank_pattern={
        r"re:.*layers\.1\..*": 3, "q_proj": 2, "model.layers.1.self_attn.q_proj": 1, "v_proj": 5},
        alpha_pattern={"v_proj": 7, r"layers\.0\..*": 9})
    ranks = {p.name: (p.r, p.alpha) for p in loralab.plan_injection(model, config)}
    assert ranks == {"model.layers.0.self_attn.q_proj": (2, 9.0), "model.layers.0.self_attn.v_proj": (5, 7.0),
                     "model.layers.1.self_attn.q_proj": (3, 16.0), "model.layers.1.self_attn.v_proj": (3, 7.0)}


def test_a_strict_rule_or_key_matching_nothing_among_many_is_named():
    model = tiny_model("llama")
    names = ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"]
    with pytest.raises(LoraLabError, match=r"^target 'model.layers.2.self_attn.q_proj' matches no module"):
        loralab.inject(model, LoraConfig(targets=[*names, "model.layers.2.self_attn.q_proj", "k_prj"]))
    with pytest.raises(LoraLabError, match=r"^rank_pattern key 'v_proj' matches none of the 2 adapted modules"):
        loralab.inject(model, LoraConfig(targets=names, rank_pattern={names[0]: 2, "v_proj": 3, "k_proj": 1}))
    assert not list(loralab.lora_layers(model))


def test_the_plan_is_the_same_as_factors_built_layer_by_layer():
    from loralab.surgery.inject import _make_factors, select_modules

    model = tiny_model("llama")
    config = LoraConfig(r=4, targets="all-linear", rank_pattern={"layers.1.mlp.up_proj": 2}, alpha_pattern={"v_proj": 3})
    plan = loralab.plan_injection(model, config)
    for p, (name, module) in zip(plan, select_modules(model, config).items(), strict=True):
        with torch.device("meta"):
            f = _make_factors(name, module, config)
        assert (p.name, p.r, p.alpha, p.num_params) == (name, f.r, f.alpha, sum(t.numel() for t in f.parameters()))


def test_placement_is_the_base_layers_as_new_factors_are_whatever_the_adapters_there():
    from loralab.surgery.inject import _placement

    model = tiny_model("llama")
    loralab.inject(model, LoraConfig(r=2, targets=["q_proj"]), adapter="a")
    loralab.inject(model, LoraConfig(r=2, targets=["q_proj"], variant="dora"), adapter="b")
    layer = model.get_submodule("model.layers.0.self_attn.q_proj")
    layer.lora_adapters["b"].double()                    # an adapter wider than the base layer
    assert _placement(layer) == _placement(layer.base_layer) == (layer.base_layer.weight.device, 4)
    loralab.inject(model, LoraConfig(r=2, targets=["q_proj"]), adapter="c")
    assert layer.lora_adapters["c"].A.dtype == layer.lora_adapters["c"].B.dtype == torch.float32   # the base's width


def test_an_adapter_added_frozen_changes_no_other_flag_and_computes_the_same():
    model = tiny_model("llama")
    loralab.inject(model, LoraConfig(r=2), adapter="a")
    before = {id(p): p.requires_grad for p in model.parameters()}
    torch.manual_seed(3)
    loralab.inject(model, LoraConfig(r=4, modules_to_save=["lm_head"]), adapter="frozen", trainable=False)
    after = {id(p): p for p in model.parameters()}
    assert {i: p.requires_grad for i, p in after.items() if i in before} == before      # "a" still trains
    added = [p for i, p in after.items() if i not in before]
    assert len(added) == 4 * 2 + 1 and not any(p.requires_grad for p in added)
    assert loralab.active_adapter(model) == "a"
    twin = tiny_model("llama")
    loralab.inject(twin, LoraConfig(r=2), adapter="a")
    torch.manual_seed(3)
    loralab.inject(twin, LoraConfig(r=4, modules_to_save=["lm_head"]), adapter="frozen")    # the trainable way
    for m in (model, twin):
        for _, layer in loralab.lora_layers(m):
            torch.nn.init.normal_(layer.lora_adapters["frozen"].B, generator=torch.Generator().manual_seed(1))
        loralab.set_adapter(m, "frozen")
    assert torch.equal(model_output(model, tiny_inputs(model)), model_output(twin, tiny_inputs(twin)))
