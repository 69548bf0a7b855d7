"""PEFT-layout adapter files: our round trip, PEFT loads ours, we load PEFT's, and bad files."""
import io
import json
import os
import pickle
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import loralab
from loralab import LoraConfig, LoraLabError
from loralab.adapters.state import adapter_state
from loralab.core.lora import SlicedLoraFactors
from loralab.testing import model_output, randomize_trainable, tiny_inputs, tiny_model

peft = pytest.importorskip("peft")


randomize_ours = randomize_trainable


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
    assert sorted(os.listdir(tmp_path / "ad")) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]


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


def _saved_bert(tmp_path, **config):
    model = tiny_model("bert")
    loralab.inject(model, LoraConfig(r=4, **config))
    randomize_ours(model)
    return loralab.save_adapter(model, tmp_path / "ad")


def _edit_config(folder, **changes):
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize("changes, message", [
    (dict(r="eight"), "r must be a positive integer, got 'eight'"),
    (dict(lora_alpha=None), "lora_alpha must be a positive number, got None"),
    (dict(use_dora="yes"), "use_dora must be true, false or null, got 'yes'"),
    (dict(rank_pattern={"query": 0}), "rank_pattern must be an object of positive integers"),
    (dict(lora_dropout="0.1"), r"lora_dropout must be a number in \[0, 1\) or null"),
    (dict(modules_to_save="classifier"), "modules_to_save must be a list of module names or null"),
])
def test_bad_config_values_are_one_clear_error(tmp_path, changes, message):
    folder = _saved_bert(tmp_path)
    _edit_config(folder, **changes)
    model = tiny_model("bert")
    with pytest.raises(LoraLabError, match=f"adapter_config.json: {message}.*; fix the file or re-save the adapter"):
        loralab.load_adapter(model, folder)
    assert not hasattr(model, "loralab_state")


def test_unknown_config_keys_warn_naming_the_nearest_peft_field(tmp_path):
    folder = _saved_bert(tmp_path)
    _edit_config(folder, lora_alhpa=32, my_note="x")
    with pytest.warns(UserWarning) as record:
        loralab.read_adapter(folder)
    messages = sorted(str(w.message) for w in record)
    assert len(messages) == 2
    assert messages[0].endswith("unknown key 'lora_alhpa' is ignored; did you mean 'lora_alpha'?")
    assert messages[1].endswith("unknown key 'my_note' is ignored (not a PEFT LoraConfig field)")


