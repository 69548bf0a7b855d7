"""PEFT-layout adapter files: our round trip, PEFT loads ours, we load PEFT's, and bad files."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import loralab
from loralab import LoraConfig, LoraLabError
from loralab.core.lora import SlicedLoraFactors
from loralab.testing import model_output, tiny_inputs, tiny_model

peft = pytest.importorskip("peft")


def randomize_ours(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)


def randomize_peft(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n or "modules_to_save" in n:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)


class ConvEmbedNet(nn.Module):
    """A plain PyTorch model with every layer kind PEFT and loralab both handle."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(30, 8)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.conv1 = nn.Conv1d(4, 4, 3, padding=1)
        self.head = nn.Linear(4 * 8 * 8, 5)

    def forward(self, ids):
        x = self.emb(ids)                               # (N, 8, 8) from 8 ids
        x = self.conv(x[:, None])                       # (N, 4, 8, 8)
        x = self.conv1(x.flatten(2)).reshape(x.shape)   # (N, 4, 8, 8)
        return self.head(x.flatten(1))


CASES = {
    "bert": dict(config=dict(r=4, alpha=8, modules_to_save=["classifier"], bias="lora_only")),
    "gpt2": dict(config=dict(r=2, alpha=4)),                      # q,v slices of the fused c_attn
    "llama": dict(config=dict(r=4, alpha=16, targets="all-linear", rslora=True)),
    "llama-dora": dict(config=dict(r=4, alpha=8, dora=True, rank_pattern={"layers.1.self_attn.v_proj": 2})),
}


def build(case, seed=0):
    family = case.split("-")[0]
    return tiny_model(family, seed=seed)


@pytest.mark.parametrize("case", list(CASES))
def test_peft_loads_our_adapter_with_identical_outputs(case, tmp_path):
    model = build(case)
    inputs = tiny_inputs(model)
    loralab.inject(model, LoraConfig(**CASES[case]["config"]))
    randomize_ours(model)
    ours = model_output(model, inputs)
    loralab.save_adapter(model, tmp_path / "ad")
    peft_model = peft.PeftModel.from_pretrained(build(case), str(tmp_path / "ad")).eval()
    with torch.no_grad():
        theirs = peft_model(**inputs).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", list(CASES))
def test_we_load_peft_adapters_with_identical_outputs(case, tmp_path):
    family = case.split("-")[0]
    cfg = CASES[case]["config"]
    targets = {"bert": ["query", "value"], "gpt2": ["c_attn"], "llama": ["q_proj", "v_proj"]}[family]
    peft_cfg = peft.LoraConfig(
        r=cfg["r"], lora_alpha=cfg["alpha"], target_modules="all-linear" if cfg.get("targets") else targets,
        modules_to_save=cfg.get("modules_to_save"), bias=cfg.get("bias", "none"), use_rslora=cfg.get("rslora", False),
        use_dora=cfg.get("dora", False), rank_pattern=cfg.get("rank_pattern", {}), fan_in_fan_out=family == "gpt2")
    peft_model = peft.get_peft_model(build(case), peft_cfg)
    randomize_peft(peft_model)
    peft_model.eval()
    inputs = tiny_inputs(peft_model.base_model.model)
    with torch.no_grad():
        theirs = peft_model(**inputs).logits
    peft_model.save_pretrained(str(tmp_path / "peft"))
    model = loralab.load_adapter(build(case), tmp_path / "peft")
    torch.testing.assert_close(model_output(model, inputs), theirs, rtol=1e-4, atol=1e-5)


