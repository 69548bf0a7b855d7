"""`loralab serve` over real HTTP (an in-process uvicorn on a free loopback port, tiny models): OpenAI
completions and chat equal to each adapter's offline greedy output under concurrency, seeds, n, stop strings,
streaming, classification, hot loading and unloading, every error path, client disconnects, draining."""
from __future__ import annotations

import concurrent.futures
import json
import shutil
import threading
import time

import httpx
import pytest
import torch

from tests.serving.over_http import client, complete, sample, samples

import loralab
from loralab.generation import BatchDecoder, SamplingParams
from loralab.serving.api import MAX_JSON_DEPTH
from loralab.testing import tiny_model


@pytest.fixture(scope="module")
def offline(lm_files):
    """offline(adapter or None, prompt, max_tokens) -> the greedy continuation of transformers' generate with
    that adapter alone (token ids), on a separate copy of the model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, adapters = lm_files
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base).eval()
    for name, path in adapters.items():
        loralab.load_adapter(model, path, adapter=name)
    model.eval()

    def run(adapter, prompt: str, max_tokens: int = 8) -> list[int]:
        ids = torch.tensor([tokenizer(prompt)["input_ids"]])
        with torch.inference_mode():
            if adapter is None:
                with loralab.disabled(model):
                    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                         max_new_tokens=max_tokens, pad_token_id=0)
            else:
                loralab.set_adapter(model, adapter)
                out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                     max_new_tokens=max_tokens, pad_token_id=0)
        return out[0, ids.shape[1]:].tolist()

    def logits(adapter, ids: list[int]) -> torch.Tensor:
        """The fp32 logits (T, V) of one forward over `ids` with that adapter alone (None: the base)."""
        with torch.inference_mode():
            if adapter is None:
                with loralab.disabled(model):
                    return model(input_ids=torch.tensor([ids])).logits[0].float()
            loralab.set_adapter(model, adapter)
            return model(input_ids=torch.tensor([ids])).logits[0].float()

    def decoded(adapter, prompt: str, params: SamplingParams) -> list[int]:
        """The token ids BatchDecoder gives with that adapter alone."""
        loralab.set_adapter(model, adapter)
        decoder = BatchDecoder(model, tokenizer)
        decoder.add(0, tokenizer(prompt)["input_ids"], params)
        tokens = []
        while decoder.has_work:
            tokens += [out.token_id for out in decoder.step()]
        return tokens

    run.decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)
    run.tokenizer, run.logits, run.decoded = tokenizer, logits, decoded
    return run


@pytest.fixture
def lm_server(start_server, lm_files):
    base, adapters = lm_files
    return start_server(model=str(base), served_name="base", adapters=adapters)


PROMPTS = ["the cat sat on", "a big red dog ran", "hello world what is", "one two three", "my name is"]


def test_models_lists_base_and_adapters(lm_server):
    with client(lm_server) as c:
        cards = c.get("/v1/models").json()["data"]
    assert [m["id"] for m in cards] == ["base", "a", "b", "c"]
    assert [m["parent"] for m in cards] == [None, "base", "base", "base"]
    assert [m.get("rank") for m in cards] == [None, 2, 4, 8]


def test_concurrent_greedy_completions_equal_offline_output(lm_server, offline):
    jobs = [(model, prompt) for prompt in PROMPTS for model in ("a", "b", "c", "base")]
    with client(lm_server) as c, concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda job: complete(c, job[0], job[1], max_tokens=10), jobs))
    outputs = set()
    for (model, prompt), answer in zip(jobs, answers):
        expected = offline(None if model == "base" else model, prompt, 10)
        choice = answer["choices"][0]
        assert choice["text"].strip() == offline.decode(expected).strip(), (model, prompt)
        assert answer["usage"]["completion_tokens"] == len(expected)
        assert answer["usage"]["total_tokens"] == answer["usage"]["prompt_tokens"] + len(expected)
        assert answer["object"] == "text_completion" and answer["model"] == model
        outputs.add((prompt, choice["text"]))
    assert len(outputs) == len(jobs)                  # the adapters answer differently: no leak would hide
    hist = lm_server.service.metrics.render()
    assert sample(hist, "loralab_requests_total", endpoint="/v1/completions", model="b", status="200") == 5


def sse_chunks(c: httpx.Client, path: str, body: dict) -> list:
    with c.stream("POST", path, json={**body, "stream": True}) as r:
        assert r.status_code == 200
        lines = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def assert_logprobs_match(offline, adapter: str, prompt: str, tokens: list[int], logprobs: list[float],
                          tops: list[dict[str, float]]):
    """Each token's logprob and top alternatives equal log_softmax of the offline forward, within 1e-5."""
    ids = offline.tokenizer(prompt)["input_ids"]
    expected = torch.log_softmax(offline.logits(adapter, ids + tokens)[len(ids) - 1:-1], dim=-1)
    assert len(logprobs) == len(tokens) == expected.shape[0] > 0
    for i, (token, logprob, top) in enumerate(zip(tokens, logprobs, tops)):
        assert abs(logprob - float(expected[i, token])) < 1e-5
        best = torch.topk(expected[i], len(top))
        assert list(top) == [offline.tokenizer.decode([t]) for t in best.indices.tolist()]
        assert max(abs(v - float(e)) for v, e in zip(top.values(), best.values)) < 1e-5


