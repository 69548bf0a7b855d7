"""BatchDecoder: a request's tokens do not depend on the other rows, whether it runs alone, in a batch,
or joins mid-way (left padding, per-row positions: RoPE in LLaMA, absolute embeddings in GPT-2); greedy
equals transformers' generate; forward_context sees the rows of every forward in batch order."""
from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from loralab.errors import LoraLabError
from loralab.generation import BatchDecoder, SamplingParams, encode_prompts

_spec = importlib.util.spec_from_file_location("training_fixtures",
                                               Path(__file__).resolve().parents[1] / "training" / "conftest.py")
fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixtures)

NEW = 10


@pytest.fixture(scope="module", params=["gpt2", "llama", "llama-ragged"])
def tiny(request, tmp_path_factory):
    """A tiny causal LM, its tokenizer and six prompts. "llama-ragged" decodes with ragged steps (the running rows
    and the joining prompts in one forward, loralab.generation.ragged); the others decode, then prefill."""
    torch.set_num_threads(1)
    family = request.param.split("-")[0]
    folder = fixtures.write_tiny_causal(tmp_path_factory.mktemp(request.param), family)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompts = [line.split("||")[0] for line in fixtures.e2e_lines(6)]
    prompts[1] = prompts[1].split("|")[0]  # short: left padding next to the long ones
    prompts[4] = " ".join(prompts[4].split()[:3])
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    model.ragged_steps = request.param.endswith("-ragged")        # read by `new_decoder`
    return model, tokenizer, encode_prompts(tokenizer, prompts)


def new_decoder(model, tokenizer, **kwargs) -> BatchDecoder:
    """A BatchDecoder on the fixture's model, ragged or not as its parameter says."""
    return BatchDecoder(model, tokenizer, ragged=model.ragged_steps, **kwargs)


def run(decoder: BatchDecoder, prompts: dict, params: dict, joins: dict | None = None,
        cancel: dict | None = None) -> dict:
    """Drive `decoder`: request r is added before step joins[r] (default 0) and cancelled before step
    cancel[r]; returns {request: token ids}, checking every step's rows against row_ids."""
    joins, cancel = joins or {}, cancel or {}
    tokens: dict = {r: [] for r in prompts}
    waiting, step = dict(prompts), 0
    while waiting or decoder.has_work:
        for r in [r for r in waiting if joins.get(r, 0) <= step]:
            decoder.add(r, waiting.pop(r), params.get(r, SamplingParams(max_new_tokens=NEW)))
        for r in [r for r, at in cancel.items() if at == step]:
            assert decoder.cancel(r)
        running = decoder.row_ids
        outputs = decoder.step()
        assert [o.request_id for o in outputs][:len(running)] == running  # running rows first, in order
        for out in outputs:
            tokens[out.request_id].append(out.token_id)
            assert out.completion_tokens == len(tokens[out.request_id])
        step += 1
    return tokens


def reference(model, prompt: list[int], **kwargs) -> list[int]:
    """transformers' generate on the prompt alone (no padding)."""
    ids = torch.tensor([prompt])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW, do_sample=False,
                         pad_token_id=0, eos_token_id=2, **kwargs)
    return out[0, len(prompt):].tolist()


def test_greedy_rows_match_transformers_alone_in_a_batch_and_joining_mid_way(tiny):
    model, tokenizer, prompts = tiny
    expected = {i: reference(model, p) for i, p in enumerate(prompts)}
    assert any(len(v) == NEW for v in expected.values())
    alone = {i: run(new_decoder(model, tokenizer), {i: p}, {})[i] for i, p in enumerate(prompts)}
    together = run(new_decoder(model, tokenizer), dict(enumerate(prompts)), {})
    staggered = run(new_decoder(model, tokenizer), dict(enumerate(prompts)), {},
                    joins={1: 3, 2: 1, 3: 5, 4: 2, 5: 9})
    # the short prompts 1 and 4 first: the long ones joining later make the running rows' cache left-padded
    short_first = run(new_decoder(model, tokenizer), dict(enumerate(prompts)), {}, joins={0: 2, 2: 2, 3: 4, 5: 6})
    limited = run(new_decoder(model, tokenizer, max_batch_size=2), dict(enumerate(prompts)), {})
    assert alone == together == staggered == short_first == limited == expected


