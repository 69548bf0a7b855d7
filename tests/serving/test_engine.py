"""The engine: what fails for one request fails that request alone. A generation row whose own work raises,
a request whose adapter is gone from the model, a classify request whose rows break a mixed forward: that
request gets an error object, the others in the same batch get every token and their [DONE]."""
from __future__ import annotations

import concurrent.futures
import threading

import httpx
import pytest
from torch import nn

from tests.serving.over_http import stream_lines, streamed_text, wait_until

import loralab


def one_batch(server, c: httpx.Client, break_it) -> tuple[list[str], httpx.Response, str]:
    """A stream on a (12 tokens) and a request on b start in one batch after `break_it()` ran on the model
    thread; returns (a's stream lines, b's response, a's text when run alone)."""
    engine, gate = server.service.engine, threading.Event()
    alone = streamed_text(stream_lines(c, "a", "the cat", 12))
    engine.post(gate.wait)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        stream_a = pool.submit(stream_lines, c, "a", "the cat", 12)
        request_b = pool.submit(c.post, "/v1/completions", json={"model": "b", "prompt": "one two three",
                                                                 "max_tokens": 6, "temperature": 0})
        wait_until(lambda: engine.queued == 2, "the two requests did not reach the engine")
        engine.post(break_it)
        gate.set()
        return stream_a.result(), request_b.result(), alone


def assert_whole_stream(lines: list[str], alone: str) -> None:
    assert lines[-1] == "data: [DONE]" and streamed_text(lines) == alone
    assert sum(line.startswith("data: {") for line in lines) == 12 + 1          # every token and the usage


@pytest.fixture
def lm_server(start_server, lm_files):
    base, adapters = lm_files
    return start_server(model=str(base), served_name="base", adapters=adapters)


def test_a_row_whose_postprocessing_fails_ends_its_request_alone(lm_server, monkeypatch):
    engine = lm_server.service.engine

    def break_b() -> None:
        report = engine.decoder._report

        def failing(row, token, position, *logprobs):
            if engine._rows[row.request_id].adapter == "b":
                raise ValueError("cannot detokenise")
            return report(row, token, position, *logprobs)
        monkeypatch.setattr(engine.decoder, "_report", failing)
    with httpx.Client(base_url=lm_server.url, timeout=60) as c:
        lines, answer, alone = one_batch(lm_server, c, break_b)
        assert answer.status_code == 500
        assert answer.json()["error"] == {
            "message": "the server failed on this request (ValueError: cannot detokenise); it was dropped, the other "
                       "requests went on", "type": "internal_error", "param": None, "code": "internal_error"}
        assert_whole_stream(lines, alone)
        wait_until(lambda: not engine.decoder.has_work, "rows were left in the decoder")
        assert engine.queued == 0 and engine._rows == {}
        assert c.post("/v1/completions", json={"model": "a", "prompt": "the cat"}).status_code == 200


def test_a_request_whose_adapter_left_the_model_fails_alone(lm_server):
    """Deleting b on the model thread behind the service's back (only a bug could): b's request fails at the
    next step's check, a's stream in the same batch is untouched."""
    model = lm_server.service.model
    with httpx.Client(base_url=lm_server.url, timeout=60) as c:
        lines, answer, alone = one_batch(lm_server, c, lambda: loralab.delete_adapter(model, "b"))
        assert answer.status_code == 500
        assert answer.json()["error"]["message"] == (
            "the server failed on this request (LookupError: adapter 'b' is not loaded on the model); it was "
            "dropped, the other requests went on")
        assert_whole_stream(lines, alone)


def test_a_classify_request_that_breaks_a_mixed_forward_fails_alone(start_server, classifier_files, monkeypatch):
    base, adapters = classifier_files
    server = start_server(adapters=adapters, max_batch_size=8)
    engine, gate = server.service.engine, threading.Event()
    texts = ["the cat sat on the mat", "red and blue"]
    forward = engine._forward

    def failing(rows):
        if any(job.adapter == "topic" for job, _ in rows):
            raise RuntimeError("bad rows")
        return forward(rows)
    with httpx.Client(base_url=server.url, timeout=60) as c:
        alone = c.post("/v1/classify", json={"model": "pos", "input": texts}).json()["data"]
        monkeypatch.setattr(engine, "_forward", failing)
        engine.post(gate.wait)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            pos = pool.submit(c.post, "/v1/classify", json={"model": "pos", "input": texts})
            topic = pool.submit(c.post, "/v1/classify", json={"model": "topic", "input": texts})
            wait_until(lambda: engine.queued == 4, "the two requests did not reach the engine")
            gate.set()
            pos, topic = pos.result(), topic.result()
    assert topic.status_code == 500 and "RuntimeError: bad rows" in topic.json()["error"]["message"]
    assert pos.status_code == 200
    for got, want in zip(pos.json()["data"], alone):
        assert got["label"] == want["label"] and got["probs"] == pytest.approx(want["probs"], abs=1e-5)
    assert engine.queued == 0


def test_the_engine_decodes_with_packed_linears_unless_turned_off(start_server, lm_files):
    """The model thread's forwards run the base's nn.Linear layers through oneDNN's packed kernel (one packed copy
    for every decoder the engine makes); --no-packed-linears gives the same greedy text with torch's kernel."""
    from loralab.generation.packed import packing_available

    base, adapters = lm_files
    on = start_server(model=str(base), served_name="base", adapters=adapters)
    off = start_server(model=str(base), served_name="base", adapters=adapters, packed_linears=False)
    engine = on.service.engine
    assert off.service.engine.packed.layers == 0
    if not packing_available():
        assert engine.packed.layers == 0
        return
    linears = [m for m in on.service.model.modules() if type(m) is nn.Linear]
    assert engine.packed.layers == len(linears) > 0 and engine.decoder.packed is engine.packed
    texts = {}
    for server in (on, off):
        with httpx.Client(base_url=server.url, timeout=60) as c:
            texts[server is on] = [c.post("/v1/completions", json={"model": model, "prompt": "the cat sat",
                                                                   "max_tokens": 8, "temperature": 0}).json()
                                   ["choices"][0]["text"] for model in ("base", *adapters)]
    assert texts[True] == texts[False] and len(set(texts[True])) > 1
    assert engine.packed.packed_bytes() > 0                 # packed on the first request


def test_ragged_steps_on_by_default_give_the_text_of_the_decode_then_prefill_path(start_server, lm_files):
    """This tiny LLaMA's joining requests are prefilled in the running rows' forward (loralab.generation.ragged);
    --no-ragged-steps prefills them apart: the same greedy text for the base and every adapter, requests at once."""
    base, adapters = lm_files
    on = start_server(model=str(base), served_name="base", adapters=adapters)
    off = start_server(model=str(base), served_name="base", adapters=adapters, ragged_steps=False)
    assert on.service.engine.decoder.ragged and not off.service.engine.decoder.ragged
    texts = {}
    for server in (on, off):
        with httpx.Client(base_url=server.url, timeout=60) as c, concurrent.futures.ThreadPoolExecutor(6) as pool:
            bodies = [{"model": model, "prompt": prompt, "max_tokens": 8, "temperature": 0}
                      for model in ("base", *adapters) for prompt in ("the cat sat", "a dog ran far away")]
            texts[server is on] = list(pool.map(
                lambda body: c.post("/v1/completions", json=body).json()["choices"][0]["text"], bodies))
    assert texts[True] == texts[False] and len(set(texts[True])) > 2