def test_logprobs_equal_a_log_softmax_of_the_offline_forward(lm_server, offline):
    """Completions (logprobs: 3) and chat (logprobs: true, top_logprobs: 2), streamed and not: greedy tokens,
    each with its logprob and top alternatives equal to the offline model's log-softmax (adapter a)."""
    prompt, vocab = "the cat sat on", offline.tokenizer.get_vocab()
    expected = offline("a", prompt, 8)
    with client(lm_server) as c:
        answer = complete(c, "a", prompt, logprobs=3)
        lp = answer["choices"][0]["logprobs"]
        assert [vocab[t] for t in lp["tokens"]] == expected
        assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:i]) for i in range(len(expected))]
        assert_logprobs_match(offline, "a", prompt, expected, lp["token_logprobs"], lp["top_logprobs"])
        chunks = sse_chunks(c, "/v1/completions", {"model": "a", "prompt": prompt, "temperature": 0, "max_tokens": 8,
                                                   "logprobs": 3})
        streamed = [chunk["choices"][0]["logprobs"] for chunk in chunks if chunk["choices"]]
        assert {k: [v for s in streamed for v in s[k]] for k in lp} == lp          # one token per chunk
        assert chunks[-1]["usage"]["completion_tokens"] == len(expected)

        messages = [{"role": "user", "content": prompt}]
        chat_ids = offline.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        chat_prompt = offline.tokenizer.decode(chat_ids)
        chat_expected = offline("a", chat_prompt, 6)
        body = {"model": "a", "messages": messages, "temperature": 0, "max_tokens": 6, "logprobs": True,
                "top_logprobs": 2}
        content = c.post("/v1/chat/completions", json=body).json()["choices"][0]["logprobs"]["content"]
        assert [vocab[e["token"]] for e in content] == chat_expected
        assert all(e["bytes"] == list(e["token"].encode()) and len(e["top_logprobs"]) == 2 for e in content)
        assert_logprobs_match(offline, "a", chat_prompt, chat_expected, [e["logprob"] for e in content],
                              [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in content])
        chunks = sse_chunks(c, "/v1/chat/completions", {**body, "stream_options": {"include_usage": False}})
        assert [e for chunk in chunks for e in chunk["choices"][0]["logprobs"]["content"]] == content
        assert all(chunk["choices"] for chunk in chunks)                          # no usage chunk asked
        assert complete(c, "a", prompt)["choices"][0]["logprobs"] is None


def test_penalties_equal_the_offline_decoder_and_change_the_output(lm_server, offline):
    prompt = "one two three"
    with client(lm_server) as c:
        plain = complete(c, "b", prompt, max_tokens=12)["choices"][0]["text"]
        for settings in ({"frequency_penalty": 1.5}, {"presence_penalty": 2.0}, {"repetition_penalty": 1.8},
                         {"frequency_penalty": -0.5, "presence_penalty": 0.7, "repetition_penalty": 1.2}):
            text = complete(c, "b", prompt, max_tokens=12, **settings)["choices"][0]["text"]
            expected = offline.decoded("b", prompt, SamplingParams(max_new_tokens=12, **settings))
            assert text.strip() == offline.decode(expected).strip(), settings
        strong = complete(c, "b", prompt, max_tokens=12, presence_penalty=2.0, frequency_penalty=2.0)
        assert strong["choices"][0]["text"] != plain


