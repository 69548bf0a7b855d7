"""Merge, unmerge, merge_and_unload, many adapters, task switching, delete, combine, disable."""
import pytest
import torch

import loralab
from loralab import LoraConfig, LoraLabError
from loralab.core.lora import LoraLayer
from loralab.testing import FAMILIES, model_output, tiny_inputs, tiny_model


def train_like(model, adapter, seed):
    """Give an adapter's factors non-zero values, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in loralab.lora_layers(model):
            if adapter in layer.lora_adapters:
                f = layer.lora_adapters[adapter]
                f.A.copy_(torch.randn(f.A.shape, generator=g) * 0.3)
                f.B.copy_(torch.randn(f.B.shape, generator=g) * 0.3)


@pytest.mark.parametrize("family", FAMILIES)
def test_merged_unmerged_and_unloaded_outputs_agree(family):
    model = tiny_model(family)
    inputs = tiny_inputs(model)
    base = model_output(model, inputs)
    original_keys = set(model.state_dict())
    loralab.inject(model, LoraConfig(r=4))
    train_like(model, "default", 0)
    unmerged = model_output(model, inputs)
    assert (unmerged - base).abs().max() > 1e-3          # the adapter does something
    loralab.merge(model)
    torch.testing.assert_close(model_output(model, inputs), unmerged, rtol=1e-4, atol=1e-5)
    loralab.unmerge(model)                               # back to W0 + the separate low-rank path
    torch.testing.assert_close(model_output(model, inputs), unmerged, rtol=1e-4, atol=1e-5)
    with loralab.disabled(model):
        torch.testing.assert_close(model_output(model, inputs), base, rtol=1e-4, atol=1e-5)
    loralab.merge(model)
    merged = model_output(model, inputs)
    plain = loralab.merge_and_unload(model)
    assert not any(isinstance(m, LoraLayer) for m in plain.modules())
    assert set(plain.state_dict()) == original_keys and not hasattr(plain, "loralab_state")
    torch.testing.assert_close(model_output(plain, inputs), merged, rtol=0, atol=0)


def test_task_switch_on_merged_model_is_exact():
    model = tiny_model("bert")
    inputs = tiny_inputs(model)
    loralab.inject(model, LoraConfig(r=4, modules_to_save=["classifier"]), adapter="sst2")
    loralab.inject(model, LoraConfig(r=8, targets=["query", "key", "value"], modules_to_save=["classifier"]),
                   adapter="mrpc")
    train_like(model, "sst2", 1)
    train_like(model, "mrpc", 2)
    with torch.no_grad():
        model.classifier.trainable_copies["mrpc"].weight.mul_(2)
    loralab.set_adapter(model, "sst2")
    out_sst2 = model_output(model, inputs)
    loralab.set_adapter(model, "mrpc")
    out_mrpc = model_output(model, inputs)
    assert (out_sst2 - out_mrpc).abs().max() > 1e-3
    loralab.merge(model)
    for _ in range(10):                                 # W0 + B1A1 -> W0 + B2A2 -> ... on a merged model
        loralab.set_adapter(model, "sst2")
        assert loralab.is_merged(model)
        torch.testing.assert_close(model_output(model, inputs), out_sst2, rtol=1e-4, atol=1e-5)
        loralab.set_adapter(model, "mrpc")
        torch.testing.assert_close(model_output(model, inputs), out_mrpc, rtol=1e-4, atol=1e-5)


def test_disabled_runs_the_base_model_and_restores():
    model = tiny_model("llama")
    inputs = tiny_inputs(model)
    base = model_output(model, inputs)
    loralab.inject(model, LoraConfig(r=4))
    train_like(model, "default", 3)
    adapted = model_output(model, inputs)
    loralab.merge(model)
    with loralab.disabled(model):
        torch.testing.assert_close(model_output(model, inputs), base, rtol=1e-4, atol=1e-5)
    assert loralab.is_merged(model)
    torch.testing.assert_close(model_output(model, inputs), adapted, rtol=1e-4, atol=1e-5)


def test_delete_adapter():
    model = tiny_model("bert")
    inputs = tiny_inputs(model)
    base = model_output(model, inputs)
    loralab.inject(model, LoraConfig(r=4), adapter="a")
    loralab.inject(model, LoraConfig(r=4, init="pissa"), adapter="b")
    train_like(model, "a", 4)
    loralab.delete_adapter(model, "b")         # PiSSA's principal part goes back into W0
    assert loralab.list_adapters(model) == ["a"] and loralab.active_adapter(model) == "a"
    with loralab.disabled(model):
        torch.testing.assert_close(model_output(model, inputs), base, rtol=1e-4, atol=1e-5)
    with pytest.raises(LoraLabError, match="no adapter named 'b'"):
        loralab.set_adapter(model, "b")


def test_combine_is_the_weighted_sum_of_delta_w_for_any_ranks():
    model = tiny_model("gpt2")
    loralab.inject(model, LoraConfig(r=2), adapter="x")
    loralab.inject(model, LoraConfig(r=5, targets=["c_attn", "c_proj"]), adapter="y")
    train_like(model, "x", 5)
    train_like(model, "y", 6)
    loralab.combine_adapters(model, {"x": 0.7, "y": -0.4}, "mix")
    for name, layer in loralab.lora_layers(model):
        f = layer.lora_adapters
        expected = sum(w * f[n].delta_weight() for n, w in (("x", 0.7), ("y", -0.4)) if n in f)
        torch.testing.assert_close(f["mix"].delta_weight(), expected, rtol=1e-5, atol=1e-6)
    inputs = tiny_inputs(model)
    loralab.set_adapter(model, "mix")
    out = model_output(model, inputs)
    loralab.merge(model)
    torch.testing.assert_close(model_output(model, inputs), out, rtol=1e-4, atol=1e-5)


def test_merge_refuses_nan_factors():
    model = tiny_model("bert")
    loralab.inject(model, LoraConfig(r=4))
    layer = next(layer for _, layer in loralab.lora_layers(model))
    with torch.no_grad():
        layer.lora_adapters["default"].A[0, 0] = float("inf")
    with pytest.raises(LoraLabError, match="NaN/Inf"):
        loralab.merge(model)


def test_operations_need_an_injected_model():
    with pytest.raises(LoraLabError, match="no LoRA adapters"):
        loralab.merge(tiny_model("bert"))
