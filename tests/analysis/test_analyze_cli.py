import csv
import json
import math

import pytest
import torch

import loralab
from loralab.adapters.state import lora_layers
from loralab.analysis import analyze_adapters, load_deltas, write_report
from loralab.cli.main import main
from loralab.core.kinds import weight_matrix
from loralab.testing import tiny_model


def _trained_adapter(family, r, alpha, path, seed, **config):
    """A model with LoRA whose B is random (as if trained), saved as a PEFT-layout folder."""
    model = tiny_model(family)
    loralab.inject(model, loralab.LoraConfig(r=r, alpha=alpha, **config))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in lora_layers(model):
            f = layer.lora_adapters["default"]
            f.A.copy_(torch.randn(f.A.shape, generator=g))
            f.B.copy_(torch.randn(f.B.shape, generator=g) * 0.1)
    loralab.save_adapter(model, path)
    return model


@pytest.fixture(scope="module")
def bert_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("analyze")
    base = root / "base"
    tiny_model("bert").save_pretrained(base)
    m4 = _trained_adapter("bert", 4, 8, root / "r4", seed=1)
    m8 = _trained_adapter("bert", 8, 16, root / "r8", seed=2)
    return root, base, m4, m8


def _deltas(model):
    return {name: layer.lora_adapters["default"].delta_weight().detach().double() for name, layer in lora_layers(model)}


def test_cli_one_adapter_writes_spectra(bert_setup, tmp_path, capsys):
    root, _, m4, _ = bert_setup
    out = tmp_path / "one"
    assert main(["analyze", str(root / "r4"), "--output", str(out)]) == 0
    assert "report:" in capsys.readouterr().out
    data = json.loads((out / "analysis.json").read_text())
    assert data["similarity"] is None and data["adapters"][0]["amplification"] is None
    dense = _deltas(m4)
    spectra = {s["name"]: s for s in data["adapters"][0]["spectra"]}
    assert set(spectra) == set(dense)
    for name, dw in dense.items():
        expected = torch.linalg.svdvals(dw)[:4]
        assert spectra[name]["singular_values"] == pytest.approx(expected.tolist(), rel=1e-5)
        assert spectra[name]["frobenius"] == pytest.approx(float(torch.linalg.matrix_norm(dw)), rel=1e-5)
    with open(out / "spectra.csv") as fh:
        assert len(list(csv.DictReader(fh))) == len(dense)
    assert not (out / "subspace.csv").exists() and not (out / "amplification.csv").exists()
    assert not list(out.rglob("*.tmp"))


def test_cli_two_adapters_and_base(bert_setup, tmp_path, capsys):
    root, base, m4, m8 = bert_setup
    out = tmp_path / "two"
    assert main(["analyze", str(root / "r4"), str(root / "r8"), "--base", str(base), "--output", str(out),
                 "--trials", "5"]) == 0
    printed = capsys.readouterr().out
    assert "subspace similarity (A)" in printed and "amplif." in printed
    data = json.loads((out / "analysis.json").read_text())

    # φ grids are r1 × r2 and match a direct computation from the saved A matrices
    sims = {s["name"]: s for s in data["similarity"]}
    assert len(sims) == len(_deltas(m4))
    name = sorted(sims)[0]
    s = sims[name]
    assert (s["r1"], s["r2"], s["dim"]) == (4, 8, 32)
    layers4, layers8 = dict(lora_layers(m4)), dict(lora_layers(m8))
    A4, A8 = layers4[name].lora_adapters["default"].A.detach(), layers8[name].lora_adapters["default"].A.detach()
    assert s["phi"][1][5] == pytest.approx(loralab.analysis.phi(A4, A8, 2, 6), abs=1e-9)
    assert s["expected"][3][7] == pytest.approx(8 / 32)
    with open(out / "subspace.csv") as fh:
        assert len(list(csv.DictReader(fh))) == len(sims) * 4 * 8

    # ΔW vs W: recompute the projection for one module from the dense ΔW and the base model's W0
    base_model = tiny_model("bert")
    amps = {m["name"]: m for m in data["adapters"][0]["amplification"]}
    dw = _deltas(m4)[name]
    W = weight_matrix(base_model.get_submodule(name)).detach().double()
    U, S, Vh = torch.linalg.svd(dw)
    proj = float(torch.linalg.matrix_norm(U[:, :4].T @ W @ Vh[:4].T))
    assert amps[name]["proj_delta"] == pytest.approx(proj, rel=1e-5)
    assert amps[name]["amplification"] == pytest.approx(float(torch.linalg.matrix_norm(dw)) / proj, rel=1e-5)
    assert amps[name]["proj_w_top"] == pytest.approx(
        math.sqrt(float((torch.linalg.svdvals(W)[:4] ** 2).sum())), rel=1e-6)
    assert len(data["adapters"][1]["amplification"]) == len(amps)

    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(list((out / "figures").glob("*.png")))
    assert page.count("data:image/png;base64,") >= 2 * 2 + 1 + len(sims) + 2
    assert "ΔW versus W" in page and "Subspace similarity" in page
    assert not list(out.rglob("*.tmp"))