def test_sampling_seed_n_and_stop(lm_server):
    with client(lm_server) as c:
        body = {"model": "c", "prompt": "the cat", "temperature": 1.0, "top_p": 0.9, "top_k": 20, "max_tokens": 12,
                "seed": 11, "n": 3}
        first = c.post("/v1/completions", json=body).json()
        with concurrent.futures.ThreadPoolExecutor(4) as pool:          # the same seed amid other requests
            crowd = [pool.submit(complete, c, m, p) for m in ("a", "b") for p in PROMPTS]
            again = c.post("/v1/completions", json=body).json()
            [f.result() for f in crowd]
        texts = [ch["text"] for ch in first["choices"]]
        assert texts == [ch["text"] for ch in again["choices"]]
        assert [ch["index"] for ch in first["choices"]] == [0, 1, 2] and len(set(texts)) > 1
        greedy = complete(c, "a", "the cat sat on", max_tokens=10)["choices"][0]["text"]
        word = greedy.split()[2]
        stopped = complete(c, "a", "the cat sat on", max_tokens=10, stop=[word])["choices"][0]
        assert stopped["finish_reason"] == "stop" and stopped["text"] == greedy[:greedy.index(word)]
        two = c.post("/v1/completions", json={"model": "a", "prompt": ["one two", "the cat"], "n": 2,
                                              "temperature": 0, "max_tokens": 4}).json()
        assert [ch["index"] for ch in two["choices"]] == [0, 1, 2, 3]
        assert two["choices"][0]["text"] == two["choices"][1]["text"] != two["choices"][2]["text"]


def _events(response) -> list:
    lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line[6:]) for line in lines[:-1]]


def test_streaming_completions_and_chat(lm_server, offline):
    with client(lm_server) as c:
        body = {"model": "b", "prompt": "a big red dog ran", "temperature": 0, "max_tokens": 9}
        with c.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            events = _events(r)
        text = "".join(e["choices"][0]["text"] for e in events if e["choices"])
        assert text == c.post("/v1/completions", json=body).json()["choices"][0]["text"]
        assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 9
        assert events[-2]["choices"][0]["finish_reason"] == "length"
        chat = {"model": "a", "messages": [{"role": "system", "content": "be brief"},
                                           {"role": "user", "content": "what is your name"}],
                "temperature": 0, "max_tokens": 6}
        with c.stream("POST", "/v1/chat/completions", json={**chat, "stream": True}) as r:
            events = _events(r)
        assert events[0]["object"] == "chat.completion.chunk" and events[0]["choices"][0]["delta"]["role"] == "assistant"
        streamed = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
        whole = c.post("/v1/chat/completions", json=chat).json()
        assert whole["object"] == "chat.completion"
        assert whole["choices"][0]["message"] == {"role": "assistant", "content": streamed}
        assert whole["usage"]["prompt_tokens"] == 11     # <system> be brief </turn> <user> what is your name </turn> <assistant>


