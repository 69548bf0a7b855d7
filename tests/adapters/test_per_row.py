"""loralab.per_row_adapters on whole models: each row of a mixed batch equals that row run alone with
set_adapter (fp32, 1e-5) for classifiers (per-adapter heads) and causal LMs (fused GPT-2 slices of unequal
widths, embeddings, DoRA, ranks and scales that differ), greedy generation and beams, decoding steps whose
rows are reordered and dropped, training steps and adapter changes, and the refusals."""
import inspect

import pytest
import torch
from transformers import DynamicCache, LlamaForCausalLM

import loralab
from loralab import LoraConfig, LoraLabError
from loralab.core.variants import VARIANTS, Variant, register_variant
from loralab.testing import fill_adapter, one_thread, tiny_inputs, tiny_model

TOL = dict(rtol=0, atol=1e-5)
CACHE = "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield

ADAPTERS = {
    "bert": {"a": LoraConfig(r=2, alpha=4, modules_to_save=["classifier"]),
             "b": LoraConfig(r=6, alpha=3, targets=["query", "key", "value", "dense"], modules_to_save=["classifier"]),
             "c": LoraConfig(r=3, variant="dora", targets=["value"])},
    "roberta": {"a": LoraConfig(r=2, alpha=4, modules_to_save=["classifier"]),
                "b": LoraConfig(r=4, alpha=8, rslora=True, targets=["query", "word_embeddings"],
                                modules_to_save=["classifier"])},
    "llama": {"a": LoraConfig(r=2, alpha=4),
              "b": LoraConfig(r=8, alpha=4, targets="all-linear"),
              "c": LoraConfig(r=2, targets=["q_proj", "embed_tokens"], rslora=True),
              "d": LoraConfig(r=3, variant="dora", targets=["v_proj", "o_proj"])},
    "gpt2": {"a": LoraConfig(r=2, alpha=4, fused_slices={"c_attn": {"adapt": [True, False, True],
                                                                    "widths": [40, 24, 32]}}),
             "b": LoraConfig(r=4, alpha=2, targets=["c_attn", "c_fc", "wte"]),
             "c": LoraConfig(r=3, alpha=6, fused_slices={"c_attn": [False, True, True]})},
}


def model_with_adapters(family: str):
    model = tiny_model(family)
    for i, (name, config) in enumerate(ADAPTERS[family].items()):
        loralab.inject(model, config, adapter=name)
        fill_adapter(model, name, seed=10 + i, std=0.3)
    loralab.set_adapter(model, "a")
    return model.eval()


def names_for(family: str, rows: int) -> list:
    cycle = [*ADAPTERS[family], None]
    return [cycle[(3 * i + 1) % len(cycle)] for i in range(rows)]


def run_alone(model, name, **inputs):
    """The model's logits for these inputs with one adapter active (or the base for None)."""
    if name is None:
        with loralab.disabled(model):
            return model(**inputs).logits
    loralab.set_adapter(model, name)
    return model(**inputs).logits


def rows_alone(model, names, inputs):
    return torch.cat([run_alone(model, n, **{k: v[i:i + 1] for k, v in inputs.items()}) for i, n in enumerate(names)])


@pytest.mark.parametrize("strategy", [None, "grouped", "masked"])
@pytest.mark.parametrize("family", list(ADAPTERS))
def test_mixed_batch_rows_equal_rows_alone(family, strategy):
    model = model_with_adapters(family)
    inputs = tiny_inputs(model, batch=9, seq=6, seed=2)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    inputs["attention_mask"][1, :2] = 0                  # a padded row
    names = names_for(family, 9)
    with torch.no_grad():
        expected = rows_alone(model, names, inputs)
        active = loralab.active_adapter(model)
        with loralab.per_row_adapters(model, names, strategy):
            got = model(**inputs).logits
        torch.testing.assert_close(got, expected, **TOL)
        assert loralab.active_adapter(model) == active                  # the block changed nothing
        torch.testing.assert_close(model(**inputs).logits, run_alone(model, active, **inputs), **TOL)
        # every adapter (and the base) gives its rows something different from the others
        first = {n: names.index(n) for n in set(names)}
        for n, i in first.items():
            for m in first:
                if m != n:
                    other = run_alone(model, m, **{k: v[i:i + 1] for k, v in inputs.items()})
                    assert (other[0] - expected[i]).abs().max() > 1e-4, (family, n, m)


@pytest.mark.parametrize("strategy", ["grouped", "masked", "gathered"])
def test_mixed_batch_on_a_bf16_base_with_fp32_heads(strategy):
    """What `--dtype bf16` builds: frozen weights bf16, LoRA factors and the per-adapter heads fp32. The heads'
    row groups run in their own dtype as they do without a row plan."""
    from loralab.precision import keep_trainable_fp32

    model = model_with_adapters("bert")
    model.to(torch.bfloat16)
    keep_trainable_fp32(model)
    inputs = tiny_inputs(model, batch=6, seq=5, seed=3)
    names = ["a", "b", None, "a", "b", "c"]
    with torch.no_grad():
        expected = rows_alone(model, names, inputs)
        with loralab.per_row_adapters(model, names, strategy):
            got = model(**inputs).logits
    assert got.dtype == expected.dtype
    # bf16 rounds each layer's output (u = 2**-8); batch composition changes the base matmuls' summation order
    assert float((got.float() - expected.float()).abs().max()) <= 0.05 * float(expected.float().abs().max())


