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


def test_merge_is_all_or_nothing():
    model = tiny_model("bert")
    loralab.inject(model, LoraConfig(r=4))
    train_like(model, "default", 7)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layers = [layer for _, layer in loralab.lora_layers(model)]
    with torch.no_grad():
        layers[-1].lora_adapters["default"].B[0, 0] = float("nan")       # only the last layer is bad
    with pytest.raises(LoraLabError, match="NaN/Inf"):
        loralab.merge(model)
    assert not loralab.is_merged(model)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items() if "lora_adapters" not in k)


def test_merge_failing_inside_the_last_layer_takes_the_others_out_again(monkeypatch):
    model = tiny_model("llama")
    inputs = tiny_inputs(model)
    loralab.inject(model, LoraConfig(r=4))
    train_like(model, "default", 8)
    adapted = model_output(model, inputs)
    weights = {n: layer.base_layer.weight.detach().clone() for n, layer in loralab.lora_layers(model)}
    last = list(loralab.lora_layers(model))[-1][1]

    def broken(*args):
        raise RuntimeError("device lost (simulated)")

    monkeypatch.setattr(last, "merge", broken)
    with pytest.raises(RuntimeError, match="simulated"):
        loralab.merge(model)
    assert not loralab.is_merged(model)
    for n, layer in loralab.lora_layers(model):
        torch.testing.assert_close(layer.base_layer.weight, weights[n], rtol=0, atol=1e-6)
    torch.testing.assert_close(model_output(model, inputs), adapted, rtol=1e-5, atol=1e-6)


def test_set_trainable_refuses_while_another_adapter_is_merged():
    from loralab.adapters.state import set_trainable

    model = tiny_model("bert")
    loralab.inject(model, LoraConfig(r=4), adapter="a")
    loralab.inject(model, LoraConfig(r=2), adapter="b")
    loralab.set_adapter(model, "a")
    loralab.merge(model)
    with pytest.raises(LoraLabError, match=r"adapter\(s\) 'a' are merged into the base weights"):
        set_trainable(model, "b")
    assert loralab.is_merged(model) and loralab.active_adapter(model) == "a"
    loralab.set_adapter(model, "b")            # the explicit switch unmerges a and merges b
    assert loralab.active_adapter(model) == "b" and loralab.is_merged(model)


def _two_classifier_adapters():
    model = tiny_model("bert")
    for name, seed in (("x", 1), ("y", 2)):
        loralab.inject(model, LoraConfig(r=2, modules_to_save=["classifier"]), adapter=name)
        train_like(model, name, seed)
        with torch.no_grad():
            model.classifier.trainable_copies[name].weight.mul_(seed + 1)
    return model


def test_combined_adapter_gets_the_shared_head(tmp_path):
    model = _two_classifier_adapters()
    with torch.no_grad():
        model.classifier.trainable_copies["x"].weight.mul_(3)
        model.classifier.trainable_copies["y"].load_state_dict(model.classifier.trainable_copies["x"].state_dict())
    loralab.combine_adapters(model, {"x": 0.5, "y": 0.5}, "mix")
    head = model.classifier.trainable_copies["mix"]
    assert torch.equal(head.weight, model.classifier.trainable_copies["x"].weight)
    assert head.weight.data_ptr() != model.classifier.trainable_copies["x"].weight.data_ptr()
    loralab.set_adapter(model, "mix")
    out = model_output(model, tiny_inputs(model))
    loralab.save_adapter(model, tmp_path / "mix")
    reloaded = loralab.load_adapter(tiny_model("bert"), tmp_path / "mix")
    torch.testing.assert_close(model_output(reloaded, tiny_inputs(reloaded)), out, rtol=1e-4, atol=1e-5)


def test_combining_different_heads_needs_a_choice():
    model = _two_classifier_adapters()
    with pytest.raises(LoraLabError, match=r"use different copies of classifier .* pass head=NAME"):
        loralab.combine_adapters(model, {"x": 0.5, "y": 0.5}, "mix")
    assert loralab.list_adapters(model) == ["x", "y"]
    assert not any("mix" in layer.lora_adapters for _, layer in loralab.lora_layers(model))
    loralab.combine_adapters(model, {"x": 0.5, "y": 0.5}, "mix", head="y")
    assert torch.equal(model.classifier.trainable_copies["mix"].weight, model.classifier.trainable_copies["y"].weight)
    assert adapter_config(model, "mix").modules_to_save == ["classifier"]


def test_combine_refuses_variants_that_do_not_add_up():
    model = tiny_model("llama")
    loralab.inject(model, LoraConfig(r=2, variant="dora"), adapter="d")
    loralab.inject(model, LoraConfig(r=2), adapter="p")
    with pytest.raises(LoraLabError, match="adapters of variant dora cannot be combined"):
        loralab.combine_adapters(model, {"d": 1.0, "p": 1.0}, "mix")
    assert loralab.list_adapters(model) == ["d", "p"]


def adapter_config(model, name):
    from loralab.adapters.state import adapter_state
    return adapter_state(model).configs[name]
