"""The latency study's structure and invariants on a tiny BERT (never timing thresholds)."""
import csv
import json

import pytest
import torch

from loralab import LoraLabError, is_merged
from loralab.timing.latency import (CONFIGS, LatencyRow, build_configurations, check_equivalence, main,
                                          main_output, make_inputs, markdown_table, measure_latency, LatencySettings,
                                          write_results)
from loralab.testing import tiny_model


def factory():
    return tiny_model("bert")


@pytest.fixture(scope="module")
def rows():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # steadier on shared cores; restored for the rest of the suite
    try:
        return measure_latency(factory, batch_sizes=[1, 2], seq_lens=[8], repeats=3, warmup=1, bottleneck=4, lora_r=2)
    finally:
        torch.set_num_threads(threads)


def test_every_configuration_measured_at_every_shape(rows):
    assert [(r.config, r.batch_size, r.seq_len) for r in rows] == [
        (c, b, 8) for b in (1, 2) for c in CONFIGS]
    for r in rows:
        assert r.repeats == 3
        assert 0 < r.min_ms <= r.q1_ms <= r.median_ms <= r.q3_ms
        assert r.iqr_ms == pytest.approx(r.q3_ms - r.q1_ms)


def test_overhead_is_relative_to_base_at_the_same_shape(rows):
    for r in rows:
        base = next(b for b in rows if b.config == "base" and (b.batch_size, b.seq_len) == (r.batch_size, r.seq_len))
        assert r.overhead_pct == pytest.approx((r.median_ms / base.median_ms - 1) * 100)
    assert all(r.overhead_pct == 0 for r in rows if r.config == "base")


def test_added_parameters_per_configuration(rows):
    added = {r.config: r.added_params for r in rows if r.batch_size == 1}
    # tiny BERT: 2 layers, d = 32; Houlsby m = 4: 2·L·(2dm + d + m); LoRA r = 2 on Wq, Wv: 2·L·r·(d + d)
    assert added == {"base": 0, "houlsby": 2 * 2 * (2 * 32 * 4 + 32 + 4), "lora_unmerged": 2 * 2 * 2 * 64,
                     "lora_merged": 0}


def test_configurations_compute_what_they_claim():
    models = build_configurations(factory, LatencySettings((1,), (8,), bottleneck=4, lora_r=2))
    assert set(models) == set(CONFIGS)
    assert is_merged(models["lora_merged"]) and not is_merged(models["lora_unmerged"])
    inputs = make_inputs(models["base"], 2, 8)
    checks = check_equivalence(models, inputs)
    scale = checks["base_max_abs"]
    assert checks["merged_vs_unmerged"] <= 1e-5 * scale
    assert checks["unmerged_vs_base"] > 1e-3 * scale  # the random B factors make ΔW matter
    assert checks["houlsby_vs_base"] > 0
    # merged LoRA is the base model with W0 + s·B·A: compare against that, computed by hand for one layer
    with torch.no_grad():
        base_layer = models["base"].bert.encoder.layer[0].attention.self.query
        lora = models["lora_unmerged"].bert.encoder.layer[0].attention.self.query
        factors = lora.lora_adapters["default"]
        delta = factors.B @ factors.A * (16.0 / 2)
        merged_weight = models["lora_merged"].bert.encoder.layer[0].attention.self.query.base_layer.weight
        torch.testing.assert_close(merged_weight, base_layer.weight + delta)
        x = torch.randn(3, 32)
        torch.testing.assert_close(main_output(models["lora_merged"](**inputs)),
                                   main_output(models["lora_unmerged"](**inputs)), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(lora(x), x @ (base_layer.weight + delta).T + base_layer.bias, rtol=1e-5, atol=1e-6)


def test_write_results_files(rows, tmp_path):
    paths = write_results(rows, tmp_path / "out", meta={"model": "tiny"})
    with open(paths["csv"]) as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == len(rows) and set(table[0]) == set(LatencyRow.__annotations__)
    data = json.loads(paths["json"].read_text())
    assert data["meta"] == {"model": "tiny"} and len(data["rows"]) == len(rows)
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths["md"].read_text() == markdown_table(rows) + "\n"
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]


def test_markdown_table_has_one_line_per_shape(rows):
    lines = markdown_table(rows).splitlines()
    assert len(lines) == 2 + 2 and lines[2].startswith("| 1 | 8 |") and lines[3].startswith("| 2 | 8 |")


def test_quick_command_writes_everything(tmp_path, capsys):
    threads = torch.get_num_threads()
    assert main(["--quick", "--out", str(tmp_path)]) == 0
    assert torch.get_num_threads() == threads
    data = json.loads((tmp_path / "latency.json").read_text())
    assert {r["config"] for r in data["rows"]} == set(CONFIGS)
    assert len({(r["batch_size"], r["seq_len"]) for r in data["rows"]}) == 2
    assert data["meta"]["checks"]["merged_vs_unmerged"] <= 1e-5 * data["meta"]["checks"]["base_max_abs"]
    assert "| batch | seq |" in capsys.readouterr().out


def test_bad_settings_are_user_errors():
    with pytest.raises(LoraLabError, match="batch_sizes"):
        LatencySettings((), (8,))
    with pytest.raises(LoraLabError, match="repeats"):
        LatencySettings((1,), (8,), repeats=0)
    with pytest.raises(LoraLabError, match="positions"):
        make_inputs(tiny_model("bert"), 1, 10_000)
