"""Files written by loralab 0.1.0 (tests/golden/v0.1, made by make_golden_v0_1.py) still load and resume."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import loralab
from loralab.testing import model_output, tiny_inputs, tiny_model

GOLDEN = Path(__file__).resolve().parent / "v0.1"
FAMILY = {"bert-dora": "bert", "gpt2-sliced": "gpt2", "llama-pissa": "llama", "bert-bias": "bert"}


def _training_fixtures():
    path = Path(__file__).resolve().parents[1] / "training" / "conftest.py"
    spec = importlib.util.spec_from_file_location("golden_training_fixtures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", list(FAMILY))
def test_v0_1_adapter_loads_with_the_same_outputs(name):
    model = tiny_model(FAMILY[name], seed=0)
    loralab.load_adapter(model, GOLDEN / f"adapter-{name}")
    expected = load_file(str(GOLDEN / f"adapter-{name}" / "expected.safetensors"))["logits"]
    torch.testing.assert_close(model_output(model, tiny_inputs(model)), expected, rtol=1e-5, atol=1e-6)


def test_v0_1_dora_config_still_means_dora():
    config = json.loads((GOLDEN / "adapter-bert-dora" / "adapter_config.json").read_text())
    assert config["use_dora"] is True
    model = tiny_model("bert", seed=0)
    loralab.load_adapter(model, GOLDEN / "adapter-bert-dora")
    layers = [layer for _, layer in loralab.lora_layers(model)]
    assert layers and all(layer.lora_adapters["default"].variant.name == "dora" for layer in layers)


def test_v0_1_run_resumes_to_the_same_final_adapter(tmp_path):
    fixtures = _training_fixtures()
    work = tmp_path / "inputs"
    work.mkdir()
    model_dir = fixtures.write_tiny_bert(work / "tiny-bert")
    files = {s: fixtures.write_sst2_slice(work, start, count, f"{s}.tsv")
             for s, start, count in (("train", 0, 48), ("dev", 1000, 24), ("test", 2000, 24))}
    run = tmp_path / "run"
    shutil.copytree(GOLDEN / "run-bert", run)
    config = json.loads((run / "config.json").read_text())
    config.update(model=str(model_dir), train_file=str(files["train"]), dev_file=str(files["dev"]),
                  test_file=str(files["test"]))
    (run / "config.json").write_text(json.dumps(config))
    (run / "final-adapter.safetensors").unlink()
    from loralab.cli.main import main

    torch.set_num_threads(1)
    assert main(["train", "--output", str(run), "--resume"]) == 0
    expected = load_file(str(GOLDEN / "run-bert" / "final-adapter.safetensors"))
    latest = (run / "checkpoints" / "LATEST").read_text().strip()
    got = load_file(str(run / "checkpoints" / latest / "adapter" / "adapter_model.safetensors"))
    assert latest == "step-000012" and set(got) == set(expected)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6)