def test_every_field_of_peft_lora_config_is_known(tmp_path):
    import dataclasses
    import warnings

    from loralab.surgery.peft_names import PEFT_CONFIG_FIELDS

    assert {f.name for f in dataclasses.fields(peft.LoraConfig)} <= PEFT_CONFIG_FIELDS
    peft_model = peft.get_peft_model(tiny_model("bert"), peft.LoraConfig(r=2, target_modules=["query"]))
    peft_model.save_pretrained(str(tmp_path / "peft"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loralab.read_adapter(tmp_path / "peft")


@pytest.mark.parametrize("metadata, message", [
    ("{not json", "Expecting property name"),
    ('["a list"]', "not a JSON object"),
    ('{"config": {}, "sliced": {"transformer.h.0.attn.c_attn": {"slices": [true], "r": 2, "alpha": 4}}}',
     "at least one True"),
    ('{"config": {}, "sliced": {"transformer.h.0.attn.c_attn": {"slices": [true, false, true], "r": "2"}}}',
     "bad fused-slice entry"),
])
def test_corrupt_loralab_metadata_is_one_clear_error(tmp_path, metadata, message):
    from safetensors.torch import save_file

    model = tiny_model("gpt2")
    loralab.inject(model, LoraConfig(r=2, alpha=4))
    folder = loralab.save_adapter(model, tmp_path / "ad")
    weights = folder / "adapter_model.safetensors"
    save_file(load_file(str(weights)), str(weights), metadata={"format": "pt", "loralab": metadata})
    with pytest.raises(LoraLabError, match=f"the loralab metadata in its header is corrupted .*{message}"):
        loralab.load_adapter(tiny_model("gpt2"), folder)


def test_adapter_of_only_saved_modules_is_refused_clearly(tmp_path):
    from safetensors.torch import save_file

    folder = _saved_bert(tmp_path, modules_to_save=["classifier"])
    weights = folder / "adapter_model.safetensors"
    head_only = {k: v for k, v in load_file(str(weights)).items() if ".classifier." in k}
    save_file(head_only, str(weights))
    model = tiny_model("bert")
    with pytest.raises(LoraLabError, match=r"holds no LoRA factors \(only modules_to_save copies\)"):
        loralab.load_adapter(model, folder)
    assert not hasattr(model, "loralab_state")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_adapter_refuses_to_load_naming_the_tensor(tmp_path, bad):
    from safetensors.torch import save_file

    folder = _saved_bert(tmp_path)
    weights = folder / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    key = "base_model.model.bert.encoder.layer.1.attention.self.value.lora_B.weight"
    tensors[key][0, 0] = bad
    save_file(tensors, str(weights))
    model = tiny_model("bert")
    with pytest.raises(LoraLabError, match=f"tensor '{key}' holds NaN/Inf values"):
        loralab.load_adapter(model, folder)
    assert not hasattr(model, "loralab_state")


def test_a_problem_found_while_filling_factors_undoes_the_injection(tmp_path):
    from safetensors.torch import save_file

    model = tiny_model("gpt2")
    loralab.inject(model, LoraConfig(r=2, alpha=4))
    randomize_ours(model)
    folder = loralab.save_adapter(model, tmp_path / "ad")
    weights = folder / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    tensors["base_model.model.transformer.h.1.attn.c_attn.lora_B.weight"][40, 0] = 1.0    # a row of the frozen k slice
    with safe_open_metadata(weights) as metadata:
        save_file(tensors, str(weights), metadata=metadata)
    fresh = tiny_model("gpt2")
    with pytest.raises(LoraLabError, match=r"transformer.h.1.attn.c_attn's lora_B is not zero outside the fused"):
        loralab.load_adapter(fresh, folder)
    assert not hasattr(fresh, "loralab_state") and not list(loralab.lora_layers(fresh))


def test_dora_file_without_magnitudes_is_refused(tmp_path):
    from safetensors.torch import save_file

    folder = _saved_bert(tmp_path, variant="dora")
    weights = folder / "adapter_model.safetensors"
    tensors = {k: v for k, v in load_file(str(weights)).items() if "magnitude" not in k}
    save_file(tensors, str(weights))         # no loralab metadata: the variant comes from use_dora
    with pytest.raises(LoraLabError, match="needs lora_magnitude_vector of shape \\(32,\\) for the dora variant"):
        loralab.load_adapter(tiny_model("bert"), folder)


def test_unequal_fused_slices_round_trip_with_the_same_delta_w(tmp_path):
    gqa = {"c_attn": {"adapt": [True, False, True], "widths": [48, 24, 24]}}     # 96 rows, unequal slices
    model = tiny_model("gpt2")
    inputs = tiny_inputs(model)
    loralab.inject(model, LoraConfig(r=2, alpha=4, targets=["c_attn"], fused_slices=gqa))
    randomize_ours(model)
    out = model_output(model, inputs)
    loralab.save_adapter(model, tmp_path / "ad")
    B = load_file(str(tmp_path / "ad" / "adapter_model.safetensors"))["base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"]
    assert B.shape == (96, 4) and torch.count_nonzero(B[48:72]) == 0 and torch.count_nonzero(B[:48, 2:]) == 0
    peft_model = peft.PeftModel.from_pretrained(tiny_model("gpt2"), str(tmp_path / "ad")).eval()
    with torch.no_grad():
        torch.testing.assert_close(peft_model(**inputs).logits, out, rtol=1e-4, atol=1e-5)
    loaded = loralab.load_adapter(tiny_model("gpt2"), tmp_path / "ad")
    f = dict(loralab.lora_layers(loaded))["transformer.h.0.attn.c_attn"].lora_adapters["default"]
    assert isinstance(f, SlicedLoraFactors) and (f.slices, f.widths) == ((True, False, True), (48, 24, 24))
    torch.testing.assert_close(model_output(loaded, inputs), out, rtol=1e-5, atol=1e-6)


def test_save_writes_through_loralab_files(tmp_path, monkeypatch):
    import loralab.files

    written = []
    original = loralab.files.atomic_write
    monkeypatch.setattr(loralab.files, "atomic_write", lambda path, write: written.append(path.name) or original(path, write))
    folder = _saved_bert(tmp_path)
    assert written == ["adapter_model.safetensors", "adapter_config.json", "README.md"]   # weights first
    assert sorted(os.listdir(folder)) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    (tmp_path / "file").write_text("x")
    model = tiny_model("bert")
    loralab.inject(model, LoraConfig(r=2))
    with pytest.raises(LoraLabError, match="exists and is not a folder"):
        loralab.save_adapter(model, tmp_path / "file")


class safe_open_metadata:
    def __init__(self, path):
        self.path = path

    def __enter__(self):
        from safetensors import safe_open
        with safe_open(str(self.path), framework="pt") as fh:
            return fh.metadata()

    def __exit__(self, *exc):
        return False


# ------------------------------------------------------------------------------------------------
# model.save_pretrained on an adapted model, and what an adapter records about its base
# ------------------------------------------------------------------------------------------------
def _adapted_folder_model(tmp_path, family="bert"):
    """A tiny model saved as a folder, loaded back from it (so its name_or_path is that folder), adapted."""
    import transformers

    tiny_model(family).save_pretrained(tmp_path / "base")
    auto = transformers.AutoModelForSequenceClassification if family == "bert" else transformers.AutoModelForCausalLM
    model = auto.from_pretrained(tmp_path / "base").eval()
    loralab.inject(model, LoraConfig(r=2, alpha=4, targets=["query", "value"] if family == "bert" else None,
                                     modules_to_save=["classifier"] if family == "bert" else []))
    randomize_ours(model)
    return model


def _files(folder):
    return {"config": json.loads((folder / "adapter_config.json").read_text()),
            "tensors": load_file(str(folder / "adapter_model.safetensors"))}


def test_save_pretrained_writes_the_adapters_in_peft_layout_like_peft(tmp_path):
    import transformers

    model = _adapted_folder_model(tmp_path)
    inputs = tiny_inputs(model)
    ours = model_output(model, inputs)
    model.save_pretrained(tmp_path / "sp")
    loralab.save_adapter(model, tmp_path / "sa")
    assert sorted(os.listdir(tmp_path / "sp")) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    a, b = _files(tmp_path / "sp"), _files(tmp_path / "sa")
    assert a["config"] == b["config"] and a["tensors"].keys() == b["tensors"].keys()
    assert all(torch.equal(a["tensors"][k], b["tensors"][k]) for k in a["tensors"])
    peft_model = peft.PeftModel.from_pretrained(transformers.AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "base"), str(tmp_path / "sp")).eval()
    with torch.no_grad():
        torch.testing.assert_close(peft_model(**inputs).logits, ours, rtol=1e-5, atol=1e-6)
    # PEFT's layout for several adapters: "default" in the folder itself, the others in sub-folders
    loralab.inject(model, LoraConfig(r=2, targets=["query"]), adapter="other")
    model.save_pretrained(tmp_path / "two")
    assert (tmp_path / "two" / "adapter_config.json").is_file() and (tmp_path / "two" / "other" / "README.md").is_file()
    model.save_pretrained(tmp_path / "one", selected_adapters=["other"])
    assert sorted(os.listdir(tmp_path / "one")) == ["other"]
    model.save_pretrained(tmp_path / "trainer", state_dict={}, is_main_process=True)   # as transformers' Trainer does
    assert (tmp_path / "trainer" / "adapter_model.safetensors").is_file()
    model.save_pretrained(tmp_path / "rank1", is_main_process=False)
    assert not (tmp_path / "rank1").exists()


def test_save_pretrained_is_bound_on_the_instance_only_and_merge_and_unload_gives_the_full_model_back(tmp_path):
    import copy

    import transformers

    model = _adapted_folder_model(tmp_path)
    untouched = tiny_model("bert")
    assert untouched.save_pretrained.__func__ is transformers.PreTrainedModel.save_pretrained
    assert type(model).save_pretrained is transformers.PreTrainedModel.save_pretrained   # the class is not patched
    twin = copy.deepcopy(model)
    assert twin.save_pretrained.__self__ is twin
    with pytest.raises(LoraLabError, match="takes no max_shard_size; it writes the adapters"):
        model.save_pretrained(tmp_path / "x", max_shard_size="1GB")
    with pytest.raises(LoraLabError, match="safetensors only"):
        model.save_pretrained(tmp_path / "x", safe_serialization=False)
    inputs = tiny_inputs(model)
    merged = loralab.merge_and_unload(model)
    expected = model_output(merged, inputs)
    assert "save_pretrained" not in vars(merged)
    merged.save_pretrained(tmp_path / "full")
    assert {"config.json", "model.safetensors"} <= set(os.listdir(tmp_path / "full"))
    reloaded = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "full").eval()
    torch.testing.assert_close(model_output(reloaded, inputs), expected, rtol=1e-5, atol=1e-6)
    # an adapted model whose adapters were all deleted saves in full too
    loralab.delete_adapter(twin, "default")
    twin.save_pretrained(tmp_path / "deleted")
    assert "model.safetensors" in os.listdir(tmp_path / "deleted")


