"""Default targets (the paper's Wq, Wv) derived from the architecture table, on families the tiny-model
set does not cover: Phi-3's fused qkv_proj (equal and grouped-query widths), MPNet, and ViT's older names."""
import pytest
import torch
import transformers
from torch import nn

import loralab
from loralab import LoraConfig, LoraLabError
from loralab.models.architectures import architecture, architecture_for
from loralab.surgery.presets import preset_for
from loralab.testing import model_output

HIDDEN, LAYERS = 32, 2


def tiny_phi3(kv_heads: int) -> nn.Module:
    config = transformers.Phi3Config(vocab_size=100, hidden_size=HIDDEN, intermediate_size=48, num_hidden_layers=LAYERS,
                                     num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=64,
                                     pad_token_id=0)
    torch.manual_seed(0)
    return transformers.Phi3ForCausalLM(config).eval()


def test_phi3_preset_adapts_the_q_and_v_slices_of_qkv_proj():
    model = tiny_phi3(kv_heads=4)                   # no grouping: q, k, v are 32 wide each
    inputs = {"input_ids": torch.randint(3, 100, (2, 7), generator=torch.Generator().manual_seed(1))}
    before = model_output(model, inputs)
    assert preset_for(model).fused_slices == {"qkv_proj": [True, False, True]}
    plan = loralab.plan_injection(model, LoraConfig(r=2))
    assert [p.name for p in plan] == [f"model.layers.{i}.self_attn.qkv_proj" for i in range(LAYERS)]
    assert all(p.slices == (True, False, True) and p.num_params == 2 * 2 * (HIDDEN + HIDDEN) for p in plan)
    loralab.inject(model, LoraConfig(r=2))
    assert torch.equal(model_output(model, inputs), before)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == sum(p.num_params for p in plan)


def test_phi3_grouped_query_preset_gives_the_slice_widths():
    model = tiny_phi3(kv_heads=2)                   # head_dim 8: q 4·8 = 32, k and v 2·8 = 16
    assert preset_for(model).targets == ("qkv_proj",)
    assert preset_for(model).fused_slices == {"qkv_proj": {"adapt": [True, False, True], "widths": [32, 16, 16]}}


def test_phi3_grouped_query_preset_injects():
    model = tiny_phi3(kv_heads=2)
    inputs = {"input_ids": torch.randint(3, 100, (2, 7), generator=torch.Generator().manual_seed(1))}
    before = model_output(model, inputs)
    loralab.inject(model, LoraConfig(r=2))
    assert torch.equal(model_output(model, inputs), before)
    # per layer: the q slice (A 2×32, B 32×2) and the v slice (A 2×32, B 16×2)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == LAYERS * 2 * ((HIDDEN + 32) + (HIDDEN + 16))


def test_mpnet_preset_names_its_q_and_v():
    config = transformers.MPNetConfig(vocab_size=100, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                                      num_attention_heads=4, intermediate_size=37, num_labels=2)
    model = transformers.MPNetForSequenceClassification(config).eval()
    plan = loralab.plan_injection(model, LoraConfig(r=2))      # was ("query", "value"): matched nothing
    assert [p.name.split(".", 3)[-1] for p in plan] == ["0.attention.attn.q", "0.attention.attn.v",
                                                         "1.attention.attn.q", "1.attention.attn.v"]
    assert preset_for(model).head == ("classifier",)


class _OldViTLayer(nn.Module):
    """The module names of ViT's attention before transformers 5.x renamed them."""

    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.Module()
        self.attention.attention = nn.ModuleDict({n: nn.Linear(4, 4) for n in ("query", "key", "value")})
        self.attention.output = nn.ModuleDict({"dense": nn.Linear(4, 4)})
        self.intermediate = nn.ModuleDict({"dense": nn.Linear(4, 8)})
        self.output = nn.ModuleDict({"dense": nn.Linear(8, 4)})


def test_older_names_are_picked_when_the_model_has_them():
    model = nn.Module()
    model.config = transformers.ViTConfig()
    model.encoder = nn.Module()
    model.encoder.layer = nn.ModuleList([_OldViTLayer()])
    assert architecture_for(model) is architecture("vit").alternatives[0]
    assert preset_for(model).targets == ("query", "value")
    plan = loralab.plan_injection(model, LoraConfig(r=2))
    assert [p.name for p in plan] == ["encoder.layer.0.attention.attention.query",
                                      "encoder.layer.0.attention.attention.value"]
