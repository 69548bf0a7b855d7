"""`loralab merge` end to end on tiny saved models: the merged model's outputs, and --overwrite replacing only
a merged model loralab wrote — never photos, the adapter or the base model (issue 10, case 2)."""
import copy
import hashlib
import json
import re
import shutil

import pytest
import torch

import loralab
from loralab import LoraConfig, files
from loralab.cli.main import main
from loralab.testing import fill_adapter, model_output, tiny_inputs, tiny_model


@pytest.fixture
def bert_folder(tmp_path):
    model = tiny_model("bert")
    model.save_pretrained(tmp_path / "base")
    return tmp_path / "base"


@pytest.fixture
def adapted(tmp_path):
    """(model with a trained-looking adapter, its saved adapter folder)."""
    model = tiny_model("bert")
    loralab.inject(model, LoraConfig(r=4, modules_to_save=["classifier"]))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn(p.shape))
    loralab.save_adapter(model, tmp_path / "ad")
    return model, tmp_path / "ad"


def _error_line(err: str) -> str:
    """The one error line of stderr (transformers' loading bars aside); fails on a traceback or more lines."""
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "it/s]" not in line]
    assert len(lines) == 1 and lines[0].startswith("loralab merge: error: "), err
    return lines[0]


def _digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_merge_writes_a_plain_model_with_the_adapted_outputs(bert_folder, adapted, tmp_path, capsys):
    model, adapter = adapted
    inputs = tiny_inputs(model)
    expected = model_output(model, inputs)
    assert main(["merge", str(bert_folder), str(adapter), "--output", str(tmp_path / "merged")]) == 0
    from transformers import AutoModelForSequenceClassification
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    torch.testing.assert_close(model_output(plain, inputs), expected, rtol=1e-4, atol=1e-5)
    assert files.owned_kind(tmp_path / "merged") == "merged-model"
    assert main(["merge", str(bert_folder), str(adapter), "-o", str(tmp_path / "merged")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["merge", str(bert_folder), str(tmp_path / "nothing"), "-o", str(tmp_path / "m2")]) == 2
    assert not (tmp_path / "m2").exists()


def test_overwrite_replaces_only_a_merged_model(bert_folder, adapted, tmp_path, capsys):
    _, adapter = adapted
    out = tmp_path / "merged"
    assert main(["merge", str(bert_folder), str(adapter), "-o", str(out)]) == 0
    (out / "stale-file").write_text("from the first merge")
    assert main(["merge", str(bert_folder), str(adapter), "-o", str(out), "--overwrite"]) == 0
    assert not (out / "stale-file").exists() and files.owned_kind(out) == "merged-model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ad", "base", "merged"]   # no temporary folder left

    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "cat.jpg").write_bytes(b"\xff\xd8\xff")
    saved = {name: _digest(folder) for name, folder in (("photos", photos), ("ad", adapter), ("base", bert_folder))}
    capsys.readouterr()
    for target, message in [(photos, "not a folder loralab wrote"), (adapter, "an input of this command"),
                            (bert_folder, "an input of this command"), (bert_folder / "inside", "an input of this command"),
                            (tmp_path, "an input of this command")]:
        assert main(["merge", str(bert_folder), str(adapter), "-o", str(target), "--overwrite"]) == 2
        assert message in _error_line(capsys.readouterr().err)
    assert saved == {name: _digest(folder) for name, folder in (("photos", photos), ("ad", adapter),
                                                                  ("base", bert_folder))}


