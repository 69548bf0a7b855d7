"""`loralab merge --quantize`: an adapter trained on a quantized base merges into that base, kept in full
precision (the trained model's outputs exactly) or re-quantized into bitsandbytes' format (loads with
transformers + bitsandbytes and with loralab, the same codes loralab computed, the added error reported)."""
from __future__ import annotations

import copy

import pytest
import torch

import loralab
from loralab.cli.main import main
from loralab.models import load_model
from loralab.quantization import NF4Linear, dequantize_model, merge_into_quantized, quantize
from loralab.testing import randomize_trainable, tiny_model

pytest.importorskip("bitsandbytes")


@pytest.fixture
def trained(tmp_path):
    """A tiny LLaMA saved plain, and an adapter trained (randomised) on its nf4-quantized copy."""
    tiny_model("llama", hidden_size=64, intermediate_size=128).save_pretrained(tmp_path / "base")
    model = quantize(load_model(str(tmp_path / "base")), "nf4")
    loralab.inject(model, loralab.LoraConfig(r=4, targets=["q_proj", "v_proj", "down_proj"]))
    randomize_trainable(model, scale=0.3)
    loralab.save_adapter(model, tmp_path / "adapter")
    return tmp_path, model


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_merge_into_the_quantized_base_in_full_precision_keeps_the_outputs(trained, capsys):
    root, model = trained
    ids = torch.randint(0, 100, (2, 9))
    assert main(["merge", str(root / "base"), str(root / "adapter"), str(root / "out"), "--quantize", "nf4"]) == 0
    assert "merged into 6 nf4 layers kept in full precision" in capsys.readouterr().out
    import transformers

    merged = transformers.AutoModelForCausalLM.from_pretrained(root / "out")
    # the trained model in fp32 arithmetic (its nf4 layers multiply in bf16 on this CPU): dequantized W0 + LoRA
    reference = dequantize_model(copy.deepcopy(model))
    torch.testing.assert_close(_logits(merged, ids), _logits(reference, ids), rtol=1e-4, atol=1e-5)


def test_requantized_merge_saves_bitsandbytes_format_with_loralab_codes(trained, capsys):
    root, model = trained
    assert main(["merge", str(root / "base"), str(root / "adapter"), str(root / "out"), "--quantize", "nf4",
                 "--requantize"]) == 0
    out = capsys.readouterr().out
    assert "re-quantized 6 merged layers to nf4: relative weight error" in out and "is lost to rounding" in out
    expected = merge_into_quantized(model, "requantize")              # the same merge, in memory
    loaded = load_model(str(root / "out"))                              # bitsandbytes' file, read by loralab
    layer = loaded.model.layers[1].mlp.down_proj
    assert isinstance(layer, NF4Linear)
    torch.testing.assert_close(layer.dequantize(), model.model.layers[1].mlp.down_proj.dequantize(), rtol=0,
                               atol=1e-6)
    assert expected.rel_error > 0


def test_requantize_needs_the_base_quantization(trained, capsys):
    root, _ = trained
    assert main(["merge", str(root / "base"), str(root / "adapter"), str(root / "out"), "--requantize"]) == 2
    assert "give the base's --quantize" in capsys.readouterr().err
    assert not (root / "out").exists()
