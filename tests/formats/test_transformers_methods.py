"""transformers' adapter methods on a model loralab adapted: loralab's versions, bound on the instance."""
import pytest
import torch

import loralab
from loralab import LoraConfig, LoraLabError
from loralab.testing import fill_adapter, model_output, tiny_inputs, tiny_model


def _model():
    model = tiny_model("llama")
    loralab.inject(model, LoraConfig(r=2))
    fill_adapter(model, "default", seed=1)
    return model


def test_set_adapter_active_adapters_and_delete_adapter():
    model = _model()
    model.add_adapter(LoraConfig(r=2), adapter_name="b")         # inject: the new adapter is active
    assert model.active_adapters() == ["b"]
    model.set_adapter("default")
    assert model.active_adapters() == ["default"] == [loralab.active_adapter(model)]
    model.set_adapter(["b"])
    assert loralab.active_adapter(model) == "b"
    with pytest.raises(LoraLabError, match=r"^set_adapter\(\['default', 'b'\]\): loralab runs one adapter at a "
                                           r"time; for their weighted sum use loralab.combine_adapters"):
        model.set_adapter(["default", "b"])
    model.delete_adapter("b")
    assert loralab.list_adapters(model) == ["default"] and model.active_adapters() == ["default"]
    with pytest.raises(LoraLabError, match=r"^no adapter named 'x'; this model has \['default'\]$"):
        model.delete_adapter(["x"])


def test_add_adapter_refuses_a_non_loralab_config():
    with pytest.raises(LoraLabError, match=r"^add_adapter on a loralab model takes a loralab.LoraConfig, not dict; "
                                           r"convert a PEFT config with loralab.LoraConfig.from_peft$"):
        _model().add_adapter({"r": 2})


def test_disable_and_enable_adapters():
    model = _model()
    inputs = tiny_inputs(model)
    adapted = model_output(model, inputs)
    with loralab.disabled(model):
        base = model_output(model, inputs)
    model.disable_adapters()
    assert torch.equal(model_output(model, inputs), base) and not torch.equal(base, adapted)
    model.enable_adapters()
    assert torch.equal(model_output(model, inputs), adapted)
    loralab.merge(model)
    with pytest.raises(LoraLabError, match=r"^an adapter is merged into the base weights; call loralab.unmerge"):
        model.disable_adapters()


def test_load_adapter_and_get_adapter_state_dict(tmp_path):
    model = _model()
    loralab.save_adapter(model, tmp_path / "a")
    other = tiny_model("llama")
    loralab.inject(other, LoraConfig(r=2))
    other.load_adapter(str(tmp_path / "a"), adapter_name="b")
    assert other.active_adapters() == ["b"]
    assert not any(p.requires_grad for p in other.parameters())             # is_trainable=False, as transformers
    inputs = tiny_inputs(model)
    assert torch.equal(model_output(other, inputs), model_output(model, inputs))
    other.load_adapter(tmp_path / "a", adapter_name="c", is_trainable=True)
    assert any(p.requires_grad for p in other.parameters())
    state = other.get_adapter_state_dict("b")
    assert set(state) == {k.removeprefix("base_model.model.") for k in _file_keys(tmp_path / "a")}
    with pytest.raises(LoraLabError, match=r"^load_adapter on a loralab model takes no token; use "
                                           r"loralab.load_adapter\(model, folder, adapter='name'\)$"):
        other.load_adapter(tmp_path / "a", adapter_name="d", token="t")
    with pytest.raises(LoraLabError, match=r"^load_adapter on a loralab model reads an adapter folder only"):
        other.load_adapter(adapter_name="d", adapter_state_dict=state)


def _file_keys(folder):
    from safetensors import safe_open

    with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as fh:
        return set(fh.keys())


def test_no_transformers_peft_version_error_and_merge_and_unload_removes_the_methods():
    model = _model()
    for name in ("set_adapter", "load_adapter", "add_adapter", "disable_adapters", "enable_adapters",
                 "active_adapters", "delete_adapter", "get_adapter_state_dict"):
        assert name in vars(model)                                  # bound on this instance, the class untouched
    loralab.merge_and_unload(model)
    assert not {"set_adapter", "active_adapters", "save_pretrained"} & set(vars(model))
    assert model.active_adapters.__func__ is type(model).active_adapters      # transformers' own method again