def test_embedding_and_conv_interoperate_both_ways(tmp_path):
    ids = torch.randint(0, 30, (3, 8), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    net = ConvEmbedNet().eval()
    loralab.inject(net, LoraConfig(r=2, alpha=4, targets=["emb", "conv", "conv1"]))
    randomize_ours(net)
    with torch.no_grad():
        ours = net(ids)
    loralab.save_adapter(net, tmp_path / "ad")
    keys = load_file(str(tmp_path / "ad" / "adapter_model.safetensors"))
    assert keys["base_model.model.emb.lora_embedding_A"].shape == (2, 30)
    assert keys["base_model.model.emb.lora_embedding_B"].shape == (8, 2)
    assert keys["base_model.model.conv.lora_A.weight"].shape == (2, 1, 3, 3)
    assert keys["base_model.model.conv.lora_B.weight"].shape == (4, 2, 1, 1)
    torch.manual_seed(0)
    base = ConvEmbedNet().eval()
    pm = peft.PeftModel.from_pretrained(base, str(tmp_path / "ad")).eval()
    with torch.no_grad():
        torch.testing.assert_close(pm(ids), ours, rtol=1e-4, atol=1e-5)
    pm.save_pretrained(str(tmp_path / "back"))
    torch.manual_seed(0)
    again = loralab.load_adapter(ConvEmbedNet().eval(), tmp_path / "back")
    with torch.no_grad():
        torch.testing.assert_close(again(ids), ours, rtol=1e-4, atol=1e-5)


def test_our_round_trip_keeps_fused_slices_and_file_layout(tmp_path):
    model = tiny_model("gpt2")
    inputs = tiny_inputs(model)
    loralab.inject(model, LoraConfig(r=2, alpha=4))
    randomize_ours(model)
    out = model_output(model, inputs)
    loralab.save_adapter(model, tmp_path / "ad")
    config = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["fan_in_fan_out"] is True
    assert config["r"] == 4 and config["lora_alpha"] == 8.0      # q and v slices: rank 2+2, same scale 2
    tensors = load_file(str(tmp_path / "ad" / "adapter_model.safetensors"))
    B = tensors["base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"]
    assert B.shape == (96, 4) and torch.count_nonzero(B[32:64]) == 0   # k rows stay zero
    loaded = loralab.load_adapter(tiny_model("gpt2"), tmp_path / "ad")
    f = dict(loralab.lora_layers(loaded))["transformer.h.0.attn.c_attn"].lora_adapters["default"]
    assert isinstance(f, SlicedLoraFactors) and f.slices == (True, False, True)
    torch.testing.assert_close(model_output(loaded, inputs), out, rtol=1e-5, atol=1e-6)
    assert sorted(os.listdir(tmp_path / "ad")) == ["adapter_config.json", "adapter_model.safetensors"]


def test_pissa_adapter_is_saved_relative_to_the_original_weights(tmp_path):
    model = tiny_model("llama")
    inputs = tiny_inputs(model)
    loralab.inject(model, LoraConfig(r=4, init="pissa"))
    randomize_ours(model)
    out = model_output(model, inputs)
    loralab.save_adapter(model, tmp_path / "ad")
    loaded = loralab.load_adapter(tiny_model("llama"), tmp_path / "ad")     # original W0, not the residual
    torch.testing.assert_close(model_output(loaded, inputs), out, rtol=1e-4, atol=1e-5)


def test_adapter_for_another_base_is_refused_naming_the_mismatch(tmp_path):
    model = tiny_model("bert")
    loralab.inject(model, LoraConfig(r=4))
    loralab.save_adapter(model, tmp_path / "ad")
    other = tiny_model("bert", hidden_size=48)
    with pytest.raises(LoraLabError, match=r"shape \(32, 32\) for bert.encoder.layer.0.attention.self.query.*\(48, 48\)"):
        loralab.load_adapter(other, tmp_path / "ad")
    assert not hasattr(other, "loralab_state")             # nothing half-done
    with pytest.raises(LoraLabError, match="targets bert.encoder.layer.0.attention.self.query, which this model does not have"):
        loralab.load_adapter(tiny_model("llama"), tmp_path / "ad")


def test_corrupted_truncated_and_pickled_files(tmp_path):
    model = tiny_model("bert")
    loralab.inject(model, LoraConfig(r=4))
    folder = loralab.save_adapter(model, tmp_path / "ad")
    weights = folder / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(LoraLabError, match="truncated or corrupted"):
        loralab.read_adapter(folder)
    weights.write_bytes(data)
    (folder / "adapter_config.json").write_text("{\"r\": 4,")
    with pytest.raises(LoraLabError, match="not valid JSON"):
        loralab.read_adapter(folder)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3"}))
    with pytest.raises(LoraLabError, match="IA3 adapter"):
        loralab.read_adapter(folder)
    weights.rename(folder / "adapter_model.bin")
    with pytest.raises(LoraLabError, match="pickles and are never loaded"):
        loralab.read_adapter(folder)
    with pytest.raises(LoraLabError, match="does not exist"):
        loralab.read_adapter(tmp_path / "missing")


def test_read_adapter_gives_factors_in_matrix_view(tmp_path):
    model = tiny_model("gpt2")
    loralab.inject(model, LoraConfig(r=3, alpha=6, targets=["c_fc"]))
    randomize_ours(model)
    loralab.save_adapter(model, tmp_path / "ad")
    file = loralab.read_adapter(tmp_path / "ad")
    A, B, scale = file.factors["transformer.h.0.mlp.c_fc"]
    assert A.shape == (3, 32) and B.shape == (128, 3) and scale == 2.0
    f = dict(loralab.lora_layers(model))["transformer.h.0.mlp.c_fc"].lora_adapters["default"]
    torch.testing.assert_close(scale * B @ A, f.delta_weight().detach())