def test_client_disconnect_cancels_generation(lm_server):
    engine = lm_server.service.engine
    with client(lm_server) as c:
        with c.stream("POST", "/v1/completions", json={"model": "a", "prompt": "the cat", "max_tokens": 80,
                                                       "temperature": 0, "stream": True}) as r:
            next(r.iter_lines())                         # one chunk, then hang up mid-stream
        deadline = time.monotonic() + 20
        while (engine.decoder.row_ids or engine.decoder.waiting_ids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert engine.decoder.row_ids == [] and engine.queued == 0
        assert complete(c, "a", "the cat")["choices"][0]["finish_reason"] == "length"   # still serving
    assert any(name == "loralab_requests_total" and ("status", "499") in labels
               for name, labels in samples(lm_server.service.metrics.render()))


@pytest.mark.parametrize("body, status, fragment", [
    (b"{bad json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "must be a JSON object"),
    (("[" * 5000 + "]" * 5000).encode(), 400, None),
    ('{"model": "a", "prompt": "x", "user": ' + "[" * 40 + "]" * 40 + "}", 400, f"deeper than {MAX_JSON_DEPTH}"),
    (json.dumps({"prompt": "x"}), 400, "'model' is required"),
    (json.dumps({"model": "a", "prompt": 7}), 400, "'prompt' must be a string"),
    (json.dumps({"model": "a", "prompt": "x", "temperature": "hot"}), 400, "'temperature' must be a JSON number"),
    (json.dumps({"model": "a", "prompt": "x", "max_tokens": 10_000}), 400, "'max_tokens' must be between"),
    (json.dumps({"model": "a", "prompt": "x", "n": 99}), 400, "'n' must be between"),
    (json.dumps({"model": "a", "prompt": "x", "echo": True}), 400, "'echo': echoing the prompt is not supported"),
    (json.dumps({"model": "a", "prompt": "x", "stop": [""]}), 400, "'stop'"),
    (json.dumps({"model": "a", "prompt": "the " * 200}), 400, "--max-prompt-tokens"),
    (json.dumps({"model": "nope", "prompt": "x"}), 404, "does not exist"),
])
def test_error_paths_answer_openai_error_objects(start_server, lm_files, body, status, fragment):
    base, adapters = lm_files
    server = start_server(model=str(base), adapters=adapters, max_prompt_tokens=64, max_body_bytes=40_000)
    with client(server) as c:
        r = c.post("/v1/completions", content=body, headers={"content-type": "application/json"})
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
        assert fragment is None or fragment in error["message"]
        huge = c.post("/v1/completions", content=b'{"model": "a", "prompt": "' + b"x" * 50_000 + b'"}')
        assert huge.status_code == 400 and "larger than" in huge.json()["error"]["message"]
        unknown = c.get("/v1/nothing-here")
        assert unknown.status_code == 404 and "error" in unknown.json()
        assert c.get("/health").json()["status"] == "ok"


def test_api_key_and_draining(start_server, lm_files, monkeypatch):
    base, adapters = lm_files
    monkeypatch.setenv("LORALAB_API_KEY", "s3cret")
    server = start_server(model=str(base), adapters=adapters)
    with client(server) as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            r = c.get("/v1/models", headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert c.post("/v1/completions", json={"model": "a", "prompt": "x"}).status_code == 401
        ok = {"Authorization": "Bearer s3cret"}
        assert c.get("/v1/models", headers=ok).status_code == 200
        assert c.get("/health").status_code == 200 and c.get("/metrics").status_code == 200
        server.app.state.draining = True
        r = c.post("/v1/completions", json={"model": "a", "prompt": "x"}, headers=ok)
        assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down"
        assert c.get("/health").json()["status"] == "draining"


def test_full_queue_answers_429_with_retry_after(start_server, lm_files):
    base, adapters = lm_files
    server = start_server(model=str(base), adapters=adapters, max_queue=2, max_batch_size=1)
    gate = threading.Event()
    server.service.engine.post(gate.wait)              # the model thread waits: requests pile up in the queue
    with client(server) as c, concurrent.futures.ThreadPoolExecutor(2) as pool:
        waiting = [pool.submit(complete, c, "a", "the cat") for _ in range(2)]
        deadline = time.monotonic() + 20
        while server.service.engine.queued < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        r = c.post("/v1/completions", json={"model": "a", "prompt": "the cat"})
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["type"] == "rate_limit_error"
        gate.set()
        assert all(f.result()["choices"][0]["text"] for f in waiting)


def test_a_failing_step_fails_its_requests_and_the_server_goes_on(lm_server, monkeypatch):
    engine = lm_server.service.engine
    real_step = engine.decoder.step
    calls = []

    def broken():
        calls.append(1)
        raise RuntimeError("boom")
    monkeypatch.setattr(engine.decoder, "step", broken)
    with client(lm_server) as c:
        r = c.post("/v1/completions", json={"model": "a", "prompt": "the cat", "temperature": 0})
        assert r.status_code == 500 and r.json()["error"]["type"] == "internal_error" and calls
        assert engine.decoder.step != broken             # a fresh decoder replaced the failed batch
        assert complete(c, "a", "the cat")["choices"][0]["text"]
    del real_step


def test_hot_load_and_unload(start_server, lm_files, offline, tmp_path):
    base, adapters = lm_files
    root = tmp_path / "root"
    shutil.copytree(adapters["a"], root / "a2")
    shutil.copytree(adapters["c"], root / "big")
    (root / "broken").mkdir()
    (root / "broken" / "adapter_config.json").write_text("{not json")
    other = loralab.inject(tiny_model("llama", hidden_size=48), loralab.LoraConfig(r=2))   # another base's adapter
    loralab.save_adapter(other, root / "wrong-shape")
    server = start_server(model=str(base), adapters={"a": adapters["a"]}, adapter_root=root, max_adapters=3,
                          max_lora_rank=4, unload_timeout=1.5)
    expected = offline.decode(offline("a", "the cat sat on", 8)).strip()
    with client(server) as c:
        def load(name, path):
            return c.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)})
        assert load("a2", root / "a2").json()["status"] == "loaded"
        assert complete(c, "a2", "the cat sat on")["choices"][0]["text"].strip() == expected
        assert load("x", tmp_path).status_code == 403                           # outside the root
        assert load("x", root / ".." / "..").status_code == 403
        assert load("x", "a2").status_code == 200                               # relative to the root
        full = load("y", root / "a2")
        assert full.status_code == 400 and "--max-adapters" in full.json()["error"]["message"]
        c.post("/v1/unload_lora_adapter", json={"lora_name": "x"}).raise_for_status()
        for name, path, fragment in [("big", root / "big", "--max-lora-rank"), ("y", root / "broken", "has no adapter_model.safetensors"),
                                     ("a2", root / "a2", "already taken"), ("z", root / "missing", "does not exist"),
                                     ("w", root / "wrong-shape", "does not fit")]:
            r = load(name, path)
            assert r.status_code == 400 and fragment in r.json()["error"]["message"], (name, r.text)
        _unload_waits_for_running_requests(server, c, "a2")
        # "a2" is also a folder under the root: the adapter store loads it again on first use (issue 21)
        assert complete(c, "a2", "the cat sat on")["choices"][0]["text"].strip() == expected
        c.post("/v1/unload_lora_adapter", json={"lora_name": "a2"}).raise_for_status()
        assert c.post("/v1/completions", json={"model": "no-such-folder", "prompt": "x"}).status_code == 404
        assert c.post("/v1/unload_lora_adapter", json={"lora_name": "a2"}).status_code == 404
        assert [m["id"] for m in c.get("/v1/models").json()["data"]][1:] == ["a"]
        assert complete(c, "a", "the cat sat on")["choices"][0]["text"].strip() == expected
    closed = start_server(model=str(base), adapters={"a": adapters["a"]})        # no --adapter-root
    with client(closed) as c:
        r = c.post("/v1/load_lora_adapter", json={"lora_name": "a2", "lora_path": str(root / "a2")})
        assert r.status_code == 403 and "--adapter-root" in r.json()["error"]["message"]


