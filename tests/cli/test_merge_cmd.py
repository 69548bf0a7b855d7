"""`loralab merge` end to end on tiny saved models: the merged model's outputs, and --overwrite replacing only
a merged model loralab wrote — never photos, the adapter or the base model (issue 10, case 2)."""
import hashlib
import shutil

import pytest
import torch

import loralab
from loralab import LoraConfig, files
from loralab.cli.main import main
from loralab.testing import model_output, tiny_inputs, tiny_model


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