def test_loaded_adapters_save_pretrained_too(tmp_path):
    folder = _saved_bert(tmp_path)
    model = loralab.load_adapter(tiny_model("bert"), folder)
    model.save_pretrained(tmp_path / "again")
    a, b = _files(folder), _files(tmp_path / "again")
    assert a["tensors"].keys() == b["tensors"].keys() and all(torch.equal(a["tensors"][k], b["tensors"][k])
                                                              for k in a["tensors"])


def test_adapters_record_their_base_for_loralab_and_for_peft(tmp_path):
    model = _adapted_folder_model(tmp_path)
    loralab.save_adapter(model, tmp_path / "ad")
    config = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((tmp_path / "base").absolute())     # what PEFT itself writes
    assert config["task_type"] == "SEQ_CLS"                                              # from the model's class
    meta = loralab.formats.peft.read_loralab_metadata(tmp_path / "ad")
    assert meta["base"] == {"kind": "folder", "name": str((tmp_path / "base").absolute()), "gguf_fingerprint": None,
                            "revision": None}
    # explicit arguments win: a source (how the base was found), base_model_name_or_path, task_type
    from loralab.models import ModelSource

    hub = ModelSource("org/tiny", "hub", tmp_path / "base", "org/tiny", revision="abc")
    loralab.save_adapter(model, tmp_path / "hub", source=hub, task_type="FEATURE_EXTRACTION")
    config = json.loads((tmp_path / "hub" / "adapter_config.json").read_text())
    assert (config["base_model_name_or_path"], config["task_type"]) == ("org/tiny", "FEATURE_EXTRACTION")
    assert loralab.formats.peft.read_loralab_metadata(tmp_path / "hub")["base"]["revision"] == "abc"
    loralab.save_adapter(model, tmp_path / "named", base_model_name_or_path="my/base")
    assert json.loads((tmp_path / "named" / "adapter_config.json").read_text())["base_model_name_or_path"] == "my/base"
    # a model built in memory has no base to record
    memory = tiny_model("llama")
    loralab.inject(memory, LoraConfig(r=2))
    loralab.save_adapter(memory, tmp_path / "memory")
    config = json.loads((tmp_path / "memory" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] is None and config["task_type"] == "CAUSAL_LM"
    assert "base" not in loralab.formats.peft.read_loralab_metadata(tmp_path / "memory")


def test_transformers_trainer_saves_the_adapter_of_an_adapted_model(tmp_path):
    import transformers

    model = _adapted_folder_model(tmp_path)
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "trainer"), report_to=[], use_cpu=True)
    transformers.Trainer(model=model, args=args).save_model(str(tmp_path / "saved"))
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(os.listdir(tmp_path / "saved"))
    assert not (tmp_path / "saved" / "model.safetensors").exists()


