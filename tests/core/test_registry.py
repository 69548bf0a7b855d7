"""Extension points: a layer kind, a variant and an init registered from this file (loralab untouched)
go through inject, merge/unmerge, save (exact PEFT keys), load and delete; registries are undone after."""
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

import loralab
from loralab import LoraConfig, LoraLabError
from loralab.core.inits import INITS, Init, register_init
from loralab.core.kinds import KINDS, LayerKind, kind_of, register_kind
from loralab.core.variants import VARIANTS, Variant, register_variant


class BlockLinear(nn.Module):
    """out = x·W + b with W (k, d) stored as n blocks of output columns: blocks (n, k, d/n)."""

    def __init__(self, k: int, d: int, n: int):
        super().__init__()
        self.blocks = nn.Parameter(torch.randn(n, k, d // n) * 0.3)
        self.bias = nn.Parameter(torch.randn(d) * 0.1)

    def forward(self, x):
        return torch.cat([x @ block for block in self.blocks], dim=-1) + self.bias


class BlockLinearKind(LayerKind):
    """Matrix view W0 (d, k): row i·(d/n) + c is blocks[i][:, c]. Files keep A transposed, under own names."""
    name = "test-block-linear"
    is_linear = True
    peft_names = ("lora_down_t", "lora_up")

    def weight(self, layer):
        return layer.blocks

    def weight_matrix(self, layer):
        n, k, w = layer.blocks.shape
        return layer.blocks.permute(0, 2, 1).reshape(n * w, k)

    def to_weight_layout(self, layer, delta):
        n, k, w = layer.blocks.shape
        return delta.reshape(n, w, k).permute(0, 2, 1)

    def to_peft(self, layer, A, B):
        return A.T, B

    def from_peft(self, A, B):
        return A.T, B


class GatedVariant(Variant):
    """ΔW' = diag(g_out)·s·B·A·diag(g_in), with trainable gates g_out (d,) and g_in (k,) starting at 1."""
    name = "test-gated"
    peft_keys = {"gate_out": "lora_gate_out", "gate_in": "lora_gate_in"}
    combinable = False
    supports_slices = False

    def extra_parameters(self, d, k):
        return {"gate_out": (d,), "gate_in": (k,)}

    def check(self, layer, f):
        if not layer.kind.is_linear:
            raise ValueError("the gated variant needs a linear layer")

    def init(self, layer, f):
        with torch.no_grad():
            f.gate_out.fill_(1.0)
            f.gate_in.fill_(1.0)

    def delta(self, f):
        return f.gate_out[:, None] * f.delta_weight() * f.gate_in[None, :]

    def forward(self, layer, f, x, out):
        return out + F.linear(f.dropout(x), self.delta(f))

    def merge(self, layer, f):
        layer.add_to_weight(self.delta(f))

    def unmerge(self, layer, f):
        layer.add_to_weight(-self.delta(f))


class ShiftedInit(Init):
    """B, A random and W0 -= s·B·A, so the output is unchanged; the offset (A0, B0) is what W0 lost."""
    name = "test-shifted"
    changes_base_weight = True

    def init(self, layer, f):
        g = torch.Generator().manual_seed(7)
        with torch.no_grad():
            f.A.copy_(torch.randn(f.A.shape, generator=g) * 0.2)
            f.B.copy_(torch.randn(f.B.shape, generator=g) * 0.2)
            layer.add_to_weight(-f.delta_weight())
        f.register_buffer("A0", f.A.detach().clone())
        f.register_buffer("B0", f.B.detach().clone())

    def base_offset(self, f):
        return f.A0, f.B0


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = BlockLinear(8, 12, 3)
        self.mid = nn.Linear(12, 12)
        self.down = BlockLinear(12, 6, 2)

    def forward(self, x):
        return self.down(torch.tanh(self.mid(torch.tanh(self.up(x)))))


def make_net(seed=0):
    torch.manual_seed(seed)
    return Net()


@pytest.fixture
def plugins():
    with KINDS.scoped(), VARIANTS.scoped(), INITS.scoped():
        register_kind(BlockLinear)(BlockLinearKind)
        register_variant(GatedVariant)
        register_init(ShiftedInit)
        yield


def train_like(model, seed=1):
    """Move every factor and extra tensor of the adapter away from its init, as training would."""
    g = torch.Generator().manual_seed(seed)
    factors = [layer.lora_adapters["default"] for _, layer in loralab.lora_layers(model)]
    with torch.no_grad():
        for p in (p for f in factors for p in f.parameters()):
            p.add_(torch.randn(p.shape, generator=g) * 0.3)


def test_kind_and_variant_round_trip_through_inject_merge_save_and_load(plugins, tmp_path):
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(3))
    net = make_net()
    base_out = net(x).detach()
    config = LoraConfig(r=2, alpha=4, targets=["up", "down"], variant="test-gated")
    plan = loralab.plan_injection(net, config)
    assert [(p.name, p.kind, p.num_params) for p in plan] == [
        ("up", "test-block-linear", 2 * (12 + 8) + 12 + 8), ("down", "test-block-linear", 2 * (6 + 12) + 6 + 12)]
    loralab.inject(net, config)
    torch.testing.assert_close(net(x), base_out)
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == sum(p.num_params for p in plan)
    train_like(net)
    adapted = net(x).detach()
    assert (adapted - base_out).abs().max() > 1e-2
    # Reference: W0 + diag(g_out)·ΔW·diag(g_in) written into a plain copy through the kind's own layout.
    ref = make_net()
    for name in ("up", "down"):
        f = dict(loralab.lora_layers(net))[name].lora_adapters["default"]
        with torch.no_grad():
            getattr(ref, name).blocks.add_(BlockLinearKind().to_weight_layout(getattr(ref, name),
                                                                              GatedVariant().delta(f)))
    torch.testing.assert_close(ref(x), adapted, rtol=1e-5, atol=1e-5)

    blocks0 = net.up.base_layer.blocks.detach().clone()
    loralab.merge(net)
    torch.testing.assert_close(net(x), adapted, rtol=1e-5, atol=1e-5)
    loralab.unmerge(net)
    torch.testing.assert_close(net.up.base_layer.blocks, blocks0, rtol=0, atol=1e-6)

    loralab.save_adapter(net, tmp_path / "ad")
    tensors = load_file(str(tmp_path / "ad" / "adapter_model.safetensors"))
    assert sorted(tensors) == sorted(f"base_model.model.{m}.{leaf}" for m in ("up", "down") for leaf in
                                     ("lora_down_t", "lora_up", "lora_gate_out", "lora_gate_in"))
    assert tensors["base_model.model.up.lora_down_t"].shape == (8, 2)        # A transposed, as the kind says
    assert tensors["base_model.model.up.lora_gate_in"].shape == (8,)
    assert json.loads((tmp_path / "ad" / "adapter_config.json").read_text())["use_dora"] is False

    loaded = loralab.load_adapter(make_net(), tmp_path / "ad")
    f = dict(loralab.lora_layers(loaded))["up"].lora_adapters["default"]
    assert f.variant.name == "test-gated"
    torch.testing.assert_close(loaded(x), adapted, rtol=1e-5, atol=1e-5)


def test_all_linear_asks_the_kind(plugins):
    names = [p.name for p in loralab.plan_injection(make_net(), LoraConfig(targets="all-linear"))]
    assert names == ["up", "mid", "down"]


def test_init_offset_is_used_for_saving_and_deleting(plugins, tmp_path):
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(5))
    net = make_net()
    base_out = net(x).detach()
    w0 = net.mid.weight.detach().clone()
    loralab.inject(net, LoraConfig(r=2, targets=["mid", "up"], init="test-shifted"))
    torch.testing.assert_close(net(x), base_out, rtol=1e-5, atol=1e-6)
    assert not torch.equal(net.mid.base_layer.weight, w0)       # W0 now holds the residual
    train_like(net)
    adapted = net(x).detach()
    loralab.save_adapter(net, tmp_path / "ad")
    assert load_file(str(tmp_path / "ad" / "adapter_model.safetensors"))["base_model.model.mid.lora_A.weight"].shape[0] == 4
    # Saved relative to the original W0: it applies to an untouched model.
    torch.testing.assert_close(loralab.load_adapter(make_net(), tmp_path / "ad")(x), adapted, rtol=1e-5, atol=1e-5)
    loralab.delete_adapter(net, "default")
    torch.testing.assert_close(net.mid.base_layer.weight, w0, rtol=0, atol=1e-6)


def test_registries_are_restored_and_unknown_names_list_the_registered(plugins):
    assert "test-gated" in VARIANTS


@pytest.mark.parametrize("field, registered", [("variant", "dora, lora"), ("init", "gaussian, kaiming, pissa")])
def test_unknown_names_after_the_scope(field, registered):
    assert "test-gated" not in VARIANTS and "test-shifted" not in INITS and kind_of(BlockLinear(2, 2, 1)) is None
    with pytest.raises(LoraLabError, match=f"unknown {field} 'test-.*'; choose one of {registered}"):
        LoraConfig(**{field: "test-gated" if field == "variant" else "test-shifted"})


def test_registering_twice_or_a_conflicting_peft_layout_is_refused():
    with KINDS.scoped(), VARIANTS.scoped():
        with pytest.raises(ValueError, match="already registered"):
            register_variant(type("Again", (Variant,), {"name": "dora"}))

        class ReadsDifferently(BlockLinearKind):
            peft_names = ("lora_A.weight", "lora_B.weight")
        with pytest.raises(ValueError, match="reads them back differently"):
            register_kind(BlockLinear)(ReadsDifferently)
    assert kind_of(BlockLinear(2, 2, 1)) is None