def test_cancelled_rows_leave_without_changing_the_others(tiny):
    model, tokenizer, prompts = tiny
    expected = {i: reference(model, p) for i, p in enumerate(prompts)}
    decoder = new_decoder(model, tokenizer)
    got = run(decoder, dict(enumerate(prompts)), {}, joins={3: 2}, cancel={0: 2, 3: 4, 5: 0})
    assert got[5] == [] and got[0] == expected[0][:2] and got[3] == expected[3][:2]
    assert {i: got[i] for i in (1, 2, 4)} == {i: expected[i] for i in (1, 2, 4)}
    assert not decoder.has_work and decoder.row_ids == [] and not decoder.cancel(0)


def test_seeded_samples_do_not_depend_on_the_batch(tiny):
    model, tokenizer, prompts = tiny
    sampled = SamplingParams(max_new_tokens=NEW, temperature=1.3, top_k=30, top_p=0.9, repetition_penalty=1.2,
                             seed=5)
    others = {1: SamplingParams(max_new_tokens=4), 2: SamplingParams(max_new_tokens=NEW, temperature=0.7, seed=9),
              3: SamplingParams(max_new_tokens=NEW, temperature=2.0, top_k=5)}
    alone = run(new_decoder(model, tokenizer), {0: prompts[0]}, {0: sampled})[0]
    crowded = run(new_decoder(model, tokenizer), {i: prompts[i] for i in range(4)}, {0: sampled, **others},
                  joins={0: 3, 2: 1})[0]
    assert alone == crowded and len(alone) == NEW
    unseeded = [run(new_decoder(model, tokenizer), {0: prompts[0]},
                    {0: SamplingParams(max_new_tokens=NEW, temperature=1.3)})[0] for _ in range(3)]
    assert len({tuple(t) for t in unseeded}) > 1  # no seed: a fresh random generator each time


def test_penalties_and_ngram_ban_match_transformers(tiny):
    model, tokenizer, prompts = tiny
    settings = dict(repetition_penalty=1.5, no_repeat_ngram_size=2)
    expected = {i: reference(model, p, **settings) for i, p in enumerate(prompts)}
    assert expected != {i: reference(model, p) for i, p in enumerate(prompts)}  # the settings matter here
    params = {i: SamplingParams(max_new_tokens=NEW, **settings) for i in range(len(prompts))}
    assert run(new_decoder(model, tokenizer), dict(enumerate(prompts)), params, joins={2: 3}) == expected


class RowBias:
    """A stand-in for per-row adapters: inside `context(row_ids)` the LM head adds bias[request] to each
    row's logits, so a row decoded with another row's bias would change its tokens."""

    def __init__(self, model, vocab: int) -> None:
        self.model, self.calls = model, []
        g = torch.Generator().manual_seed(0)
        self.bias = {r: torch.randn(vocab, generator=g) * 3 for r in "abcd"}

    @contextlib.contextmanager
    def context(self, row_ids):
        self.calls.append(list(row_ids))
        bias = torch.stack([self.bias[r] for r in row_ids])[:, None, :]
        handle = self.model.get_output_embeddings().register_forward_hook(
            lambda module, args, output: (output + bias) if output.shape[0] == len(row_ids) else 1 / 0)
        try:
            yield
        finally:
            handle.remove()


