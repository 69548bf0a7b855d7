"""Target rules: loralab's suffix and "re:" rules, and PEFT's regex pattern keys read exactly as PEFT reads them."""
import re

import pytest

from loralab import LoraLabError
from loralab.core.targeting import (RuleSet, check_rule, compile_rules, dotted_suffixes, first_match, is_plain_name,
                                    layer_index, matches)
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


# The compiled rule sets (RuleSet) against the definition: `matches` tried rule by rule, in order.
def _first_one_by_one(name, rules):
    return next(((i, rule) for i, rule in enumerate(rules) if matches(name, rule)), None)


FULL = [n for n in NAMES if n.endswith(("q_proj", "v_proj", "query", "value"))]
RULE_LISTS = [
    ["q_proj", "v_proj"],
    ["self_attn.q_proj", "attention.self.value", "attn.q_proj", "layers.1.self_attn.v_proj"],
    FULL,                                                        # an adapter file's list: every full name
    list(reversed(FULL)) + ["q_proj"],
    [r"re:.*\.1\..*", "q_proj", r"re:model\.layers\.0\.self_attn\.q_proj", "v_proj"],    # regex first
    ["q_proj", r"layers\.0\..*", "(q|v)_proj", "^model.*", r"encoder.*dense"],  # PEFT's keys, order matters
    ["v_proj", "q_proj", "v_proj", "q_proj"],                   # a rule listed twice
    [".q_proj", "q_proj.", "self_attn..q_proj", "model", "bert", "-", "mlp"],  # odd plain rules
    [],
]


@pytest.mark.parametrize("rules", RULE_LISTS)
def test_a_rule_set_answers_as_matches_rule_by_rule(rules):
    compiled = RuleSet(rules)
    for name in NAMES + ["", "a..q_proj", "x.self_attn..q_proj", ".q_proj", "q_proj."]:
        assert compiled.first(name) == _first_one_by_one(name, rules), name
        assert first_match(name, rules) == next((r for r in rules if matches(name, r)), None)
        assert compiled.matching(name) == {i for i, rule in enumerate(rules) if matches(name, rule)}, name


def test_rule_sets_select_the_same_modules_in_a_file_list():
    selected = [n for n in NAMES if compile_rules(tuple(FULL)).first(n) is not None]
    assert selected == FULL and len(FULL) == 8       # llama: 2 layers × q, v; bert: 2 layers × query, value


def test_dotted_suffixes_are_what_a_plain_rule_can_equal():
    assert dotted_suffixes("a.b.c") == ("a.b.c", "b.c", "c")
    assert dotted_suffixes("a..b") == ("a..b", ".b", "b")
    assert dotted_suffixes("q") == ("q",)
    for name in ["a.b.c", "a..b", "x.y.", ".q"]:
        for rule in ["c", "b.c", ".b", "b", "y.", "", "q", ".q"]:
            if is_plain_name(rule):
                assert (rule in dotted_suffixes(name)) == matches(name, rule), (name, rule)


def test_a_regex_rule_is_tried_only_before_the_first_plain_hit():
    # As rule by rule: a broken regex after the winning rule is never compiled; before it, it raises.
    rules = ["q_proj", "re:("]
    assert first_match("model.layers.0.self_attn.q_proj", rules) == "q_proj"
    with pytest.raises(re.error):
        first_match("model.layers.0.mlp.up_proj", rules)
    with pytest.raises(re.error):
        first_match("model.layers.0.self_attn.q_proj", ["re:(", "q_proj"])


def test_a_rule_that_is_not_a_string_fails_as_rule_by_rule():
    with pytest.raises(AttributeError):
        first_match("model.layers.0.self_attn.q_proj", [["q_proj"]])
    assert first_match("model.layers.0.self_attn.q_proj", ["q_proj", ["v_proj"]]) == "q_proj"