def _greedy(model, ids, **kw):
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=6,
                         output_scores=True, return_dict_in_generate=True, pad_token_id=0, **kw)
    return out.sequences[:, ids.shape[1]:], torch.stack(out.scores, dim=1)       # (B, steps), (B, steps, V)


def _clear_steps(scores: torch.Tensor) -> int:
    """Leading steps whose top-two logit margin exceeds the tolerance (beyond them ties may flip)."""
    top = scores.topk(2, dim=-1).values
    clear = (top[..., 0] - top[..., 1]) > TOL["atol"]
    return int(clear.long().cumprod(-1).sum()) if clear.dim() == 1 else int(clear.all(0).long().cumprod(0).sum())


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_greedy_generation_matches_each_adapter_alone(family):
    model = model_with_adapters(family)
    ids = tiny_inputs(model, batch=5, seq=5, seed=4)["input_ids"]
    names = names_for(family, 5)
    with torch.no_grad():
        with loralab.per_row_adapters(model, names):
            tokens, scores = _greedy(model, ids)
        for i, name in enumerate(names):
            if name is None:
                with loralab.disabled(model):
                    alone_tokens, alone_scores = _greedy(model, ids[i:i + 1])
            else:
                loralab.set_adapter(model, name)
                alone_tokens, alone_scores = _greedy(model, ids[i:i + 1])
            steps = min(_clear_steps(alone_scores[0]), _clear_steps(scores[i]))
            assert steps >= 3, "the tiny model should decide its first tokens clearly"
            assert tokens[i, :steps].tolist() == alone_tokens[0, :steps].tolist(), (name, i)
            torch.testing.assert_close(scores[i], alone_scores[0], rtol=0, atol=1e-4)


def test_beam_search_repeats_each_rows_adapter():
    model = model_with_adapters("llama")
    ids = tiny_inputs(model, batch=3, seq=4, seed=5)["input_ids"]
    names = ["b", None, "d"]
    kw = dict(do_sample=False, num_beams=2, max_new_tokens=4, pad_token_id=0)
    with torch.no_grad():
        with loralab.per_row_adapters(model, names):
            together = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)
        for i, name in enumerate(names):
            one = ids[i:i + 1]
            if name is None:
                with loralab.disabled(model):
                    alone = model.generate(input_ids=one, attention_mask=torch.ones_like(one), **kw)
            else:
                loralab.set_adapter(model, name)
                alone = model.generate(input_ids=one, attention_mask=torch.ones_like(one), **kw)
            assert together[i].tolist() == alone[0].tolist()


def _decode_alone(model, name, prompt, feed):
    """Logits of one row: prefill `prompt` (1, T), then one step feeding token `feed`."""
    cache = DynamicCache()
    ctx = loralab.per_row_adapters(model, [name])
    with ctx:
        model(input_ids=prompt, **{CACHE: cache}, use_cache=True)
        return model(input_ids=feed, **{CACHE: cache}, use_cache=True).logits[0, -1]


def test_decoding_steps_with_rows_reordered_and_dropped():
    model = model_with_adapters("llama")
    prompts = tiny_inputs(model, batch=4, seq=5, seed=6)["input_ids"]
    names = ["a", "d", None, "b"]
    cache = DynamicCache()
    with torch.no_grad():
        with loralab.per_row_adapters(model, names):
            model(input_ids=prompts, **{CACHE: cache}, use_cache=True)
        order = [3, 0, 2]                                  # row 1 left, the others changed places
        cache.batch_select_indices(torch.tensor(order))
        feed = torch.tensor([[7], [8], [9]])
        with loralab.per_row_adapters(model, [names[i] for i in order]):
            step = model(input_ids=feed, **{CACHE: cache}, use_cache=True).logits[:, -1]
        for row, i in enumerate(order):
            expected = _decode_alone(model, names[i], prompts[i:i + 1], feed[row:row + 1])
            torch.testing.assert_close(step[row], expected, **TOL)


