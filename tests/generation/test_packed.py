"""PackedLinears: oneDNN's packed-weight linears give the logits of torch's kernel within float rounding (LoRA
adapters, per-row mixes, merges after packing), only inside the block and only on plain nn.Linear layers;
BatchDecoder's greedy tokens are the same packed or not, with rows joining and leaving mid-decode."""
from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

import loralab
from loralab.generation import BatchDecoder, SamplingParams
from loralab.generation.packed import PackedLinears, packable, packing_available
from loralab.quantization.model import quantize
from loralab.testing import fill_adapter, one_thread, tiny_inputs, tiny_model

_spec = importlib.util.spec_from_file_location("training_fixtures",
                                               Path(__file__).resolve().parents[1] / "training" / "conftest.py")
fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixtures)

pytestmark = pytest.mark.skipif(not packing_available(), reason="torch has no oneDNN on this CPU")


def adapted(family: str = "llama") -> nn.Module:
    model = tiny_model(family)
    for i, name in enumerate(("a", "b")):
        loralab.inject(model, loralab.LoraConfig(r=4, alpha=8), adapter=name)
        fill_adapter(model, name, seed=10 + i)
    return model.eval()


def logits(model, inputs, packed=None, **extra) -> torch.Tensor:
    with torch.inference_mode(), one_thread():
        if packed is None:
            return model(**inputs, **extra).logits
        with packed:
            return model(**inputs, **extra).logits


def close(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| relative to max |b|."""
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_packed_logits_equal_torch_kernel_within_rounding(family):
    model = adapted(family)
    inputs = tiny_inputs(model, batch=3, seq=6)
    packed = PackedLinears(model)
    expected = [n for n, m in model.named_modules() if type(m) is nn.Linear]
    assert packed.layers == len(expected) > 0           # GPT-2's Conv1D is no nn.Linear: only its LM head
    base = logits(model, inputs)
    assert close(logits(model, inputs, packed), base) < 1e-5
    assert packed.packed_bytes() == sum(m.weight.numel() * 4 for m in model.modules() if type(m) is nn.Linear)
    names = ["a", None, "b"]
    with loralab.per_row_adapters(model, names):
        mixed = logits(model, inputs)
    with loralab.per_row_adapters(model, names):
        mixed_packed = logits(model, inputs, packed)
    assert close(mixed_packed, mixed) < 1e-5
    assert close(mixed, base) > 1e-3                     # the adapters do change the logits


def test_only_inside_the_block_and_nesting_keeps_it_on():
    model = adapted()
    packed = PackedLinears(model)
    layer = next(m for m in model.modules() if type(m) is nn.Linear)
    assert "forward" not in layer.__dict__
    with packed:
        with packed:
            assert "forward" in layer.__dict__
        assert "forward" in layer.__dict__               # the inner exit leaves the outer block on
    assert "forward" not in layer.__dict__

    def own(x):                                          # someone else's instance forward comes back
        return nn.Linear.forward(layer, x)
    layer.forward = own
    with packed:
        assert layer.forward != own
    assert layer.forward is own


def test_a_weight_changed_after_packing_is_repacked():
    model = adapted()
    inputs = tiny_inputs(model, batch=2, seq=5)
    packed = PackedLinears(model)
    logits(model, inputs, packed)                        # packs every layer
    loralab.set_adapter(model, "a")
    loralab.merge(model)                                 # in place: every adapted base weight's version moves
    merged = logits(model, inputs)
    assert close(logits(model, inputs, packed), merged) < 1e-5
    with torch.no_grad():
        model.lm_head.weight.mul_(1.5)                   # LLaMA ties it to the embeddings: both change
    assert close(logits(model, inputs, packed), logits(model, inputs)) < 1e-5


def test_gradients_through_a_packed_block_equal_torch_s():
    """Calls that need autograd take torch's path (the packed kernel has no backward); calls that do not
    (frozen weight, input without grad: the first layer's bases) may run packed: the LoRA gradients agree."""
    model = adapted()
    loralab.set_adapter(model, "a")
    inputs = tiny_inputs(model, batch=2, seq=4)
    factors = [p for n, p in model.named_parameters() if p.requires_grad]
    grads = []
    for packed in (None, PackedLinears(model)):
        model.zero_grad()
        with one_thread(), (packed or contextlib.nullcontext()):
            model(**inputs).logits.square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in factors]))
    assert 0 < packed.packed_bytes() and close(grads[1], grads[0]) < 1e-5