def test_gpt2_fused_adapter_is_split_per_slice(tmp_path):
    model = _trained_adapter("gpt2", 2, 4, tmp_path / "a", seed=3)
    deltas, _ = load_deltas(tmp_path / "a")
    assert [d.name for d in deltas] == [f"transformer.h.{i}.attn.c_attn[{s}]" for i in (0, 1) for s in (0, 2)]
    layer = dict(lora_layers(model))["transformer.h.0.attn.c_attn"]
    full = layer.lora_adapters["default"].delta_weight().detach().double()     # (96, 32) in the matrix view
    q, v = deltas[0], deltas[1]
    torch.testing.assert_close(q.dense(), full[0:32], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(v.dense(), full[64:96], rtol=1e-6, atol=1e-7)
    assert q.r == 2 and q.rows == (0, 32)
    # not split: one rank-4 ΔW on the whole projection
    whole, _ = load_deltas(tmp_path / "a", split_fused=False)
    assert [(d.name, d.r) for d in whole] == [("transformer.h.0.attn.c_attn", 4), ("transformer.h.1.attn.c_attn", 4)]

    # ΔW vs W on the slices uses the q / v rows of GPT-2's transposed Conv1D weight
    base = tmp_path / "base"
    tiny_model("gpt2").save_pretrained(base)
    report = analyze_adapters([tmp_path / "a"], base=base, trials=2)
    amp = report.adapters[0].amplification[1]
    W_v = tiny_model("gpt2").transformer.h[0].attn.c_attn.weight.detach().double().T[64:96]
    assert amp.name.endswith("c_attn[2]")
    assert amp.w_fro == pytest.approx(float(torch.linalg.matrix_norm(W_v)), rel=1e-6)


def test_write_report_on_untrained_adapter_writes_nan_as_null(tmp_path):
    model = tiny_model("bert")
    loralab.inject(model, loralab.LoraConfig(r=2, alpha=2))
    loralab.save_adapter(model, tmp_path / "zero")
    report = analyze_adapters([tmp_path / "zero"], base_model=tiny_model("bert"), trials=1)
    assert any("exactly zero" in n for n in report.notes)
    write_report(report, tmp_path / "out")
    data = json.loads((tmp_path / "out" / "analysis.json").read_text())
    assert all(m["amplification"] is None for m in data["adapters"][0]["amplification"])


def test_cli_errors(bert_setup, tmp_path, capsys):
    root, _, _, _ = bert_setup
    assert main(["analyze", str(root / "r4"), str(root / "r8"), str(root / "r4"), "--output", str(tmp_path)]) == 2
    assert "one or two adapter folders" in capsys.readouterr().err
    assert main(["analyze", str(tmp_path / "missing"), "--output", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "base").mkdir()
    assert main(["analyze", str(root / "r4"), "--base", str(tmp_path / "base"), "--output", str(tmp_path / "o")]) == 2
    assert "holds neither config.json nor a .gguf file" in capsys.readouterr().err


def test_base_module_resolution_across_task_heads():
    from loralab.analysis.base import base_weights, resolve_module

    classifier = tiny_model("bert")                 # BertForSequenceClassification: "bert.encoder…"
    bare = classifier.bert                          # BertModel: "encoder…"
    name = "encoder.layer.1.attention.self.value"
    assert resolve_module(classifier, name) is classifier.bert.encoder.layer[1].attention.self.value
    assert resolve_module(bare, "bert." + name) is bare.encoder.layer[1].attention.self.value
    assert resolve_module(bare, "nothing.here") is None
    W = base_weights(classifier, [name])[name]
    assert W.dtype == torch.float64 and W.shape == (32, 32)
    torch.testing.assert_close(W, bare.encoder.layer[1].attention.self.value.weight.detach().double())


@pytest.fixture(scope="module")
def minilm_adapter(tmp_path_factory):
    """An adapter on the builtin MiniLM with random factors (injected and filled, not trained)."""
    from transformers import AutoModel

    from loralab.models import resolve_model_spec

    folder = resolve_model_spec("all-minilm-l6-v2")
    model = loralab.inject(AutoModel.from_pretrained(folder).eval(), loralab.LoraConfig(r=2, alpha=4))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for _, layer in lora_layers(model):
            f = layer.lora_adapters["default"]
            f.A.copy_(torch.randn(f.A.shape, generator=g))
            f.B.copy_(torch.randn(f.B.shape, generator=g) * 0.1)
    path = tmp_path_factory.mktemp("minilm") / "adapter"
    loralab.save_adapter(model, path)
    return folder, path


def test_base_takes_a_builtin_model_name_as_train_does(minilm_adapter, tmp_path, capsys):
    folder, adapter = minilm_adapter
    assert main(["analyze", str(adapter), "--base", "all-minilm-l6-v2", "--trials", "2",
                 "--output", str(tmp_path / "by_name")]) == 0
    assert main(["analyze", str(adapter), "--base", str(folder), "--trials", "2",
                 "--output", str(tmp_path / "by_folder")]) == 0
    by_name = json.loads((tmp_path / "by_name" / "analysis.json").read_text())
    by_folder = json.loads((tmp_path / "by_folder" / "analysis.json").read_text())
    assert by_name["settings"].pop("base") == "all-minilm-l6-v2"     # the report names the model as given
    assert by_folder["settings"].pop("base") == str(folder)
    assert by_name == by_folder and len(by_name["adapters"][0]["amplification"]) == 12
    assert (tmp_path / "by_name" / "amplification.csv").read_bytes() == \
        (tmp_path / "by_folder" / "amplification.csv").read_bytes()


def test_base_name_resolves_before_the_output_policy_and_unknown_names_are_one_line(minilm_adapter, tmp_path,
                                                                                    capsys):
    folder, adapter = minilm_adapter
    before = sorted(p.name for p in folder.iterdir())
    assert main(["analyze", str(adapter), "--base", "all-minilm-l6-v2", "--output", str(folder / "report")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("loralab analyze: error: ") and err.count("\n") == 1     # inside the resolved folder
    assert sorted(p.name for p in folder.iterdir()) == before
    assert main(["analyze", str(adapter), "--base", "no-such-model-here", "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("loralab analyze: error: model 'no-such-model-here' not found: not a builtin "
                          "model (") and err.count("\n") == 1
    assert not (tmp_path / "o").exists()
