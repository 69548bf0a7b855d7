"""Prefix-tuning: the base model bit for bit when off or empty, a hand-computed attention with the prefix,
causality kept for decoders, and the L·2·l·d_kv count."""
import math

import pytest
import torch

from loralab import LoraLabError
from loralab.baselines import (count_trainable, prefix_disabled, prefix_param_count, prepare_prefix,
                               remove_prefix)
from loralab.baselines.prefix import prefixes
from loralab.testing import tiny_inputs, tiny_model

IMPLS = ["sdpa", "eager"]


def padded_inputs(model):
    inputs = tiny_inputs(model, batch=2, seq=7)
    mask = torch.ones_like(inputs["input_ids"])
    mask[1, -3:] = 0  # the second sequence is padded: padding must stay hidden, the prefix must stay visible
    return {**inputs, "attention_mask": mask}


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_disabled_or_empty_prefix_is_the_base_model_exactly(family, impl):
    model = tiny_model(family, attn_implementation=impl)
    inputs = padded_inputs(model)
    base = logits(model, inputs)
    prepare_prefix(model, length=4)
    assert not torch.allclose(logits(model, inputs), base, atol=1e-6)
    with prefix_disabled(model):
        assert torch.equal(logits(model, inputs), base)
    assert not torch.allclose(logits(model, inputs), base, atol=1e-6)  # back on after the context

    empty = tiny_model(family, attn_implementation=impl)
    prepare_prefix(empty, length=0)
    assert torch.equal(logits(empty, inputs), base)


@pytest.mark.parametrize("family,kv_width,head", [("bert", 32, 32 * 3 + 3), ("gpt2", 32, 0), ("llama", 16, 0)])
@pytest.mark.parametrize("length", [1, 5])
def test_count_is_layers_times_two_times_length_times_kv_width(family, kv_width, head, length):
    model = tiny_model(family)  # llama: 2 key/value heads of width 8 (grouped-query attention)
    prepare_prefix(model, length=length)
    assert count_trainable(model) == prefix_param_count(2, length, kv_width) + head == 2 * 2 * length * kv_width + head
    assert {n for n, p in model.named_parameters() if p.requires_grad and "classifier" not in n} == {
        f"bert.encoder.layer.{i}.attention.self.loralab_prefix.{kv}" if family == "bert" else
        f"transformer.h.{i}.attn.loralab_prefix.{kv}" if family == "gpt2" else
        f"model.layers.{i}.self_attn.loralab_prefix.{kv}"
        for i in range(2) for kv in ("key", "value")}


@pytest.mark.parametrize("impl", IMPLS)
def test_bert_self_attention_with_prefix_matches_a_hand_computation(impl):
    model = tiny_model("bert", attn_implementation=impl, num_hidden_layers=1)
    length, heads, hd = 3, 4, 8
    prepare_prefix(model, length=length, init_std=0.5)
    attention = model.bert.encoder.layer[0].attention.self
    seen = {}
    attention.register_forward_hook(lambda mod, args, kwargs, out: seen.update(h=args[0], out=out[0]), with_kwargs=True)
    inputs = padded_inputs(model)
    logits(model, inputs)

    h = seen["h"]  # (B, T, 32): the embeddings entering the layer
    batch, seq, _ = h.shape

    def split(x):  # (B, T, 32) -> (B, heads, T, hd)
        return x.view(batch, seq, heads, hd).transpose(1, 2)

    q = split(h @ attention.query.weight.T + attention.query.bias)
    k = split(h @ attention.key.weight.T + attention.key.bias)
    v = split(h @ attention.value.weight.T + attention.value.bias)
    prefix = attention.loralab_prefix
    k = torch.cat([prefix.key.expand(batch, -1, -1, -1), k], dim=2)
    v = torch.cat([prefix.value.expand(batch, -1, -1, -1), v], dim=2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)  # (B, heads, T, l + T)
    visible = torch.cat([torch.ones(batch, length, dtype=torch.bool), inputs["attention_mask"].bool()], dim=1)
    scores = scores.masked_fill(~visible[:, None, None, :], float("-inf"))
    expected = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, seq, heads * hd)
    torch.testing.assert_close(seen["out"], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_decoder_with_prefix_stays_causal(family, impl):
    """Appending tokens must not change the logits of the earlier positions."""
    model = tiny_model(family, attn_implementation=impl)
    prepare_prefix(model, length=3, init_std=0.5)
    ids = tiny_inputs(model, batch=1, seq=9)["input_ids"]
    full = logits(model, {"input_ids": ids})
    short = logits(model, {"input_ids": ids[:, :5]})
    torch.testing.assert_close(full[:, :5], short, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_cached_generation_matches_full_recomputation(family, impl):
    """Decoding with a KV cache (the cache holds token keys only; the prefix is prepended at every step)
    gives the logits a full forward over the generated sequence gives."""
    model = tiny_model(family, attn_implementation=impl)
    prepare_prefix(model, length=3, init_std=0.5)
    ids = tiny_inputs(model, batch=2, seq=5)["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False,
                             output_logits=True, return_dict_in_generate=True, pad_token_id=0)
        full = model(input_ids=out.sequences).logits
    for step, step_logits in enumerate(out.logits):
        torch.testing.assert_close(step_logits, full[:, 4 + step], rtol=1e-5, atol=1e-5)


def test_decoder_prefix_first_token_sees_only_prefix_and_itself():
    """With a prefix, even position 0's output depends on the prefix (it is visible to every query)."""
    model = tiny_model("gpt2")
    ids = tiny_inputs(model, batch=1, seq=4)["input_ids"]
    base = logits(model, {"input_ids": ids})
    prepare_prefix(model, length=2, init_std=0.5)
    assert not torch.allclose(logits(model, {"input_ids": ids})[:, 0], base[:, 0], atol=1e-5)


def test_remove_prefix_restores_the_base_model():
    model = tiny_model("bert")
    inputs = padded_inputs(model)
    base = logits(model, inputs)
    prepare_prefix(model, length=2)
    remove_prefix(model)
    assert model.config._attn_implementation == "sdpa" and not prefixes(model)
    assert torch.equal(logits(model, inputs), base)


def test_prefix_rejects_bad_input():
    with pytest.raises(LoraLabError, match="length"):
        prepare_prefix(tiny_model("bert"), length=-1)
    model = tiny_model("bert")
    prepare_prefix(model, length=1)
    with pytest.raises(LoraLabError, match="already"):
        prepare_prefix(model, length=1)
    with pytest.raises(LoraLabError, match="model_type"):
        prepare_prefix(tiny_model("t5"))
