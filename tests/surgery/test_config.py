import pytest

from loralab import LoraConfig, LoraLabError


@pytest.mark.parametrize("kwargs, message", [
    (dict(r=0), "r must be a positive integer"),
    (dict(r=2.5), "r must be a positive integer"),
    (dict(alpha=-1), "alpha must be a positive number"),
    (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
    (dict(init="orthogonal"), "unknown init 'orthogonal'"),
    (dict(bias="some"), "unknown bias mode"),
    (dict(targets=[]), "targets is an empty list"),
    (dict(targets=3), "targets must be a list"),
    (dict(rank_pattern={"q": 0}), r"rank_pattern\['q'\] must be a positive integer"),
    (dict(alpha_pattern={"q": "x"}), r"alpha_pattern\['q'\]"),
    (dict(fused_slices={"c_attn": [False, False]}), "at least one True"),
    (dict(modules_to_save=[1]), "modules_to_save must be a list"),
])
def test_invalid_values_fail_at_construction(kwargs, message):
    with pytest.raises(LoraLabError, match=message):
        LoraConfig(**kwargs)


def test_string_target_becomes_a_list_and_patterns_resolve():
    c = LoraConfig(targets="query", rank_pattern={"re:.*layer\\.1\\..*": 2}, alpha_pattern={"value": 4})
    assert c.targets == ["query"]
    assert c.rank_for("bert.encoder.layer.1.attention.self.query") == 2
    assert c.rank_for("bert.encoder.layer.0.attention.self.query") == 8
    assert c.alpha_for("bert.encoder.layer.0.attention.self.value") == 4.0
    assert c.alpha_for("bert.encoder.layer.0.attention.self.query") == 16.0
    assert LoraConfig(targets="all-linear").targets == "all-linear"


def test_dict_round_trip_and_unknown_field(tmp_path):
    c = LoraConfig(r=4, alpha=8, targets=["q_proj"], variant="dora")
    assert LoraConfig.from_dict(c.to_dict()) == c
    with pytest.raises(LoraLabError, match="unknown LoraConfig field"):
        LoraConfig.from_dict({"rank": 4})
    bad = tmp_path / "c.json"
    bad.write_text("{not json")
    with pytest.raises(LoraLabError, match="cannot read LoRA config"):
        LoraConfig.from_json(str(bad))


def test_variant_is_a_registered_name_and_dora_true_is_its_old_spelling():
    assert LoraConfig().variant == "lora" and LoraConfig(variant="dora").variant == "dora"
    assert LoraConfig(dora=True) == LoraConfig(variant="dora")
    assert LoraConfig(dora=False).variant == "lora"
    stored_by_0_1 = {"r": 4, "alpha": 8.0, "dora": True, "targets": ["q_proj"]}
    c = LoraConfig.from_dict(stored_by_0_1)
    assert c.variant == "dora" and "dora" not in c.to_dict() and c.to_dict()["variant"] == "dora"
    assert LoraConfig.from_dict(c.to_dict()) == c
    with pytest.raises(LoraLabError, match="unknown variant 'lokr'; choose one of dora, lora"):
        LoraConfig(variant="lokr")
    with pytest.raises(LoraLabError, match="unknown init 'lokr'; choose one of gaussian, kaiming, pissa"):
        LoraConfig(init="lokr")


def test_fused_slices_take_equal_or_given_widths():
    c = LoraConfig(fused_slices={"c_attn": [True, False, True],
                                 "qkv_proj": {"adapt": [True, False, True], "widths": [40, 10, 10]}})
    assert c.slices_for("h.0.attn.c_attn") == ((True, False, True), None)
    assert c.slices_for("layers.0.self_attn.qkv_proj") == ((True, False, True), (40, 10, 10))
    assert c.slices_for("h.0.attn.c_proj") is None
    assert LoraConfig.from_dict(c.to_dict()) == c


@pytest.mark.parametrize("value, message", [
    ({"adapt": [True, False]}, "must be a list of >= 2 booleans"),
    ({"adapt": [True, False], "widths": [4, 4], "extra": 1}, "must be a list of >= 2 booleans"),
    ({"adapt": [True, False], "widths": [4]}, r"widths'\] must be 2 positive integers"),
    ({"adapt": [True, False], "widths": [4, 0]}, r"widths'\] must be 2 positive integers"),
    ({"adapt": [False, False], "widths": [4, 4]}, "at least one True"),
])
def test_bad_fused_slice_widths_fail_at_construction(value, message):
    with pytest.raises(LoraLabError, match=message):
        LoraConfig(fused_slices={"qkv_proj": value})