def test_a_failed_merge_leaves_the_previous_output(bert_folder, adapted, tmp_path, monkeypatch, capsys):
    _, adapter = adapted
    out = tmp_path / "merged"
    assert main(["merge", str(bert_folder), str(adapter), "-o", str(out)]) == 0
    before = _digest(out)

    def disk_full(self, folder, *args, **kwargs):
        (folder / "model.safetensors").write_bytes(b"half")
        raise OSError(28, "No space left on device", str(folder / "model.safetensors"))

    monkeypatch.setattr("transformers.PreTrainedModel.save_pretrained", disk_full)
    assert main(["merge", str(bert_folder), str(adapter), "-o", str(out), "--overwrite"]) == 2
    assert _error_line(capsys.readouterr().err).endswith(
        f"no space left on device while writing {out}; the previous output is untouched; free some space or choose "
        "an output on another disk")
    assert _digest(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["ad", "base", "merged"]


def test_unwritable_merge_output_is_one_line(bert_folder, adapted, tmp_path, capsys):
    _, adapter = adapted
    (tmp_path / "a-file").write_text("x")
    for target, message in [("/proc/loralab-merged", "cannot write /proc/loralab-merged"),
                            (str(tmp_path / "a-file"), "exists and is not a folder")]:
        assert main(["merge", str(bert_folder), str(adapter), "-o", target]) == 2
        assert message in _error_line(capsys.readouterr().err)
    shutil.rmtree(tmp_path / "ad")


# ------------------------------------------------------------------------------------------------
# The base the adapter trained on: recorded with the adapter, and merge says how far the result is from it
# ------------------------------------------------------------------------------------------------
def _nf4_trained(tmp_path):
    """(a LLaMA adapter trained-looking on the NF4-quantized base, its folder, the base folder)."""
    from loralab.quantization import quantize

    tiny_model("llama").save_pretrained(tmp_path / "base")
    model = quantize(tiny_model("llama"), "nf4")
    loralab.inject(model, LoraConfig(r=2, targets=["q_proj", "v_proj", "down_proj"]))
    fill_adapter(model, "default", seed=1, std=0.3)
    return model, loralab.save_adapter(model, tmp_path / "ad"), tmp_path / "base"


def _trained_weights(model):
    """{parameter: the trained model's effective weight}: the NF4 base dequantized, the adapter merged in."""
    from loralab.quantization import dequantize_model, merge_into_quantized

    trained = copy.deepcopy(model)
    merge_into_quantized(trained, "dequantize")
    dequantize_model(trained)                               # the layers without an adapter too
    return {n: p.detach() for n, p in trained.named_parameters()}


def _merged_weights(folder):
    from transformers import AutoModelForCausalLM

    return {n: p.detach() for n, p in AutoModelForCausalLM.from_pretrained(folder).named_parameters()}


def test_an_adapter_records_the_storage_of_the_base_it_trained_on(tmp_path):
    model, adapter, _ = _nf4_trained(tmp_path)
    assert loralab.read_adapter(adapter).loralab_meta["trained_on"] == {"quantize": "nf4", "dtype": "fp32"}
    bf16 = tiny_model("llama").to(torch.bfloat16)
    loralab.inject(bf16, LoraConfig(r=2))
    meta = loralab.read_adapter(loralab.save_adapter(bf16, tmp_path / "bf16")).loralab_meta
    assert meta["trained_on"] == {"quantize": "none", "dtype": "bf16"}


def test_merge_into_another_precision_reports_the_measured_difference_not_exactness(tmp_path, capsys):
    model, adapter, base = _nf4_trained(tmp_path)
    trained = _trained_weights(model)
    from loralab.quantization import dequantize_model, quantize

    nf4_base = dequantize_model(quantize(tiny_model("llama"), "nf4"))        # the trained base, without ΔW
    trained_base = {n: p.detach() for n, p in nf4_base.named_parameters()}
    capsys.readouterr()
    assert main(["merge", str(base), str(adapter), "-o", str(tmp_path / "same"), "--quantize", "nf4"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == ("merged into 6 nf4 layers kept in full precision: the weights "
                                                       "are the trained model's exactly (fp32 rounding)")
    same = _merged_weights(tmp_path / "same")
    assert same.keys() == trained.keys()
    assert max(float((same[n] - w).abs().max()) for n, w in trained.items()) < 1e-5
    for scheme, target in [("int8", "int8 (other weights fp32)"), ("none", "fp32")]:
        out = tmp_path / f"merged-{scheme}"
        assert main(["merge", str(base), str(adapter), "-o", str(out), "--quantize", scheme]) == 0
        lines = capsys.readouterr().out.splitlines()
        merged = _merged_weights(out)
        diffs = {n: merged[n] - w for n, w in trained.items()}
        max_abs = max(float(d.abs().max()) for d in diffs.values())
        rel = (sum(float(d.double().square().sum()) for d in diffs.values())
               / sum(float(w.double().square().sum()) for w in trained_base.values())) ** 0.5
        assert max_abs > 1e-3                               # NF4's rounding: not the trained model
        note = next(line for line in lines if line.startswith("the adapter trained on"))
        found = re.fullmatch(r"the adapter trained on a base stored as nf4 \(other weights fp32\), this merge stores "
                             rf"it as {re.escape(target)}: the merged weights differ from the trained model's by up "
                             r"to (\S+) in 14 tensors \((\S+)% of the base weights' norm\); merge with --quantize nf4 "
                             r"for the trained model's weights", note)
        assert found, note
        assert float(found[1]) == pytest.approx(max_abs, rel=2e-3)       # what was measured, printed to 3 digits
        assert float(found[2]) / 100 == pytest.approx(rel, rel=2e-3)
        assert not any("exactly" in line for line in lines)


def test_merge_of_an_adapter_without_the_record_says_the_training_precision_is_unknown(tmp_path, capsys):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    _, adapter, base = _nf4_trained(tmp_path)
    weights = adapter / "adapter_model.safetensors"
    with safe_open(str(weights), framework="pt") as fh:
        metadata = fh.metadata()
    meta = json.loads(metadata["loralab"])
    del meta["trained_on"]                                   # as every adapter saved before the field existed
    save_file(load_file(str(weights)), str(weights), metadata={**metadata, "loralab": json.dumps(meta)})
    capsys.readouterr()
    assert main(["merge", str(base), str(adapter), "-o", str(tmp_path / "m"), "--quantize", "nf4"]) == 0
    assert capsys.readouterr().out.splitlines()[:2] == [
        "merged into 6 nf4 layers kept in full precision: W = the dequantized nf4 base + the adapter's update",
        "the adapter does not record how the base it trained on was stored (saved by PEFT or an older loralab): "
        "unless that was nf4 (other weights fp32), the merged weights differ from the trained model's; merge with "
        "the training run's --quantize"]


def test_train_on_an_nf4_base_records_it_and_merge_into_int8_says_so(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("training_fixtures",
                                                  Path(__file__).parents[1] / "training" / "conftest.py")
    fixtures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixtures)
    bert = fixtures.write_tiny_bert(tmp_path / "bert")
    data = fixtures.write_sst2_slice(tmp_path, 0, 16, "train.tsv")
    assert main(["train", "--model", str(bert), "--train-file", str(data), "--max-length", "16", "--batch-size", "8",
                 "--max-steps", "2", "--threads", "1", "--no-progress", "--quantize", "nf4", "--dtype", "fp32",
                 "--output", str(tmp_path / "run")]) == 0
    adapter = tmp_path / "run" / "adapter"
    assert loralab.read_adapter(adapter).loralab_meta["trained_on"] == {"quantize": "nf4", "dtype": "fp32"}
    capsys.readouterr()
    assert main(["merge", str(bert), str(adapter), "-o", str(tmp_path / "m"), "--quantize", "int8"]) == 0
    out = capsys.readouterr().out
    assert "exactly" not in out
    assert "the adapter trained on a base stored as nf4 (other weights fp32), this merge stores it as int8 (other " \
           "weights fp32): the merged weights differ from the trained model's by up to " in out


def test_a_disk_filling_during_merge_is_one_line_and_the_previous_output_is_untouched(bert_folder, adapted, tmp_path,
                                                                                     monkeypatch, capsys):
    from safetensors import SafetensorError

    _, adapter = adapted
    out = tmp_path / "merged"
    assert main(["merge", str(bert_folder), str(adapter), "-o", str(out)]) == 0
    before, inode = _digest(out), (out / "model.safetensors").stat().st_ino

    def disk_full(tensors, filename, metadata=None):      # what safetensors raises when the disk fills
        with open(filename, "wb") as fh:
            fh.write(b"half")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr("transformers.modeling_utils.safe_save_file", disk_full)
    assert main(["merge", str(bert_folder), str(adapter), "-o", str(out), "--overwrite"]) == 2
    assert _error_line(capsys.readouterr().err) == (
        f"loralab merge: error: no space left on device while writing {out}; the previous output is untouched; free "
        "some space or choose an output on another disk")
    assert _digest(out) == before and (out / "model.safetensors").stat().st_ino == inode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ad", "base", "merged"]


def test_merge_takes_a_builtin_model_name_as_train_does(tmp_path, capsys):
    from transformers import AutoModel

    from loralab.models import resolve_model_spec
    from loralab.testing import randomize_trainable

    folder = resolve_model_spec("all-minilm-l6-v2")
    model = loralab.inject(AutoModel.from_pretrained(folder).eval(), LoraConfig(r=2))
    randomize_trainable(model)
    loralab.save_adapter(model, tmp_path / "ad")
    inputs = {"input_ids": torch.tensor([[101, 7592, 2088, 102]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    expected = model(**inputs).last_hidden_state
    assert main(["merge", "all-minilm-l6-v2", str(tmp_path / "ad"), "-o", str(tmp_path / "merged")]) == 0
    merged = AutoModel.from_pretrained(tmp_path / "merged").eval()
    torch.testing.assert_close(merged(**inputs).last_hidden_state, expected, rtol=1e-4, atol=1e-5)
    assert (tmp_path / "merged" / "tokenizer.json").read_bytes() == (folder / "tokenizer.json").read_bytes()
    before = _digest(folder)
    capsys.readouterr()
    assert main(["merge", "all-minilm-l6-v2", str(tmp_path / "ad"), "-o", str(folder / "inside")]) == 2
    assert _error_line(capsys.readouterr().err).endswith("loralab does not write into those. Choose another output "
                                                         "location")     # inside the resolved model folder
    assert _digest(folder) == before and not (folder / "inside").exists()


@pytest.fixture
def gguf_base(tmp_path, monkeypatch):
    """(tiny LLaMA GGUF file, the adapter folder of a q/v LoRA on its weights)."""
    from tests.models.conftest import write_tiny_llama_gguf

    monkeypatch.setenv("LORALAB_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "tiny.Q8_0.gguf"
    model = write_tiny_llama_gguf(path)
    loralab.inject(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    fill_adapter(model, "default", seed=2)
    loralab.save_adapter(model, tmp_path / "ad")
    return path, tmp_path / "ad"


def test_merge_to_gguf_writes_a_gguf_model(gguf_base, tmp_path, capsys):
    import gguf

    path, adapter = gguf_base
    out = tmp_path / "merged.gguf"
    assert main(["merge", str(path), str(adapter), "--to", "gguf", "-o", str(out), "--dtype", "fp16"]) == 0
    source = gguf.GGUFReader(path)
    assert capsys.readouterr().out == (
        f"merged {adapter} into {path} -> {out} (GGUF llama: 4 merged matrices stored fp16, "
        f"{len(source.tensors) - 4} tensors and {len(source.fields) - 4} metadata keys copied unchanged; "
        f"llama-server -m {out}, Ollama: FROM {out})\n")        # the reader's 3 GGUF.* fields and the architecture
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(out).tensors}
    assert types["blk.0.attn_q.weight"] == types["blk.1.attn_v.weight"] == gguf.GGMLQuantizationType.F16
    assert types["blk.0.attn_k.weight"] == gguf.GGMLQuantizationType.Q8_0


@pytest.mark.parametrize("extra, message", [
    (["--quantize", "nf4"], "--quantize applies to a merged folder; --to gguf keeps the GGUF base's quantization"),
    (["--overwrite"], "--overwrite applies to a merged folder"),
])
def test_merge_to_gguf_refuses_folder_flags(gguf_base, tmp_path, capsys, extra, message):
    path, adapter = gguf_base
    assert main(["merge", str(path), str(adapter), "--to", "gguf", "-o", str(tmp_path / "m.gguf"), *extra]) == 2
    assert message in _error_line(capsys.readouterr().err)
    assert not (tmp_path / "m.gguf").exists()


def test_merge_to_gguf_never_writes_over_its_base(gguf_base, capsys):
    path, adapter = gguf_base
    before = path.read_bytes()
    assert main(["merge", str(path), str(adapter), "--to", "gguf", "-o", str(path)]) == 2
    assert str(path) in _error_line(capsys.readouterr().err)
    assert path.read_bytes() == before


def test_merge_to_gguf_from_a_transformers_folder_names_the_way(bert_folder, adapted, tmp_path, capsys):
    _, adapter = adapted
    assert main(["merge", str(bert_folder), str(adapter), "--to", "gguf", "-o", str(tmp_path / "m.gguf")]) == 2
    assert _error_line(capsys.readouterr().err) == (
        "loralab merge: error: merge --to gguf needs a GGUF base (a .gguf file or a builtin GGUF model such as "
        "smollm2-135m-instruct); for a transformers folder merge to a folder (loralab merge BASE ADAPTER -o DIR) "
        "and convert that with llama.cpp's convert_hf_to_gguf.py")


def test_dtype_without_to_gguf_is_one_line(bert_folder, adapted, tmp_path, capsys):
    _, adapter = adapted
    assert main(["merge", str(bert_folder), str(adapter), "-o", str(tmp_path / "m"), "--dtype", "fp16"]) == 2
    assert "--dtype sets the merged matrices' precision in a GGUF file: give --to gguf too" in \
        _error_line(capsys.readouterr().err)
