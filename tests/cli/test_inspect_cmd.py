"""`loralab inspect` end to end on a tiny saved model."""
import json

import pytest

from loralab.cli.main import main
from loralab.testing import tiny_model


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


def test_task_builds_that_tasks_head(bert_folder):
    from loralab.cli.inspect_cmd import meta_model
    from loralab.models import MODEL_TASKS, auto_model_class

    assert type(meta_model(str(bert_folder), "classification")).__name__ == "BertForSequenceClassification"
    assert type(meta_model(str(bert_folder), "regression")).__name__ == "BertForSequenceClassification"
    assert type(meta_model(str(bert_folder), "base")).__name__ == "BertModel"
    assert [auto_model_class(head).__name__ for head in MODEL_TASKS] == \
        ["AutoModel", "AutoModelForSequenceClassification", "AutoModelForCausalLM"]


def test_inspect_takes_a_builtin_model_name_as_train_does(capsys):
    assert main(["inspect", "all-minilm-l6-v2", "--r", "8"]) == 0
    out = capsys.readouterr().out
    assert "encoder.layer.5.attention.self.value" in out
    assert out.strip().splitlines()[-1] == "12 modules, trainable LoRA params: 73,728 of 22,713,216 (0.3246%)"


def test_inspect_names_a_model_it_cannot_find(capsys):
    assert main(["inspect", "no-such-model-here"]) == 2
    assert capsys.readouterr().err.startswith("loralab inspect: error: model 'no-such-model-here' not found: ")