def test_forward_context_gets_each_forwards_rows_in_batch_order(tiny):
    model, tokenizer, prompts = tiny
    hook = RowBias(model, model.get_output_embeddings().out_features)
    requests = dict(zip("abcd", [prompts[i] for i in (0, 2, 3, 5)]))
    alone = {}
    for r, prompt in requests.items():
        alone[r] = run(new_decoder(model, tokenizer, forward_context=hook.context), {r: prompt}, {})[r]
    assert len({tuple(v) for v in alone.values()}) == 4
    hook.calls.clear()
    decoder = new_decoder(model, tokenizer, max_batch_size=3, forward_context=hook.context)
    mixed = run(decoder, requests, {"a": SamplingParams(max_new_tokens=3)}, joins={"c": 2, "d": 4})
    assert mixed["b"] == alone["b"] and mixed["c"] == alone["c"] and mixed["d"] == alone["d"]
    assert mixed["a"] == alone["a"][:3]
    # a: 3 tokens; b from step 0, c from step 2, d from step 4, 10 tokens each (prefill gives the first)
    assert all(len(v) == NEW for v in alone.values())
    ab, bc, bcd = ["a", "b"], ["b", "c"], ["b", "c", "d"]
    if not model.ragged_steps:       # a decoding forward, then the joining prompts' prefill, each step
        assert hook.calls == [ab, ab, ab, ["c"], bc, bc, ["d"], *[bcd] * 5, ["c", "d"], ["c", "d"], ["d"], ["d"]]
    else:     # one forward a step: its body (every token a row: a joining request once per prompt token), its head
        tokens = {r: [r] * len(p) for r, p in requests.items()}
        cd = ["c", "d"]
        assert hook.calls == [tokens["a"] + tokens["b"], ab, ab, ab, ab + tokens["c"], ab + ["c"], bc, bc,
                              bc + tokens["d"], bcd, *[bcd] * 10, cd, cd, cd, cd, ["d"], ["d"], ["d"], ["d"]]


def test_max_batch_size_queues_requests_in_arrival_order(tiny):
    model, tokenizer, prompts = tiny
    decoder = new_decoder(model, tokenizer, max_batch_size=2, eos_token_ids=[])
    for i, p in enumerate(prompts[:4]):
        decoder.add(i, p, SamplingParams(max_new_tokens=2 + i))
    assert decoder.waiting_ids == [0, 1, 2, 3] and decoder.row_ids == []
    decoder.step()
    assert decoder.row_ids == [0, 1] and decoder.waiting_ids == [2, 3]
    decoder.step()  # request 0 ends (2 tokens) and request 2 takes its place
    assert decoder.row_ids == [1, 2] and decoder.waiting_ids == [3]
    while decoder.has_work:
        assert len(decoder.row_ids) <= 2
        decoder.step()


def test_finish_reasons_min_new_tokens_and_the_context_limit(tiny):
    model, tokenizer, prompts = tiny
    first = reference(model, prompts[0])[0]
    ended = new_decoder(model, tokenizer, eos_token_ids=[first])
    ended.add(0, prompts[0], SamplingParams(max_new_tokens=NEW))
    assert [(o.token_id, o.finished, o.finish_reason) for o in ended.step()] == [(first, True, "stop")]
    held = run(new_decoder(model, tokenizer, eos_token_ids=[first]), {0: prompts[0]},
               {0: SamplingParams(max_new_tokens=NEW, min_new_tokens=3)})[0]
    assert first not in held[:3]
    context = model.config.max_position_embeddings if hasattr(model.config, "max_position_embeddings") \
        else model.config.n_positions
    endless = new_decoder(model, tokenizer, eos_token_ids=[])
    endless.add(0, prompts[4], SamplingParams(max_new_tokens=1000))
    outputs = []
    while endless.has_work:
        outputs += endless.step()
    # the last token is the one that would be fed at position `context`
    assert len(outputs) == context - len(prompts[4]) + 1 and outputs[-1].finish_reason == "length"
    assert endless.cache_columns == 0