def test_classify(start_server, classifier_files):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    base, adapters = classifier_files
    server = start_server(adapters=adapters, max_batch_size=4)
    texts = ["the cat sat on the mat", "red and blue", "one two three four five", "very bad", "hello", "dog"]
    with client(server) as c:
        assert [m["labels"] for m in c.get("/v1/models").json()["data"][1:]] == [
            ["negative", "neutral", "positive"], ["animals", "colours", "numbers"]]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            answers = dict(zip(["pos", "topic"], pool.map(
                lambda m: c.post("/v1/classify", json={"model": m, "input": texts}).json(), ["pos", "topic"])))
        assert c.post("/v1/classify", json={"model": "pos", "input": [["a", "b"]]}).status_code == 400
        assert c.post("/v1/completions", json={"model": "pos", "prompt": "x"}).status_code == 404
        assert c.post("/v1/classify", json={"model": "pos", "input": []}).status_code == 400
        untrained = c.post("/v1/classify", json={"model": server.service.base_name, "input": texts})
        assert untrained.status_code == 400 and untrained.json()["error"]["param"] == "model"
        assert untrained.json()["error"]["message"] == (
            f"{server.service.base_name!r} is the base model, whose classifier head is untrained (each adapter "
            "carries its own trained head and labels); send an adapter's name as 'model'")
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(base).eval()
    for name, path in adapters.items():
        loralab.load_adapter(model, path, adapter=name)
    for name, answer in answers.items():
        loralab.set_adapter(model, name)
        assert answer["usage"]["prompt_tokens"] == sum(len(tokenizer(t)["input_ids"]) for t in texts)
        for item, text in zip(answer["data"], texts):
            with torch.inference_mode():
                probs = torch.softmax(model(**tokenizer(text, return_tensors="pt")).logits[0], -1)
            got = torch.tensor(list(item["probs"].values()))
            torch.testing.assert_close(got, probs, rtol=0, atol=1e-5)
            assert item["label"] == list(item["probs"])[int(probs.argmax())]