# ------------------------------------------------------------------------------------------------
# A bad adapter folder: one line naming the cause, the same in the Python API and every command
# ------------------------------------------------------------------------------------------------
FIX = "give the folder holding adapter_config.json and adapter_model.safetensors (e.g. runs/<run>/adapter)"
REFUSED = "not a regular file; refusing to read it — re-save or re-download the adapter"


class Planted:
    """A pickle that would create `marker` if it were ever unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _set_config(folder, **fields):
    path = folder / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def _replace(path, make):
    path.unlink()
    make(path)


# case -> (change made to a good adapter folder `d`, the one line every reader says; {d} is the folder)
BAD_FOLDERS = {
    "missing": (lambda d: shutil.rmtree(d), "adapter folder {d} does not exist; " + FIX),
    "a file": (lambda d: (shutil.rmtree(d), d.write_text("x")), "adapter folder {d} is not a folder but a regular "
                                                                  "file; " + FIX),
    "no config": (lambda d: (d / "adapter_config.json").unlink(),
                  "{d} is not an adapter folder: it has no adapter_config.json; " + FIX),
    "a run folder": (lambda d: (shutil.copytree(d, d / "adapter"), (d / "adapter_config.json").unlink()),
                     "{d} is not an adapter folder: it has no adapter_config.json (a training run: its adapter is "
                     "in the adapter/ folder); " + FIX),
    "no weights": (lambda d: (d / "adapter_model.safetensors").unlink(),
                   "adapter folder {d} has no adapter_model.safetensors"),
    ".bin pickle": (lambda d: ((d / "adapter_model.safetensors").unlink(),
                               torch.save({"w": Planted(d / "marker")}, d / "adapter_model.bin")),
                    "adapter folder {d} has no adapter_model.safetensors (.bin adapters are pickles and are never "
                    "loaded; re-save it with safetensors)"),
    "pickle named .safetensors": (lambda d: _replace(d / "adapter_model.safetensors", lambda p: p.write_bytes(
        pickle.dumps(Planted(d / "marker"), protocol=2))),
        "{d}/adapter_model.safetensors is a pickle (torch.save), not safetensors; loralab never unpickles adapters: "
        "re-save it with safetensors"),
    "torch.save named .safetensors": (lambda d: _replace(d / "adapter_model.safetensors", lambda p: torch.save(
        {"w": Planted(d / "marker")}, p)),
        "{d}/adapter_model.safetensors is a pickle (torch.save), not safetensors; loralab never unpickles adapters: "
        "re-save it with safetensors"),
    "weights -> /dev/zero": (lambda d: _replace(d / "adapter_model.safetensors",
                                                lambda p: os.symlink("/dev/zero", p)),
                             "{d}/adapter_model.safetensors is a character device (a symlink to /dev/zero), " + REFUSED),
    "weights a FIFO": (lambda d: _replace(d / "adapter_model.safetensors", os.mkfifo),
                       "{d}/adapter_model.safetensors is a FIFO, " + REFUSED),
    "config a FIFO": (lambda d: _replace(d / "adapter_config.json", os.mkfifo),
                      "{d}/adapter_config.json is a FIFO, " + REFUSED),
    "config a folder": (lambda d: _replace(d / "adapter_config.json", os.mkdir),
                        "{d}/adapter_config.json is a folder, " + REFUSED),
    "config []": (lambda d: (d / "adapter_config.json").write_text("[]"),
                  "{d}/adapter_config.json must hold a JSON object, found a list"),
    "config a string": (lambda d: (d / "adapter_config.json").write_text('"r"'),
                        "{d}/adapter_config.json must hold a JSON object, found a string"),
    "loftq init": (lambda d: _set_config(d, init_lora_weights="loftq"),
                   "{d}/adapter_config.json: init_lora_weights='loftq' has no loralab init; loralab supports True "
                   "(kaiming), 'gaussian' (gaussian)"),
    "olora init": (lambda d: _set_config(d, init_lora_weights="olora"),
                   "{d}/adapter_config.json: init_lora_weights='olora' has no loralab init; loralab supports True "
                   "(kaiming), 'gaussian' (gaussian)"),
    "unconverted pissa": (lambda d: _set_config(d, init_lora_weights="pissa_niter_4"),
                          "{d}/adapter_config.json: init_lora_weights='pissa_niter_4': these factors belong to the "
                          "base weights pissa changed, not to the original model; re-save the adapter with PEFT's "
                          "save_pretrained(path_initial_model_for_weight_conversion=...)"),
}


@pytest.fixture
def bad_folder(tmp_path, request):
    """(a saved BERT classifier's adapter folder made bad as BAD_FOLDERS[case] says, the expected line)."""
    change, message = BAD_FOLDERS[request.param]
    model = tiny_model("bert")
    loralab.inject(model, LoraConfig(r=2, modules_to_save=["classifier"], task_type="SEQ_CLS"))
    folder = loralab.save_adapter(model, tmp_path / "ad")
    (folder / "labels.json").write_text(json.dumps({"kind": "classification", "names": ["a", "b", "c"]}))
    change(folder)
    return folder, message.format(d=folder)


def _readers(folder):
    """Every way the Python API reads an adapter folder."""
    from loralab.pretrained import adapter_task_and_labels, resolve_base

    return {"read_adapter": lambda: loralab.read_adapter(folder),
            "load_adapter": lambda: loralab.load_adapter(tiny_model("bert"), folder),
            "from_pretrained": lambda: loralab.from_pretrained(folder),
            "from_pretrained with model=": lambda: loralab.from_pretrained(folder, model="no/such/model"),
            "resolve_base": lambda: resolve_base(folder),
            "adapter_task_and_labels": lambda: adapter_task_and_labels(folder),
            "check_adapter_folder": lambda: loralab.formats.peft.check_adapter_folder(folder)}


@pytest.mark.parametrize("value", [False, "eva", "orthogonal"])
def test_a_trained_adapter_whose_init_only_chose_its_start_loads_whatever_that_init_was(value, tmp_path):
    model = tiny_model("bert")
    loralab.inject(model, LoraConfig(r=2))
    randomize_trainable(model, seed=3)
    folder = loralab.save_adapter(model, tmp_path / "ad")
    expected = model_output(model, tiny_inputs(model))
    _set_config(folder, init_lora_weights=value)           # as PEFT writes it after such a start
    loaded = loralab.load_adapter(tiny_model("bert"), folder)
    assert torch.equal(model_output(loaded, tiny_inputs(loaded)), expected)


@pytest.mark.parametrize("bad_folder", list(BAD_FOLDERS), indirect=True)
def test_a_bad_adapter_folder_is_one_line_naming_the_cause_wherever_it_is_read(bad_folder):
    folder, message = bad_folder
    for reader in _readers(folder).values():
        with pytest.raises(LoraLabError) as caught:
            reader()
        assert str(caught.value) == message
    assert not (folder / "marker").exists()                 # no pickle ran


@pytest.mark.parametrize("bad_folder", list(BAD_FOLDERS), indirect=True)
def test_every_command_names_the_same_cause_and_exits_2(bad_folder, tmp_path, capsys, monkeypatch):
    from loralab.cli.main import main

    folder, message = bad_folder
    base = tmp_path / "base"
    tiny_model("bert").save_pretrained(base)
    data = tmp_path / "dev.tsv"
    data.write_text("sentence\tlabel\na fine film\ta\n")
    monkeypatch.setattr("sys.stdin", io.StringIO("a fine film\n"))
    capsys.readouterr()
    commands = {"predict": ["predict", "--adapter", str(folder)],
                "predict --model": ["predict", "--adapter", str(folder), "--model", str(base)],
                "eval": ["eval", "--adapter", str(folder), "--file", str(data)],
                "merge": ["merge", str(base), str(folder), "-o", str(tmp_path / "merged")],
                "serve": ["serve", "--adapter", str(folder), "--port", "1"],
                "serve --model": ["serve", "--adapter", f"x={folder}", "--model", str(base), "--port", "1"],
                "analyze": ["analyze", str(folder), "-o", str(tmp_path / "report")]}
    for name, argv in commands.items():
        assert main(argv) == 2, name
        err = capsys.readouterr().err
        assert err == f"loralab {argv[0]}: error: {message}\n", name
    assert not (tmp_path / "merged").exists() and not (folder / "marker").exists()


# ------------------------------------------------------------------------------------------------
# SEQ_CLS adapters whose head was not trained: the head is saved as PEFT saves it
# ------------------------------------------------------------------------------------------------
def _seq_cls_model(family, head_seed=None):
    """A tiny *ForSequenceClassification of the family (the same base weights every call); head_seed: the
    head (and DeBERTa's pooler) re-drawn, as a fresh head is at every load of a base."""
    import transformers

    if family in ("bert", "roberta"):
        model = tiny_model(family)
    else:
        kw = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, num_labels=2,
                  vocab_size=100, max_position_embeddings=40)
        config, cls = ((transformers.ElectraConfig(embedding_size=32, **kw), transformers.ElectraForSequenceClassification)
                       if family == "electra" else
                       (transformers.DebertaV2Config(**kw), transformers.DebertaV2ForSequenceClassification))
        torch.manual_seed(0)
        model = cls(config).eval()
    if head_seed is not None:
        g = torch.Generator().manual_seed(head_seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.startswith(("classifier.", "pooler.")):
                    p.copy_(torch.randn(p.shape, generator=g))
    return model


SEQ_CLS_HEADS = {"bert": ["classifier"], "roberta": ["classifier"], "electra": ["classifier"],
                 "deberta-v2": ["pooler", "classifier"]}


@pytest.mark.parametrize("family", list(SEQ_CLS_HEADS))
def test_a_seq_cls_adapter_without_a_trained_head_saves_the_head_so_peft_and_loralab_load_it(family, tmp_path):
    model = _seq_cls_model(family)
    inputs = tiny_inputs(tiny_model("bert"))
    targets = ["query_proj", "value_proj"] if family == "deberta-v2" else ["query", "value"]
    loralab.inject(model, LoraConfig(r=2, targets=targets))          # default: the head is not in modules_to_save
    randomize_ours(model)
    ours = model_output(model, inputs)
    loralab.save_adapter(model, tmp_path / "ad")
    config = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert (config["task_type"], config["modules_to_save"]) == ("SEQ_CLS", SEQ_CLS_HEADS[family])
    saved = load_file(str(tmp_path / "ad" / "adapter_model.safetensors"))
    heads = {n: p for n, p in model.named_parameters() if n.startswith(("classifier.", "pooler."))}
    assert heads and all(torch.equal(saved["base_model.model." + n], p) for n, p in heads.items())  # PEFT's keys
    peft_model = peft.PeftModel.from_pretrained(_seq_cls_model(family, head_seed=1), str(tmp_path / "ad")).eval()
    with torch.no_grad():
        theirs = peft_model(**inputs).logits
    assert torch.equal(theirs, ours)
    mine = loralab.load_adapter(_seq_cls_model(family, head_seed=2), tmp_path / "ad")
    assert torch.equal(model_output(mine, inputs), ours)


def test_an_untrained_head_is_saved_from_the_original_when_another_adapter_trains_a_copy(tmp_path):
    model = tiny_model("bert")
    inputs = tiny_inputs(model)
    loralab.inject(model, LoraConfig(r=2, modules_to_save=["classifier"]), "a")
    loralab.inject(model, LoraConfig(r=2), "b")
    randomize_ours(model)
    loralab.set_adapter(model, "b")
    ours = model_output(model, inputs)
    loralab.save_adapter(model, tmp_path / "b", adapter="b")
    saved = load_file(str(tmp_path / "b" / "adapter_model.safetensors"))
    assert torch.equal(saved["base_model.model.classifier.weight"], tiny_model("bert").classifier.weight)
    peft_model = peft.PeftModel.from_pretrained(tiny_model("bert"), str(tmp_path / "b")).eval()
    with torch.no_grad():
        assert torch.equal(peft_model(**inputs).logits, ours)


# -- inserting beside other adapters (a server's store): the same model as a fresh load ----------------------------
@pytest.mark.parametrize("config", [
    dict(r=4, targets=["q_proj", "v_proj"]),
    dict(r=4, alpha=8, targets="all-linear", rank_pattern={"layers.1.mlp.up_proj": 2}, alpha_pattern={"o_proj": 3},
         rslora=True),
    dict(r=2, targets=["q_proj", "v_proj"], variant="dora", bias="lora_only", modules_to_save=["lm_head"]),
])
def test_an_inserted_adapter_beside_others_equals_the_trained_one(config, tmp_path):
    from loralab.formats.peft import insert_adapter, read_adapter
    from loralab.testing import fill_adapter

    trained = tiny_model("llama")
    inputs = tiny_inputs(trained)
    loralab.inject(trained, LoraConfig(**config), adapter="x")
    fill_adapter(trained, "x", seed=3)
    trained.eval()
    want = model_output(trained, inputs)
    loralab.save_adapter(trained, tmp_path / "x", adapter="x")
    file = read_adapter(tmp_path / "x")

    model = tiny_model("llama")
    for i, others in enumerate([dict(r=2, targets="all-linear"), dict(r=3, targets=["q_proj", "k_proj"])]):
        loralab.inject(model, LoraConfig(**others), adapter=f"other{i}")
        fill_adapter(model, f"other{i}", seed=10 + i)
    insert_adapter(model, file, adapter="x")
    model.eval()
    assert torch.equal(model_output(model, inputs), want)                  # bit for bit
    fresh = loralab.load_adapter(tiny_model("llama"), tmp_path / "x", adapter="x").eval()
    assert torch.equal(model_output(fresh, inputs), want)

    layers, theirs = dict(loralab.lora_layers(model)), dict(loralab.lora_layers(trained))
    assert sorted(n for n, layer in layers.items() if "x" in layer.lora_adapters) == sorted(theirs)
    for name, layer in theirs.items():
        a, b = layers[name].lora_adapters["x"], layer.lora_adapters["x"]
        assert (a.r, a.alpha, a.scale) == (b.r, b.alpha, b.scale)
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, p in fresh.named_parameters() if p.requires_grad}      # only x's (and its bias)
    assert trainable and all(".x." in n or n.endswith(".bias") for n in trainable)
    assert adapter_state(model).active == "x"


def test_a_file_naming_a_module_inside_an_adapter_is_refused_as_before(tmp_path):
    # The names are looked up in a walk that skips adapters' factors, and in the full walk only when it lacks
    # them: the errors are named as they were with dict(model.named_modules()).
    from loralab.formats.peft import insert_adapter, read_adapter

    model = tiny_model("llama")
    loralab.inject(model, LoraConfig(r=2, targets=["q_proj"]), adapter="a")
    loralab.save_adapter(model, tmp_path / "a", adapter="a")
    name = "model.layers.0.self_attn.q_proj"
    for renamed, message in [
        (f"{name}.lora_adapters.a", f"targets {name}.lora_adapters.a, a LoraFactors that LoRA cannot adapt"),
        (f"{name}.lora_adapters", f"targets {name}.lora_adapters, a ModuleDict that LoRA cannot adapt"),
        (f"{name}.base_layer", f"target '{name}.base_layer' matches no module in LlamaForCausalLM; nearest"),
        ("model.layers.0.nothing", "targets model.layers.0.nothing, which this model does not have"),
    ]:
        file = read_adapter(tmp_path / "a")
        file.factors[renamed] = file.factors.pop(name)
        with pytest.raises(LoraLabError, match=re.escape(message)):
            insert_adapter(model, file, adapter="b")
    assert list(adapter_state(model).configs) == ["a"]