def test_off_and_what_is_not_packed():
    model = adapted()
    assert PackedLinears(model, enabled=False).layers == 0
    assert not packable(nn.Linear(4, 4).to(torch.float16))
    assert not packable(nn.Conv1d(4, 4, 1))

    class Sub(nn.Linear):
        pass
    assert not packable(Sub(4, 4))
    quantized = quantize(tiny_model("llama"), "int8")
    plain = [m for m in quantized.modules() if type(m) is nn.Linear]
    assert PackedLinears(quantized).layers == len(plain)   # the int8 layers are left alone (the LM head is skipped)


def test_bf16_packed_logits():
    model = tiny_model("llama").to(torch.bfloat16)
    inputs = tiny_inputs(model, batch=2, seq=5)
    packed = PackedLinears(model)
    assert packed.layers > 0
    assert close(logits(model, inputs, packed).float(), logits(model, inputs).float()) < 2e-2


def run(decoder: BatchDecoder, prompts: dict, joins: dict, cancel: dict) -> dict:
    tokens: dict = {r: [] for r in prompts}
    waiting, step = dict(prompts), 0
    while waiting or decoder.has_work:
        for r in [r for r in waiting if joins.get(r, 0) <= step]:
            decoder.add(r, waiting.pop(r), SamplingParams(max_new_tokens=6 + len(r)))
        for r in [r for r, at in cancel.items() if at == step]:
            decoder.cancel(r)
        for out in decoder.step():
            tokens[out.request_id].append(out.token_id)
        step += 1
    return tokens


def test_decoder_tokens_equal_packed_or_not_as_rows_join_and_leave(tmp_path):
    folder = fixtures.write_tiny_causal(tmp_path, "llama")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    for i, name in enumerate(("a", "b")):
        loralab.inject(model, loralab.LoraConfig(r=4, alpha=8), adapter=name)
        fill_adapter(model, name, seed=10 + i)
    g = torch.Generator().manual_seed(3)
    prompts = {r: torch.randint(3, len(tokenizer), (n,), generator=g).tolist()
               for r, n in zip(["p", "qq", "rrr", "s", "tt"], [3, 9, 5, 12, 1])}
    adapter = {"p": "a", "qq": None, "rrr": "b", "s": "a", "tt": "b"}
    joins, cancel = {"rrr": 2, "s": 4, "tt": 5}, {"qq": 6}
    results = {}
    for on in (False, True):
        decoder = BatchDecoder(model, tokenizer, max_batch_size=3, packed=on, eos_token_ids=(),
                               forward_context=lambda ids: loralab.per_row_adapters(model, [adapter[i] for i in ids]))
        assert decoder.packed.layers == (len([m for m in model.modules() if type(m) is nn.Linear]) if on else 0)
        with one_thread():
            results[on] = run(decoder, prompts, joins, cancel)
    assert results[True] == results[False]
    assert [len(results[True][r]) for r in prompts] == [7, 6, 9, 7, 8]   # qq cancelled at step 6, after 6 tokens
    shared = PackedLinears(model)                        # one packed copy shared by two decoders
    assert BatchDecoder(model, tokenizer, packed=shared).packed is shared


def test_default_on_stays_off_when_the_copy_would_not_fit_the_memory_available(monkeypatch):
    import loralab.generation.packed as packed_module

    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))
    copy = (64 * 32 + 32 * 8) * 4
    monkeypatch.setattr(packed_module, "available_memory", lambda device: 2 * copy)      # exactly half: fits
    assert PackedLinears(model).layers == 2
    monkeypatch.setattr(packed_module, "available_memory", lambda device: 2 * copy - 1)
    with pytest.warns(packed_module.PackingSkipped, match=r"packed linears off: their copy would take 0 MiB"):
        skipped = PackedLinears(model)
    assert (skipped.enabled, skipped.layers) == (False, 0) and "enabled=True" in skipped.skipped
    assert PackedLinears(model, enabled=True).layers == 2                       # forced: packs regardless
    monkeypatch.setattr(packed_module, "available_memory", lambda device: None)  # unknown: no check
    assert PackedLinears(model).layers == 2
