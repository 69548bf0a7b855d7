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
