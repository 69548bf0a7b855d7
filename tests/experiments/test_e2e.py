"""`loralab e2e --quick`: the zero-shot-vs-LoRA comparison end to end on a tiny random LLaMA.

The tiny model's outputs are noise, so the scores themselves mean nothing here; what is checked is the
pipeline: the files and columns, the counted trainable parameters, the adapter size on disk, that the
scores are the metrics of the saved predictions against every reference of the chosen MRs, and that a
second run reuses the trained adapter and the predictions instead of redoing them.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from loralab.cli.main import main
from loralab.errors import LoraLabError
from loralab.experiments.e2e import (DEFAULT_INSTRUCTION, TABLE_COLUMNS, E2EConfig, evaluation_set, evenly_spaced,
                                     run_e2e)
from loralab.metrics import read_e2e_references, score_e2e

pytestmark = pytest.mark.needs_shared_data("e2e/test.txt")   # tests/conftest.py: skip here, fail in CI


def test_evenly_spaced_picks_distinct_indices_from_the_start():
    assert evenly_spaced(630, 100)[:3] == [0, 6, 12] and evenly_spaced(630, 100)[-1] == 623
    assert len(set(evenly_spaced(630, 100))) == 100
    assert evenly_spaced(10, 4) == [0, 2, 5, 7]
    assert evenly_spaced(5, None) == evenly_spaced(5, 9) == [0, 1, 2, 3, 4]


def test_config_rejects_bad_settings():
    with pytest.raises(LoraLabError, match="eval_mrs"):
        E2EConfig(eval_mrs=0)
    with pytest.raises(LoraLabError, match="num_beams"):
        E2EConfig(num_beams=0)
    with pytest.raises(LoraLabError, match="instruction"):
        E2EConfig(instruction="  ")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e-quick")
    assert main(["e2e", "--quick", "--output", str(out)]) == 0
    return out


def test_quick_run_writes_the_table_with_every_column(quick_run):
    with open(quick_run / "results.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == TABLE_COLUMNS
    assert [row["system"] for row in rows] == ["base", "lora"]
    base, lora = rows
    # tiny LLaMA: 2 layers, q_proj 32 -> 32, v_proj 32 -> 16 (2 KV heads of 8); r=4 => 4 * (64 + 48) * 2
    assert int(lora["trainable_params"]) == 896 and int(base["trainable_params"]) == 0
    adapter = quick_run / "train" / "adapter"
    assert int(lora["adapter_bytes"]) == sum(p.stat().st_size for p in adapter.iterdir() if p.is_file()) > 896 * 4
    assert float(lora["train_seconds"]) > 0 and float(base["train_seconds"]) == 0
    assert all(int(row["mrs"]) == 8 and int(row["num_beams"]) == 1 and float(row["generate_seconds"]) > 0
               for row in rows)
    markdown = (quick_run / "results.md").read_text(encoding="utf-8")
    assert "| base model, zero-shot |" in markdown and "| base model + LoRA |" in markdown
    examples = (quick_run / "examples.md").read_text(encoding="utf-8")
    assert examples.count("**MR**") == 3 and "- LoRA:" in examples


def test_quick_scores_are_the_metrics_of_the_saved_predictions(quick_run, shared_data):
    result = json.loads((quick_run / "results.json").read_text(encoding="utf-8"))
    mrs, references = read_e2e_references(shared_data / "e2e" / "test.txt")
    chosen = evenly_spaced(len(mrs), 8)
    assert evaluation_set(E2EConfig.quick()) == ([mrs[i] for i in chosen], [references[i] for i in chosen])
    for row in result["rows"]:
        outputs = (quick_run / "predictions" / f"{row['system']}.txt").read_text(encoding="utf-8").splitlines()
        assert len(outputs) == 8
        scores = score_e2e(outputs, [references[i] for i in chosen])
        assert {k: row[k] for k in scores} == pytest.approx({k: round(v, 4) for k, v in scores.items()})
        assert row["mean_output_words"] == pytest.approx(sum(len(o.split()) for o in outputs) / 8, abs=0.01)
    train_lines = (quick_run / "data" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    first = json.loads(train_lines[0])
    assert len(train_lines) == 4672 and first["prompt"].startswith(DEFAULT_INSTRUCTION + "name : ")
    assert result["train"]["train_examples"] == 32


def test_second_run_reuses_adapter_and_predictions(quick_run):
    before = json.loads((quick_run / "results.json").read_text(encoding="utf-8"))
    messages: list[str] = []
    again = run_e2e(E2EConfig.quick(), quick_run, log=messages.append)
    assert any("reusing the trained adapter" in m for m in messages)
    assert sum("reusing" in m and "outputs" in m for m in messages) == 2
    assert not any("generating" in m for m in messages)
    assert again["rows"] == before["rows"]


def test_killed_generation_continues_after_the_last_saved_batch(quick_run):
    predictions = quick_run / "predictions"
    meta = json.loads((predictions / "lora.json").read_text(encoding="utf-8"))
    finished = (predictions / "lora.txt").read_text(encoding="utf-8").splitlines()
    # what a run killed after its first batch of 4 leaves behind: no lora.txt, a partial file
    (predictions / "lora.txt").unlink()
    (predictions / "lora.json").unlink()
    (predictions / "lora.partial.json").write_text(json.dumps(
        {"key": meta["key"], "outputs": finished[:3] + ["kept from the partial file"], "generate_seconds": 1.5}))
    messages: list[str] = []
    run_e2e(E2EConfig.quick(), quick_run, log=messages.append)
    assert any("continuing after 4 outputs" in m for m in messages)
    assert any("generating for 4 MRs" in m for m in messages)
    resumed = (predictions / "lora.txt").read_text(encoding="utf-8").splitlines()
    assert resumed[:4] == finished[:3] + ["kept from the partial file"] and len(resumed) == 8
    assert not (predictions / "lora.partial.json").exists()
    assert json.loads((predictions / "lora.json").read_text(encoding="utf-8"))["generate_seconds"] > 1.5


def test_quick_refuses_a_model_and_adapter_must_exist(tmp_path):
    assert main(["e2e", "--quick", "--model", "x", "--output", str(tmp_path)]) == 2
    with pytest.raises(LoraLabError, match="adapter_config.json"):
        run_e2e(E2EConfig.quick(), tmp_path, adapter=tmp_path / "missing")


def test_decoding_settings_are_checked_before_training():
    with pytest.raises(LoraLabError, match="temperature"):
        E2EConfig(decoding={"temperature": -1})
    with pytest.raises(LoraLabError, match="num_beams as its own"):
        E2EConfig(decoding={"num_beams": 2})
    with pytest.raises(LoraLabError, match="unknown decoding setting"):
        E2EConfig(decoding={"temprature": 0.5})
    assert E2EConfig(num_beams=3, decoding={"length_penalty": 0.5}).sampling_params().num_beams == 3


def test_sampled_decoding_with_the_cli_flags(quick_run, tmp_path, capsys):
    out = tmp_path / "sampled"
    flags = ["e2e", "--quick", "--adapter", str(quick_run / "train" / "adapter"), "--temperature", "0.9",
             "--top-k", "20", "--seed", "1", "--stop", ".", "--threads", "1"]
    assert main([*flags, "--output", str(out)]) == 0
    assert "sampled (seed=1, stop=['.'], temperature=0.9, top_k=20)" in capsys.readouterr().out
    meta = json.loads((out / "predictions" / "lora.json").read_text(encoding="utf-8"))
    assert meta["settings"]["decoding"] == {"temperature": 0.9, "top_k": 20, "seed": 1, "stop": ["."]}
    sampled = (out / "predictions" / "lora.txt").read_text(encoding="utf-8").splitlines()
    greedy = (quick_run / "predictions" / "lora.txt").read_text(encoding="utf-8").splitlines()
    assert len(sampled) == 8 and sampled != greedy and not any("." in line for line in sampled)
