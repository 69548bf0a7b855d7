"""The targets experiment's per-row LoRA targets come from the architecture table (they were a table of
their own that called OPT's output projection o_proj and Phi-3's fused qkv_proj q_proj/v_proj)."""
import json

import pytest

from loralab import LoraLabError
from loralab.experiments.targets import lora_targets


def _folder(tmp_path, **config):
    (tmp_path / "config.json").write_text(json.dumps(config))
    return str(tmp_path)


def test_opt_rows_use_out_proj(tmp_path):
    rows = lora_targets(_folder(tmp_path, model_type="opt", hidden_size=32, num_attention_heads=4))
    assert rows["Wo"] == {"targets": ["out_proj"]}
    assert rows["Wq,Wk,Wv,Wo"] == {"targets": ["q_proj", "k_proj", "v_proj", "out_proj"]}


def test_phi3_rows_adapt_slices_of_qkv_proj(tmp_path):
    rows = lora_targets(_folder(tmp_path, model_type="phi3", hidden_size=5120, num_attention_heads=40,
                                num_key_value_heads=10, intermediate_size=17920))
    widths = [5120, 1280, 1280]                     # Phi-3-medium: 40 query heads, 10 key and value heads
    assert rows["Wk"] == {"targets": ["qkv_proj"],
                          "fused_slices": {"qkv_proj": {"adapt": [False, True, False], "widths": widths}}}
    assert rows["Wq,Wk,Wv,Wo"] == {"targets": ["qkv_proj", "o_proj"],
                                   "fused_slices": {"qkv_proj": {"adapt": [True, True, True], "widths": widths}}}


def test_bert_rows_are_unchanged_and_unknown_families_are_named(tmp_path):
    (tmp_path / "bert").mkdir()
    rows = lora_targets(_folder(tmp_path / "bert", model_type="bert"))
    assert rows["Wq,Wk,Wv,Wo"] == {"targets": ["query", "key", "value", "attention.output.dense"]}
    with pytest.raises(LoraLabError, match="knows the q/k/v/o modules of bart, bert, .* not 'gpt_bigcode'"):
        lora_targets(_folder(tmp_path, model_type="gpt_bigcode"))