def _unload_waits_for_running_requests(server, c: httpx.Client, name: str) -> None:
    """A request on `name` held at the model thread: unloading gives 409 after --unload-timeout; a second
    unload started while a request runs waits for it and then succeeds."""
    engine, gate = server.service.engine, threading.Event()

    def stream_lines() -> list[str]:
        with c.stream("POST", "/v1/completions", json={"model": name, "prompt": "the cat", "max_tokens": 6,
                                                       "temperature": 0, "stream": True}) as r:
            return [line for line in r.iter_lines() if line]

    def unload() -> httpx.Response:
        return c.post("/v1/unload_lora_adapter", json={"lora_name": name})

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        for attempt in ("refused", "waits"):
            gate.clear()
            engine.post(gate.wait)                       # the model thread waits: the request cannot finish
            running = pool.submit(stream_lines)
            deadline = time.monotonic() + 20
            while server.service.in_use.get(name, 0) < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            if attempt == "refused":
                busy = unload()                          # waits --unload-timeout, then 409; the adapter stays
                assert busy.status_code == 409 and busy.json()["error"]["code"] == "adapter_in_use"
                gate.set()
            else:
                waiting = pool.submit(unload)
                time.sleep(0.3)
                assert not waiting.done()
                gate.set()
                assert waiting.result().json()["status"] == "unloaded"
            assert running.result()[-1] == "data: [DONE]"


def test_classify_on_a_bf16_base_matches_fp32_and_bad_runtime_settings_are_one_line(start_server, classifier_files):
    """--dtype bf16 (the frozen base in bf16) and --quantize nf4 (its Linear weights in NF4), adapters and heads
    fp32: mixed-adapter batches stay close to fp32."""
    from loralab.quantization import QuantizedLinear
    from loralab.serving.settings import ServeSettings

    base, adapters = classifier_files
    texts = ["the cat sat on the mat", "red and blue", "one two three four five", "very bad"]
    answers = {}
    for dtype, quantize in (("fp32", "none"), ("bf16", "none"), ("fp32", "nf4")):
        server = start_server(adapters=adapters, max_batch_size=8, dtype=dtype, quantize=quantize, device="cpu")
        frozen = next(p for name, p in server.service.model.named_parameters() if "embeddings" in name)
        assert frozen.dtype == (torch.bfloat16 if dtype == "bf16" else torch.float32)
        quantized = [m for m in server.service.model.modules() if isinstance(m, QuantizedLinear)]
        assert len(quantized) == (13 if quantize == "nf4" else 0)     # q, k, v, o, MLP in, out × 2 layers, pooler
        with client(server) as c, concurrent.futures.ThreadPoolExecutor(2) as pool:
            answers[dtype, quantize] = list(pool.map(lambda m: c.post("/v1/classify", json={"model": m, "input": texts}).json(),
                                           ["pos", "topic"]))
        server.stop()
    for setting in (("bf16", "none"), ("fp32", "nf4")):
        for exact, other in zip(answers["fp32", "none"], answers[setting]):
            for a, b in zip(exact["data"], other["data"]):
                assert max(abs(a["probs"][k] - b["probs"][k]) for k in a["probs"]) < 0.02, setting
    if not torch.cuda.is_available():
        with pytest.raises(loralab.LoraLabError, match="^--device cuda: no CUDA GPU"):
            ServeSettings(adapters=adapters, device="cuda")
    with pytest.raises(loralab.LoraLabError, match="^unknown quantization 'fp4'; choose one of none, int8, nf4"):
        ServeSettings(adapters=adapters, quantize="fp4")