def test_bad_requests_are_refused(tiny):
    model, tokenizer, prompts = tiny
    decoder = new_decoder(model, tokenizer)
    decoder.add("x", prompts[0])
    with pytest.raises(LoraLabError, match="already in the decoder"):
        decoder.add("x", prompts[1])
    with pytest.raises(LoraLabError, match="empty prompt"):
        decoder.add("y", [])
    with pytest.raises(LoraLabError, match="prompt token ids must be in 0.."):
        decoder.add("y", [1, len(tokenizer) + 50])
    with pytest.raises(LoraLabError, match="beam search"):
        decoder.add("y", prompts[0], SamplingParams(num_beams=2))
    with pytest.raises(LoraLabError, match="more than the model's context"):
        decoder.add("y", [5] * 1000)
    with pytest.raises(LoraLabError, match="max_batch_size"):
        new_decoder(model, tokenizer, max_batch_size=0)
    assert decoder.waiting_ids == ["x"] and not decoder.cancel("nobody")


def test_a_row_whose_own_work_fails_leaves_alone_and_the_others_go_on(tiny, monkeypatch):
    model, tokenizer, prompts = tiny
    expected = run(new_decoder(model, tokenizer), {r: prompts[r] for r in range(3)}, {})
    decoder = new_decoder(model, tokenizer)
    report = decoder._report

    def failing(row, token, position, *logprobs):
        if row.request_id == 2 and len(row.output) == 1:
            raise ValueError("cannot detokenise")
        return report(row, token, position, *logprobs)
    monkeypatch.setattr(decoder, "_report", failing)
    for r in range(3):
        decoder.add(r, prompts[r], SamplingParams(max_new_tokens=NEW))
    tokens: dict = {0: [], 1: [], 2: []}
    failed = []
    while decoder.has_work:
        for out in decoder.step():
            if out.error is not None:
                failed.append((out.request_id, out.finished, out.finish_reason, str(out.error)))
                assert 2 not in decoder.row_ids
            else:
                tokens[out.request_id].append(out.token_id)
    assert len(expected[2]) > 1 and failed == [(2, True, "error", "cannot detokenise")]
    assert tokens == {0: expected[0], 1: expected[1], 2: expected[2][:1]}


def test_logprobs_equal_a_log_softmax_of_the_offline_forward(tiny):
    """Greedy tokens with logprobs=3 in a mixed batch (one row without logprobs, one with penalties): each
    token's logprob and top 3 equal log_softmax of the model's logits for prompt + tokens so far, run alone
    without cache, within 1e-5; penalties do not change them (they are the model's own)."""
    model, tokenizer, prompts = tiny
    decoder = new_decoder(model, tokenizer)
    decoder.add("plain", prompts[0], SamplingParams(max_new_tokens=NEW))
    decoder.add("lp", prompts[1], SamplingParams(max_new_tokens=NEW, logprobs=3))
    decoder.add("pen", prompts[2], SamplingParams(max_new_tokens=NEW, logprobs=1, frequency_penalty=1.5,
                                                  presence_penalty=0.5, repetition_penalty=1.3))
    outputs: dict = {"plain": [], "lp": [], "pen": []}
    while decoder.has_work:
        for out in decoder.step():
            outputs[out.request_id].append(out)
    assert all(o.logprob is None and o.top_logprobs == () for o in outputs["plain"])
    for name, prompt, k in (("lp", prompts[1], 3), ("pen", prompts[2], 1)):
        tokens = [o.token_id for o in outputs[name]]
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([prompt + tokens])).logits[0].float()
        expected = torch.log_softmax(logits[len(prompt) - 1:len(prompt) - 1 + len(tokens)], dim=-1)
        for i, out in enumerate(outputs[name]):
            assert abs(out.logprob - float(expected[i, out.token_id])) < 1e-5
            top = torch.topk(expected[i], k)
            assert [t for t, _ in out.top_logprobs] == top.indices.tolist()
            assert max(abs(v - float(e)) for (_, v), e in zip(out.top_logprobs, top.values)) < 1e-5
    greedy = [o.token_id for o in outputs["lp"]]
    assert greedy == reference(model, prompts[1])                      # logprobs do not change the tokens


