"""`loralab inspect` and `loralab merge` end to end on tiny saved models."""
import json

import pytest
import torch

import loralab
from loralab import LoraConfig
from loralab.cli.main import main
from loralab.testing import model_output, tiny_inputs, tiny_model


@pytest.fixture
def bert_folder(tmp_path):
    model = tiny_model("bert")
    model.save_pretrained(tmp_path / "base")
    return tmp_path / "base"


def test_inspect_prints_the_plan(bert_folder, capsys):
    assert main(["inspect", str(bert_folder), "--r", "4"]) == 0
    out = capsys.readouterr().out
    assert "bert.encoder.layer.1.attention.self.value" in out and "32×32" in out
    assert "4 modules, trainable LoRA params: 1,024 of " in out
    assert main(["inspect", str(bert_folder), "--json", "--targets", "all-linear"]) == 0
    plan = json.loads(capsys.readouterr().out)
    names = {p["name"] for p in plan}     # q, k, v, o, intermediate, output per layer + the pooler
    assert len(plan) == 2 * 6 + 1 and "bert.pooler.dense" in names and "classifier" not in names


@pytest.mark.parametrize("argv, message", [
    (["--targets", "quer"], "target 'quer' matches no module"),
    (["--r", "0"], "r must be a positive integer"),
])
def test_inspect_bad_input_is_one_line_and_exit_2(bert_folder, capsys, argv, message):
    assert main(["inspect", str(bert_folder), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_merge_writes_a_plain_model_with_the_adapted_outputs(bert_folder, tmp_path, capsys):
    model = tiny_model("bert")
    loralab.inject(model, LoraConfig(r=4, modules_to_save=["classifier"]))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn(p.shape))
    inputs = tiny_inputs(model)
    expected = model_output(model, inputs)
    loralab.save_adapter(model, tmp_path / "ad")
    assert main(["merge", str(bert_folder), str(tmp_path / "ad"), str(tmp_path / "merged")]) == 0
    from transformers import AutoModelForSequenceClassification
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    torch.testing.assert_close(model_output(plain, inputs), expected, rtol=1e-4, atol=1e-5)
    assert main(["merge", str(bert_folder), str(tmp_path / "ad"), str(tmp_path / "merged")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["merge", str(bert_folder), str(tmp_path / "nothing"), str(tmp_path / "m2")]) == 2
    assert not (tmp_path / "m2").exists()
