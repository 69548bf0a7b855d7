"""Models saved already quantized: bitsandbytes nf4 and int8 checkpoints (quantization_config in config.json)
load with loralab's quantized layers holding bitsandbytes' exact codes, and LoRA trains on them; other saved
quantizations, bitsandbytes' fp4 and a missing bitsandbytes are one-line errors that load nothing."""
from __future__ import annotations

import builtins
import json

import pytest
import torch

import loralab
from loralab.errors import LoraLabError
from loralab.models import load_model
from loralab.quantization import Int8Linear, FbgemmInt8Linear, NF4Linear
from loralab.testing import tiny_model

bnb = pytest.importorskip("bitsandbytes")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny LLaMA (hidden 64: whole NF4 blocks per row) saved plain, as bitsandbytes nf4 (double
    quantized) and as bitsandbytes int8."""
    root = tmp_path_factory.mktemp("saved-quantized")
    tiny_model("llama", hidden_size=64, intermediate_size=128).save_pretrained(root / "plain")
    configs = {"nf4": transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                      bnb_4bit_use_double_quant=True),
               "int8": transformers.BitsAndBytesConfig(load_in_8bit=True)}
    for name, config in configs.items():
        model = transformers.AutoModelForCausalLM.from_pretrained(root / "plain", quantization_config=config)
        model.save_pretrained(root / name)
    return root


@pytest.mark.parametrize("scheme, layer_type", [("nf4", NF4Linear), ("int8", (Int8Linear, FbgemmInt8Linear))])
def test_bitsandbytes_checkpoints_load_as_loralab_layers_with_their_codes(saved, scheme, layer_type):
    reference = transformers.AutoModelForCausalLM.from_pretrained(saved / scheme)    # bitsandbytes' own layers
    model = load_model(str(saved / scheme))
    ours, theirs = model.model.layers[0].self_attn.q_proj, reference.model.layers[0].self_attn.q_proj
    assert isinstance(ours, layer_type)
    if scheme == "nf4":
        expected = bnb.functional.dequantize_4bit(theirs.weight.data, theirs.weight.quant_state).float()
    else:
        expected = theirs.weight.data.float() * theirs.weight.SCB[:, None] / 127
    torch.testing.assert_close(ours.dequantize(), expected, rtol=0, atol=1e-6)
    plain = load_model(str(saved / "plain")).model.layers[0].self_attn.q_proj.weight
    error = (ours.dequantize() - plain).norm() / plain.norm()
    assert error.item() < (0.15 if scheme == "nf4" else 0.01)


def test_lora_trains_on_a_loaded_nf4_checkpoint_and_saves_plain_factors(saved, tmp_path):
    model = load_model(str(saved / "nf4"))
    loralab.inject(model, loralab.LoraConfig(r=4, targets=["q_proj", "v_proj"]))
    ids = torch.randint(0, 100, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    factors = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert len(factors) == 8          # A and B of q_proj and v_proj in 2 layers; with B = 0 only B has gradients
    assert all(p.grad.abs().sum() > 0 for n, p in factors.items() if n.endswith(".B"))
    loralab.save_adapter(model, tmp_path / "adapter")
    plain = load_model(str(saved / "plain"))
    loralab.load_adapter(plain, tmp_path / "adapter")                # the adapter loads on the unquantized base


def _with_config(tmp_path, saved, quantization_config: dict):
    folder = tmp_path / "model"
    folder.mkdir()
    config = json.loads((saved / "plain" / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "quantization_config": quantization_config}))
    return folder


@pytest.mark.parametrize("config, message", [
    ({"quant_method": "gptq", "bits": 4}, "saved quantized with 'gptq'.*loads bitsandbytes nf4 and int8 checkpoints "
                                          "only: load the unquantized model and quantize it with --quantize"),
    ({"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "fp4"}, "'fp4' 4-bit format"),
])
def test_other_saved_quantizations_are_one_line_errors(saved, tmp_path, config, message):
    with pytest.raises(LoraLabError, match=message) as error:
        load_model(str(_with_config(tmp_path, saved, config)))
    assert "\n" not in str(error.value)


def test_a_missing_bitsandbytes_is_named(saved, monkeypatch):
    real_import = builtins.__import__

    def no_bitsandbytes(name, *args, **kwargs):
        if name == "bitsandbytes" or name.startswith("bitsandbytes."):
            raise ImportError("No module named 'bitsandbytes'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_bitsandbytes)
    with pytest.raises(LoraLabError, match="saved quantized by bitsandbytes, which is not installed: pip install"):
        load_model(str(saved / "nf4"))