def test_frequency_and_presence_penalties_stop_repeats_and_leave_other_rows_alone(tiny):
    """A large frequency or presence penalty (greedy) never repeats an output token; the prompt's tokens do
    not count (only the output does); a row without penalties in the same batch keeps its tokens."""
    model, tokenizer, prompts = tiny
    expected = reference(model, prompts[0])
    decoder = new_decoder(model, tokenizer, eos_token_ids=[])
    decoder.add("plain", prompts[0], SamplingParams(max_new_tokens=NEW))
    decoder.add("freq", prompts[0], SamplingParams(max_new_tokens=NEW, frequency_penalty=1e4))
    decoder.add("pres", prompts[0], SamplingParams(max_new_tokens=NEW, presence_penalty=1e4))
    tokens: dict = {"plain": [], "freq": [], "pres": []}
    while decoder.has_work:
        for out in decoder.step():
            tokens[out.request_id].append(out.token_id)
    assert tokens["plain"][:len(expected)] == expected
    assert len(set(tokens["plain"])) < NEW                            # unpenalised, the tiny model repeats
    for name in ("freq", "pres"):
        assert len(tokens[name]) == NEW and len(set(tokens[name])) == NEW, tokens[name]
        assert tokens[name][0] == tokens["plain"][0]                   # nothing generated yet: no penalty


def test_ragged_steps_are_refused_for_a_model_the_architecture_table_does_not_list(tiny):
    model, tokenizer, _ = tiny
    if model.config.model_type == "llama":
        assert BatchDecoder(model, tokenizer).ragged                 # on by default where supported
        assert not BatchDecoder(model, tokenizer, ragged=False).ragged
    else:
        assert not BatchDecoder(model, tokenizer).ragged
        with pytest.raises(LoraLabError, match="ragged steps need a model whose attention"):
            BatchDecoder(model, tokenizer, ragged=True)


def test_a_ragged_step_prefills_joining_prompts_in_the_running_rows_forward(tiny):
    model, tokenizer, prompts = tiny
    if not model.ragged_steps:
        pytest.skip("ragged steps only")
    calls = []
    hook = model.get_decoder().register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(kwargs["input_ids"].shape), with_kwargs=True)
    try:
        tokens = run(new_decoder(model, tokenizer), dict(enumerate(prompts[:3])), {}, joins={2: 3})
    finally:
        hook.remove()
    lengths = [len(p) for p in prompts[:3]]
    # step 0: both prompts; step 3: rows 0 and 1 and prompt 2 in one forward; one forward every step
    assert calls[0] == (lengths[0] + lengths[1], 1) and calls[3] == (2 + lengths[2], 1)
    assert len(calls) == max(3 + len(tokens[2]), len(tokens[0]), len(tokens[1]))
    assert tokens == {i: reference(model, p) for i, p in enumerate(prompts[:3])}


def test_ragged_steps_on_qwen2_give_transformers_tokens(tiny):
    """The other family the architecture table lists for ragged steps (its attention adds biases to q, k, v and
    passes a sliding window of None)."""
    model, tokenizer, prompts = tiny
    if not model.ragged_steps:
        pytest.skip("one run is enough")
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    qwen = Qwen2ForCausalLM(Qwen2Config(vocab_size=model.config.vocab_size, hidden_size=32, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, intermediate_size=48,
                                        max_position_embeddings=128, bos_token_id=1, eos_token_id=2,
                                        pad_token_id=0)).eval()
    decoder = BatchDecoder(qwen, tokenizer, max_batch_size=3)
    assert decoder.ragged
    tokens = run(decoder, dict(enumerate(prompts)), {}, joins={3: 2, 4: 2, 5: 5})
    assert tokens == {i: reference(qwen, p) for i, p in enumerate(prompts)}