def test_training_steps_and_adapter_changes_are_seen():
    model = model_with_adapters("llama")
    ids = tiny_inputs(model, batch=3, seq=4, seed=7)["input_ids"]
    names = ["a", "b", "a"]
    with torch.no_grad(), loralab.per_row_adapters(model, names):
        before = model(input_ids=ids).logits
    loralab.set_adapter(model, "b")                          # one optimizer step on adapter b
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model(input_ids=ids).logits.square().mean().backward()
    optimizer.step()
    with torch.no_grad():
        with loralab.per_row_adapters(model, names):
            after = model(input_ids=ids).logits
        torch.testing.assert_close(after, rows_alone(model, names, {"input_ids": ids}), **TOL)
        torch.testing.assert_close(after[[0, 2]], before[[0, 2]], **TOL)
        assert (after[1] - before[1]).abs().max() > 1e-3
        loralab.delete_adapter(model, "a")
        with pytest.raises(LoraLabError, match="no adapter named 'a'"):
            with loralab.per_row_adapters(model, names):
                pass
        loralab.inject(model, LoraConfig(r=5, targets=["k_proj"]), adapter="e")
        fill_adapter(model, "e", seed=3)
        names = ["e", "b", None]
        with loralab.per_row_adapters(model, names):
            got = model(input_ids=ids).logits
        torch.testing.assert_close(got, rows_alone(model, names, {"input_ids": ids}), **TOL)


def test_refusals():
    model = model_with_adapters("llama")
    ids = tiny_inputs(model, batch=2, seq=3)["input_ids"]
    for bad, message in [([], "non-empty list"), ("a", "non-empty list"), (["a", "zz"], "no adapter named 'zz'")]:
        with pytest.raises(LoraLabError, match=message):
            with loralab.per_row_adapters(model, bad):
                pass
    with pytest.raises(LoraLabError, match="unknown per-row strategy"):
        with loralab.per_row_adapters(model, ["a"], strategy="loop"):
            pass
    with loralab.per_row_adapters(model, ["a", "b"]):
        with pytest.raises(LoraLabError, match="cannot nest"):
            with loralab.per_row_adapters(model, ["a", "b"]):
                pass
        with pytest.raises(ValueError, match="does not fit the 2 adapter names"):
            model(input_ids=torch.cat([ids, ids, ids[:1]]))
    loralab.set_adapter(model, "b")
    loralab.merge(model)
    with pytest.raises(LoraLabError, match="merged into .* base weights.*loralab.unmerge"):
        with loralab.per_row_adapters(model, ["a", None]):
            pass
    loralab.unmerge(model)
    with VARIANTS.scoped():
        @register_variant
        class BatchNorming(Variant):
            name = "batch-norming"
            per_row = False
        loralab.inject(model, LoraConfig(r=2, variant="batch-norming"), adapter="bn")
        with pytest.raises(LoraLabError, match="'bn' uses the 'batch-norming' variant.*set_adapter"):
            with loralab.per_row_adapters(model, ["a", "bn"]):
                pass
        with loralab.per_row_adapters(model, ["a", None]):        # the others still mix
            model(input_ids=ids)


def test_deleting_an_adapter_that_rows_of_a_running_block_use_is_refused():
    model = model_with_adapters("bert")
    inputs = tiny_inputs(model, batch=3, seq=4, seed=5)
    names = ["a", "b", "a"]
    with torch.no_grad(), loralab.per_row_adapters(model, names):
        expected = model(**inputs).logits
        with pytest.raises(LoraLabError) as caught:
            loralab.delete_adapter(model, "a")
        assert str(caught.value) == ("cannot delete adapter 'a': rows [0, 2] of the per_row_adapters block running "
                                     "now use it; delete it after the block")
        torch.testing.assert_close(model(**inputs).logits, expected, rtol=0, atol=0)     # nothing was removed
        loralab.delete_adapter(model, "c")                 # no row uses c: deleted
        torch.testing.assert_close(model(**inputs).logits, expected, rtol=0, atol=0)
    assert loralab.list_adapters(model) == ["a", "b"]
    loralab.delete_adapter(model, "a")                     # after the block
    assert loralab.list_adapters(model) == ["b"]


def test_the_walk_is_kept_while_the_adapters_are_the_same_and_redone_when_they_change():
    from loralab.adapters.per_row import ROW_MODULES_ATTR

    model = model_with_adapters("llama")
    ids = tiny_inputs(model, batch=2, seq=4, seed=5)["input_ids"]
    with loralab.per_row_adapters(model, ["a", "b"]):
        pass
    kept = model.__dict__[ROW_MODULES_ATTR]
    with loralab.per_row_adapters(model, ["b", None]):
        pass
    assert model.__dict__[ROW_MODULES_ATTR] is kept                   # no second walk
    loralab.delete_adapter(model, "a")                                 # the same name again, on other layers
    loralab.inject(model, LoraConfig(r=3, targets=["lm_head"]), adapter="a")     # a layer no adapter wrapped yet
    fill_adapter(model, "a", seed=11)
    names = ["a", "c"]
    with torch.no_grad(), loralab.per_row_adapters(model, names):
        got = model(input_ids=ids).logits
    assert model.__dict__[ROW_MODULES_ATTR] is not kept
    with torch.no_grad():
        torch.testing.assert_close(got, rows_alone(model, names, {"input_ids": ids}), **TOL)
    assert any(name == "lm_head" for name, _ in model.__dict__[ROW_MODULES_ATTR][1])
