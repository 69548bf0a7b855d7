"""adapters/state.py: the walks that skip adapters' factors give what the generic torch walks give."""
import torch

import loralab
from loralab import LoraConfig
from loralab.adapters.state import (TrainableCopy, adapter_state, all_parameters, lora_layers, model_modules,
                                    set_trainable, trainable_copies)
from loralab.core.lora import LoraLayer
from loralab.testing import tiny_model


def _served_model():
    """A tiny LLaMA with three adapters (one with a trained copy of the head): what a server's model holds."""
    model = tiny_model("llama")
    loralab.inject(model, LoraConfig(r=2, targets="all-linear"), adapter="a")
    loralab.inject(model, LoraConfig(r=4, targets=["q_proj", "v_proj"], modules_to_save=["lm_head"]), adapter="b")
    loralab.inject(model, LoraConfig(r=2, targets=["q_proj"], variant="dora"), adapter="c")
    return model


def test_model_modules_is_named_modules_without_the_adapters_factors():
    model = _served_model()
    inside = {id(m) for _, layer in model.named_modules() if isinstance(layer, LoraLayer)
              for m in layer.lora_adapters.modules()}
    want = [(n, m) for n, m in model.named_modules() if id(m) not in inside]
    got = list(model_modules(model))
    assert [n for n, _ in got] == [n for n, _ in want]
    assert all(a is b for (_, a), (_, b) in zip(got, want, strict=True))
    # 20 factors (14 + 4 + 2 layers), each with its dropout, and the 14 layers' dicts of adapters
    assert len(list(model.named_modules())) - len(got) == (14 + 4 + 2) * 2 + 14


def test_layers_and_copies_are_found_as_by_the_generic_walk():
    model = _served_model()
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]
    copies = [(n, m) for n, m in model.named_modules() if isinstance(m, TrainableCopy)]
    assert list(lora_layers(model)) == layers and len(layers) == 14
    assert list(trainable_copies(model)) == copies and [n for n, _ in copies] == ["lm_head"]


def test_all_parameters_holds_every_parameter():
    model = _served_model()
    assert {id(p) for p in all_parameters(model)} == {id(p) for p in model.parameters()}
    assert len({id(p) for p in all_parameters(model)}) == len(list(model.parameters()))


def test_set_trainable_leaves_only_the_adapter_trainable_whatever_was_before():
    model = _served_model()
    for p in model.parameters():
        p.requires_grad_(True)                            # a user unfroze everything
    set_trainable(model, "b")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, p in model.named_parameters() if ".b." in n}
    assert len(trainable) == 4 * 2 + 1                    # A, B on 4 layers; the head copy's weight (no bias)
    assert adapter_state(model).active == "b"
    assert all(layer.active == (["b"] if "b" in layer.lora_adapters else []) for _, layer in lora_layers(model))
    assert not any(p.requires_grad for p in model.get_submodule("lm_head").original_module.parameters())
    assert torch.is_grad_enabled()
