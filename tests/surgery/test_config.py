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
    assert LoraConfig(targets=["all-linear"]).targets == "all-linear"      # YAML's or KEY=VALUE's list


def test_all_linear_beside_other_rules_is_refused_in_one_line():
    with pytest.raises(LoraLabError) as caught:
        LoraConfig(targets=["all-linear", "query"])
    assert str(caught.value) == ("targets ['all-linear', 'query'] mixes 'all-linear' with other rules; 'all-linear' "
                                 "already selects every linear layer but the head: give it alone")


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


# -- limits checked before work (docs/reliability.md, "Limits checked before work") -----------------------------
@pytest.mark.parametrize("kwargs, line", [
    (dict(r=0), "r must be a positive integer, got 0"),
    (dict(r=-3), "r must be a positive integer, got -3"),
    (dict(r=2.0), "r must be a positive integer, got 2.0"),
    (dict(r=True), "r must be a positive integer, got True"),
    (dict(alpha=True), "alpha must be a positive number, got True"),
    (dict(alpha=float("nan")), "alpha must be a positive number, got nan"),
    (dict(alpha=float("inf")), "alpha must be finite, got inf"),
    (dict(lora_alpha=1e30), "alpha=1e+30 with r=8 scales the adapter's output by alpha/r = 1.25e+29, above the "
                            "10000 loralab accepts (larger scalings overflow the activations into NaN); use "
                            "alpha <= 80000"),
    (dict(r=4, alpha=3e4, rslora=True), "alpha=30000 with r=4 scales the adapter's output by alpha/sqrt(r) = 1.5e+04, "
                                        "above the 10000 loralab accepts (larger scalings overflow the activations "
                                        "into NaN); use alpha <= 20000"),
    (dict(alpha_pattern={"q": float("inf")}), "alpha_pattern['q'] must be finite, got inf"),
    (dict(alpha_pattern={"q": True}), "alpha_pattern['q'] must be a positive number, got True"),
])
def test_rank_and_alpha_out_of_range_are_one_line(kwargs, line):
    with pytest.raises(LoraLabError) as caught:
        LoraConfig(**kwargs)
    assert str(caught.value) == line


def test_the_largest_accepted_scaling_is_kept():
    assert LoraConfig(r=8, alpha=80000).alpha == 80000.0        # alpha/r = 1e4 exactly
    assert LoraConfig(r=1, alpha=512).alpha == 512.0             # the largest scalings in use


@pytest.mark.parametrize("targets, shown", [([["query"], "value"], "['query']"), (["query", 7], "7")])
def test_targets_that_are_not_strings_are_refused_not_stringified(targets, shown):
    with pytest.raises(LoraLabError) as caught:
        LoraConfig(targets=targets)
    assert str(caught.value) == f"targets: rules are non-empty strings (module names or 're:REGEX'), got {shown}"


def test_a_self_containing_targets_list_is_one_line():
    targets = ["query"]
    targets.append(targets)
    with pytest.raises(LoraLabError) as caught:
        LoraConfig(targets=targets)
    assert str(caught.value) == "targets: rules are non-empty strings (module names or 're:REGEX'), got ['query', [...]]"
