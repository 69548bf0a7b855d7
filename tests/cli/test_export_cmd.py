"""`loralab export ADAPTER --to gguf -o OUT`: a GGUF LoRA adapter for llama.cpp / Ollama, or one line and exit 2."""
import json
import os

import gguf
import numpy as np
import pytest

import loralab
from loralab.cli.main import main
from loralab.testing import fill_adapter, tiny_model


@pytest.fixture
def saved(tmp_path):
    """(base folder, adapter folder) of a tiny LLaMA with q and v adapted."""
    model = tiny_model("llama")
    model.save_pretrained(tmp_path / "base")
    loralab.inject(model, loralab.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    fill_adapter(model, "default", seed=1)
    loralab.save_adapter(model, tmp_path / "adapter")
    return tmp_path / "base", tmp_path / "adapter"


def _error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("loralab export: error: "), err
    return lines[0].removeprefix("loralab export: error: ")


def test_export_writes_a_gguf_lora_adapter(saved, tmp_path, capsys):
    base, adapter = saved
    out = tmp_path / "adapter.gguf"
    assert main(["export", str(adapter), "--to", "gguf", "-o", str(out), "--base", str(base)]) == 0
    assert capsys.readouterr().out == (f"exported 4 adapted matrices of {adapter} -> {out} (GGUF LoRA adapter, fp32; "
                                       f"llama.cpp: --lora {out}, Ollama: ADAPTER {out})\n")
    reader = gguf.GGUFReader(out)
    assert reader.fields["general.type"].contents() == "adapter"
    assert reader.fields["adapter.type"].contents() == "lora"
    assert sorted(t.name for t in reader.tensors) == sorted(
        f"blk.{i}.attn_{m}.weight.lora_{ab}" for i in (0, 1) for m in "qv" for ab in "ab")
    A = loralab.read_adapter(adapter).factors["model.layers.1.self_attn.v_proj"][0]
    a = next(t for t in reader.tensors if t.name == "blk.1.attn_v.weight.lora_a")
    assert np.array_equal(np.asarray(a.data), A.numpy())


def test_base_from_the_adapter_config(saved, tmp_path):
    base, adapter = saved
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(base)
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    assert main(["export", str(adapter), "--to", "gguf", "-o", str(tmp_path / "a.gguf"), "--dtype", "fp16"]) == 0
    assert {t.tensor_type for t in gguf.GGUFReader(tmp_path / "a.gguf").tensors} == {gguf.GGMLQuantizationType.F16}


def test_no_base_is_one_line(saved, tmp_path, capsys):
    _, adapter = saved
    assert main(["export", str(adapter), "--to", "gguf", "-o", str(tmp_path / "a.gguf")]) == 2
    assert _error(capsys) == (f"{adapter} does not name its base model (base_model_name_or_path); give it with "
                              f"--base MODEL (the model the adapter was trained on)")
    assert not (tmp_path / "a.gguf").exists()


def test_not_an_adapter_folder_is_one_line(saved, tmp_path, capsys):
    base, _ = saved
    assert main(["export", str(base), "--to", "gguf", "-o", str(tmp_path / "a.gguf"), "--base", str(base)]) == 2
    assert _error(capsys).startswith(f"{base} is not an adapter folder: it has no adapter_config.json")


def test_other_family_is_one_line(tmp_path, capsys):
    model = tiny_model("gpt2")
    model.save_pretrained(tmp_path / "base")
    loralab.inject(model, loralab.LoraConfig(r=2, target_modules=["c_attn"]))
    loralab.save_adapter(model, tmp_path / "adapter")
    argv = ["export", str(tmp_path / "adapter"), "--to", "gguf", "-o", str(tmp_path / "a.gguf"),
            "--base", str(tmp_path / "base")]
    capsys.readouterr()                     # save_pretrained's progress bars
    assert main(argv) == 2
    assert _error(capsys) == ("GGUF adapter export supports llama, mistral, qwen2 bases (llama.cpp's layout); "
                              "this adapter's base is 'gpt2': merge it instead (loralab merge)")


def test_output_inside_the_adapter_is_refused_before_work(saved, capsys):
    base, adapter = saved
    before = sorted(os.listdir(adapter))
    assert main(["export", str(adapter), "--to", "gguf", "-o", str(adapter / "a.gguf"), "--base", str(base)]) == 2
    assert "a.gguf" in _error(capsys)
    assert sorted(os.listdir(adapter)) == before


def test_existing_file_is_replaced_atomically(saved, tmp_path):
    base, adapter = saved
    out = tmp_path / "a.gguf"
    out.write_bytes(b"old")
    inode = out.stat().st_ino
    assert main(["export", str(adapter), "--to", "gguf", "-o", str(out), "--base", str(base)]) == 0
    assert out.read_bytes()[:4] == b"GGUF" and out.stat().st_ino != inode
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []
