"""Full FT, BitFit, Houlsby adapters and the METHODS registry on tiny random models: exact trainable
counts, the base model's function at the start, and the adapter's placement inside the BERT block."""
import pytest
import torch

from loralab import LoraLabError
from loralab.baselines import (METHODS, count_all, count_trainable, houlsby_param_count, prepare_bitfit,
                               prepare_houlsby, set_houlsby_enabled)
from loralab.baselines.houlsby import AdaptedOutput, BottleneckAdapter, houlsby_adapters
from loralab.testing import model_output, tiny_inputs, tiny_model

D, L, LABELS = 32, 2, 3  # tiny BERT: hidden 32, 2 layers, 3 labels
HEAD = D * LABELS + LABELS  # classifier Linear(32, 3)


def trainable_names(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_registry_has_every_method():
    assert set(METHODS) == {"full", "bitfit", "houlsby", "prefix", "lora", "intrinsic"}


def test_full_trains_everything():
    model = tiny_model("bert")
    METHODS["full"](model)
    assert count_trainable(model) == count_all(model)


def test_bitfit_counts_every_bias_plus_head():
    model = tiny_model("bert", intermediate_size=37)
    prepare_bitfit(model)
    # per layer: q, k, v, attention out (d each), intermediate (37), output (d), two LayerNorm biases (d each)
    per_layer = 4 * D + 37 + D + 2 * D
    embeddings_ln, pooler = D, D
    assert count_trainable(model) == L * per_layer + embeddings_ln + pooler + HEAD
    assert all(n.endswith(".bias") or n.startswith("classifier.") for n in trainable_names(model))


def test_bitfit_refuses_a_model_without_biases():
    with pytest.raises(LoraLabError, match="no bias"):
        prepare_bitfit(tiny_model("llama"))


@pytest.mark.parametrize("m", [1, 4, 16])
def test_houlsby_count_matches_formula(m):
    model = tiny_model("bert")
    prepare_houlsby(model, bottleneck=m)
    assert count_trainable(model) == houlsby_param_count(L, D, m) + HEAD == 2 * L * (2 * D * m + D + m) + HEAD
    assert len(houlsby_adapters(model)) == 2 * L


def test_houlsby_layernorm_option_adds_two_d_per_layernorm():
    model = tiny_model("bert")
    prepare_houlsby(model, bottleneck=4, train_layernorm=True)
    layernorms = 1 + 2 * L  # embeddings + two per block
    assert count_trainable(model) == houlsby_param_count(L, D, 4) + layernorms * 2 * D + HEAD


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_houlsby_starts_at_the_base_model_and_then_changes_it(family):
    model = tiny_model(family)
    inputs = tiny_inputs(model)
    base = model_output(model, inputs)
    prepare_houlsby(model, bottleneck=4)
    assert torch.equal(model_output(model, inputs), base)
    with torch.no_grad():
        for adapter in houlsby_adapters(model).values():
            adapter.up.weight.normal_(0, 0.5)
    assert not torch.allclose(model_output(model, inputs), base, atol=1e-4)
    set_houlsby_enabled(model, False)
    assert torch.equal(model_output(model, inputs), base)


def test_houlsby_adapter_sits_between_projection_and_residual_layernorm():
    """BertSelfOutput(x, h) must become LayerNorm(dense(x) + adapter_term + h) with the adapter's own math."""
    model = tiny_model("bert")
    prepare_houlsby(model, bottleneck=3, activation="relu")
    self_output = model.bert.encoder.layer[0].attention.output
    wrapped = self_output.dense
    assert isinstance(wrapped, AdaptedOutput) and isinstance(wrapped.adapter, BottleneckAdapter)
    torch.manual_seed(0)
    with torch.no_grad():
        wrapped.adapter.up.weight.normal_()
        wrapped.adapter.up.bias.normal_()
    x, h = torch.randn(2, 5, D), torch.randn(2, 5, D)
    dense, ad = wrapped.base_layer, wrapped.adapter
    y = x @ dense.weight.T + dense.bias
    y = y + (torch.relu(y @ ad.down.weight.T + ad.down.bias) @ ad.up.weight.T + ad.up.bias)
    expected = torch.nn.functional.layer_norm(y + h, (D,), self_output.LayerNorm.weight, self_output.LayerNorm.bias,
                                              self_output.LayerNorm.eps)
    with torch.no_grad():
        torch.testing.assert_close(self_output(x, h), expected, rtol=1e-5, atol=1e-5)


def test_houlsby_gpt2_wraps_conv1d_projections():
    model = tiny_model("gpt2")
    prepare_houlsby(model, bottleneck=2)
    assert set(houlsby_adapters(model)) == {f"transformer.h.{i}.{p}.c_proj" for i in range(2) for p in ("attn", "mlp")}
    assert count_trainable(model) == houlsby_param_count(2, 32, 2)  # LM head is tied to the embeddings: no head


def test_houlsby_rejects_bad_options():
    with pytest.raises(LoraLabError, match="bottleneck"):
        prepare_houlsby(tiny_model("bert"), bottleneck=0)
    with pytest.raises(LoraLabError, match="activation"):
        prepare_houlsby(tiny_model("bert"), activation="swish")
    with pytest.raises(LoraLabError, match="matches no module"):
        prepare_houlsby(tiny_model("bert"), targets=["nonexistent"])
    with pytest.raises(LoraLabError, match="placement"):
        prepare_houlsby(tiny_model("t5"))
    twice = prepare_houlsby(tiny_model("bert"))
    with pytest.raises(LoraLabError, match="already"):
        prepare_houlsby(twice)
    with pytest.raises(LoraLabError, match="no options"):
        METHODS["full"](tiny_model("bert"), bottleneck=3)


def test_lora_entry_trains_factors_and_head():
    model = tiny_model("bert")
    METHODS["lora"](model, r=2, alpha=4)
    # query and value in 2 layers, each A (2×32) + B (32×2), plus the classifier
    assert count_trainable(model) == L * 2 * (2 * D * 2) + HEAD


@pytest.mark.parametrize("name", ["full", "bitfit", "houlsby", "prefix", "lora"])
def test_every_method_keeps_the_forward_signature_and_trains(name):
    model = tiny_model("bert")
    inputs = tiny_inputs(model)
    METHODS[name](model)
    out = model(**inputs, attention_mask=torch.ones_like(inputs["input_ids"]), labels=torch.tensor([0, 2]))
    out.loss.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads == trainable_names(model)  # every trainable tensor is reached by the loss, nothing else


def test_explicit_head_rule_must_match():
    with pytest.raises(LoraLabError, match="head module"):
        prepare_bitfit(tiny_model("bert"), head=["classifer"])


@pytest.mark.parametrize("name,options", [("full", {}), ("bitfit", {}), ("houlsby", {"bottleneck": 4}),
                                          ("prefix", {"length": 4}), ("lora", {"r": 4, "alpha": 8})])
def test_every_method_fits_a_fixed_batch(name, options):
    """A few AdamW steps on one batch lower the loss, with the base weights untouched where they are frozen."""
    torch.manual_seed(0)
    model = tiny_model("bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    METHODS[name](model, **options)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    inputs = tiny_inputs(model, batch=6, seq=7)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    model.train()
    losses = []
    for _ in range(25):
        optimizer.zero_grad()
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
