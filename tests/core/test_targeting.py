"""Target rules: loralab's suffix and "re:" rules, and PEFT's regex pattern keys read exactly as PEFT reads them."""
import re

import pytest

from loralab import LoraLabError
from loralab.core.targeting import check_rule, first_match, layer_index, matches
from loralab.testing import tiny_model

NAMES = [n for n, _ in tiny_model("llama").named_modules() if n] + \
        [n for n, _ in tiny_model("bert").named_modules() if n]


def test_suffix_and_full_name_regex_rules():
    assert matches("model.layers.0.self_attn.q_proj", "q_proj")
    assert matches("model.layers.0.self_attn.q_proj", "self_attn.q_proj")
    assert not matches("model.layers.0.self_attn.q_proj", "attn.q_proj")        # whole segments only
    assert matches("model.layers.0.self_attn.q_proj", r"re:model\.layers\.\d+\.self_attn\.q_proj")
    assert not matches("model.layers.0.self_attn.q_proj", r"re:layers\.\d+\.self_attn\.q_proj")  # full name


@pytest.mark.parametrize("key", [
    "q_proj", "self_attn.v_proj", "model.layers.1.mlp.up_proj", r"layers\.1\..*_proj", "^model.layers.0",
    r".*\.0\.mlp\..*", "(q|k)_proj", r"layer\.[01]\.attention\.self\.(query|value)", r"encoder.*dense",
])
def test_pattern_keys_select_what_peft_selects(key):
    from peft.utils.other import get_pattern_key

    peft_selected = [n for n in NAMES if get_pattern_key([key], n) == key]
    assert [n for n in NAMES if matches(n, key)] == peft_selected
    assert peft_selected                               # every key here selects something


def test_first_matching_key_wins_as_in_peft():
    from peft.utils.other import get_pattern_key

    keys = [r"layers\.0\..*", "q_proj", "^model.*"]
    for name in NAMES:
        ours = first_match(name, keys)
        assert (ours if ours is not None else name) == get_pattern_key(keys, name)


@pytest.mark.parametrize("patterns", [None, ["layers"], ["layer"], ["h", "layers"]])
def test_layer_index_is_found_as_peft_finds_it(patterns):
    from peft.tuners.tuners_utils import check_target_module_exists

    dotted = [n for n in NAMES if "." in n]        # PEFT selects a top-level name by equality, before any layer check

    class Config:            # what check_target_module_exists reads
        target_modules = [n.rsplit(".", 1)[-1] for n in dotted]
        layers_pattern = patterns
        exclude_modules = modules_to_save = target_parameters = None

    for index in (0, 1):
        Config.layers_to_transform = [index]
        assert [n for n in dotted if layer_index(n, patterns) == index] == \
            [n for n in dotted if check_target_module_exists(Config, n)]
    assert layer_index("model.layers.1.mlp.experts.3.w1") == 1          # the first number, not an expert's
    assert layer_index("lm_head") is None


def test_rules_are_checked_once_when_the_config_is_made():
    assert check_rule("targets", "q_proj") == "q_proj"
    with pytest.raises(LoraLabError, match=re.escape("exclude: 're:(' is not a valid regular expression")):
        check_rule("exclude", "re:(")
    with pytest.raises(LoraLabError, match="rules are non-empty strings"):
        check_rule("targets", 3)
