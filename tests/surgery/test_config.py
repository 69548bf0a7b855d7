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
    c = LoraConfig(r=4, alpha=8, targets=["q_proj"], dora=True)
    assert LoraConfig.from_dict(c.to_dict()) == c
    with pytest.raises(LoraLabError, match="unknown LoraConfig field"):
        LoraConfig.from_dict({"rank": 4})
    bad = tmp_path / "c.json"
    bad.write_text("{not json")
    with pytest.raises(LoraLabError, match="cannot read LoRA config"):
        LoraConfig.from_json(str(bad))
