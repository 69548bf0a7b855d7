"""The engine's scheduling, without HTTP and without its thread: the test thread runs the model thread's loop
one turn at a time (`turn`), so every step is deterministic. Join at the next step, leave when finished,
cancel (waiting or running), the queue limit (429) and its count, arrival order between adapters, one mixed
forward for the rows of every adapter; the classifier engine's batches across requests and adapters."""
from __future__ import annotations

import pytest

from tests.serving.conftest import word_tokenizer

import loralab
from loralab.generation import SamplingParams
from loralab.serving.api import ApiError
from loralab.serving.engine import ClassifierEngine, ClassifyJob, GenerationEngine, GenerationJob
from loralab.serving.telemetry import Metrics
from loralab.testing import fill_adapter, tiny_model


class Sink:
    """What a request's coroutine would receive, in order."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def push(self, event: tuple) -> None:
        self.events.append(event)

    @property
    def tokens(self) -> list[int]:
        return [event[2].token_id for event in self.events if event[0] == "token"]


def turn(engine) -> None:
    """One turn of ModelWorker._loop: the posted tasks (submit, cancel), then one unit of work."""
    tasks = list(engine._inbox)
    engine._inbox.clear()
    for task in tasks:
        task()
    if engine.has_work():
        engine.work()


@pytest.fixture(scope="module")
def lm():
    tokenizer = word_tokenizer()
    model = tiny_model("llama", vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=2, pad_token_id=0)
    for i, name in enumerate(("a", "b")):
        loralab.inject(model, loralab.LoraConfig(r=2 + 2 * i, alpha=4), adapter=name)
        fill_adapter(model, name, seed=i, std=0.4)
    return model, tokenizer


def engine_for(lm, max_batch_size: int = 8, max_queue: int = 16) -> GenerationEngine:
    model, tokenizer = lm
    return GenerationEngine(model, tokenizer, max_batch_size=max_batch_size, max_queue=max_queue, metrics=Metrics())


def job(job_id: str, adapter: str | None, tokens: int, choices: int = 1, prompt: tuple = (1, 9, 10, 11)):
    """A greedy request of exactly `tokens` tokens per choice (EOS held back until then)."""
    params = SamplingParams(max_new_tokens=tokens, min_new_tokens=tokens)
    return GenerationJob(job_id, adapter, [list(prompt)] * choices, [params] * choices, Sink())


def alone(lm, adapter: str | None, tokens: int) -> list[int]:
    engine, request = engine_for(lm), job("alone", adapter, tokens)
    engine.submit(request)
    while engine._inbox or engine.has_work():
        turn(engine)
    return request.sink.tokens


def test_a_request_joins_at_the_next_step_and_gets_the_tokens_it_gets_alone(lm):
    engine, first, second = engine_for(lm), job("1", "a", 4), job("2", "b", 3)
    engine.submit(first)
    turn(engine)
    assert (len(first.sink.tokens), engine.decoder.row_ids) == (1, [("1", 0)])
    engine.submit(second)
    assert engine.queued == 1
    turn(engine)                                  # 1 decodes its second token, 2 joins and gets its first
    assert (len(first.sink.tokens), len(second.sink.tokens)) == (2, 1)
    assert engine.decoder.row_ids == [("1", 0), ("2", 0)] and engine.queued == 0
    while engine.has_work():
        turn(engine)
    assert first.sink.tokens == alone(lm, "a", 4) and second.sink.tokens == alone(lm, "b", 3)
    assert [e[2].finished for e in first.sink.events] == [False, False, False, True]


def test_a_finished_request_leaves_and_its_place_goes_to_the_next_waiting_one(lm):
    engine, first, second = engine_for(lm, max_batch_size=1), job("1", "a", 2), job("2", "b", 2)
    engine.submit(first)
    engine.submit(second)
    assert engine.queued == 2
    seen = []
    while engine._inbox or engine.has_work():
        turn(engine)
        seen.append((len(first.sink.tokens), len(second.sink.tokens), engine.decoder.row_ids, engine.queued))
    assert seen == [(1, 0, [("1", 0)], 1),        # a batch of one: 2 waits
                    (2, 1, [("2", 0)], 0),        # 1 finishes and leaves; 2 joins in the same step
                    (2, 2, [], 0)]
    assert engine._rows == {}


def test_cancel_removes_a_waiting_or_a_running_request_at_the_next_turn(lm):
    engine, running, waiting = engine_for(lm, max_batch_size=1), job("1", "a", 8), job("2", "b", 8)
    engine.submit(running)
    engine.submit(waiting)
    turn(engine)
    assert engine.decoder.waiting_ids == [("2", 0)] and engine.queued == 1
    engine.cancel("2")
    turn(engine)
    assert engine.queued == 0 and waiting.sink.events == [] and ("2", 0) not in engine.decoder
    got = len(running.sink.tokens)
    engine.cancel("1")
    turn(engine)
    assert len(running.sink.tokens) == got and not engine.has_work() and engine._rows == {}
    assert running.sink.events[-1][2].finished is False           # it was cut off, not finished


def test_the_queue_limit_counts_choices_and_refuses_with_429_until_rows_start(lm):
    engine = engine_for(lm, max_queue=3)
    engine.submit(job("1", "a", 2, choices=2))
    with pytest.raises(ApiError) as full:
        engine.submit(job("2", "b", 2, choices=2))
    error = full.value
    assert (error.status, error.message, error.type, error.code, error.headers) == (
        429, "the server's queue is full (2 waiting); retry shortly", "rate_limit_error", "queue_full",
        {"Retry-After": "1"})
    assert engine.queued == 2 and len(engine._inbox) == 1        # the refused request left nothing behind
    engine.submit(job("3", "b", 2))                               # one more choice still fits
    assert engine.queued == 3 and engine.metrics.value("loralab_queue_depth") == 3
    turn(engine)                                                  # all three rows start: the queue empties
    assert engine.queued == 0 and engine.metrics.value("loralab_queue_depth") == 0
    engine.submit(job("4", "a", 2, choices=2))
    assert engine.queued == 2


def test_requests_start_in_arrival_order_whatever_their_adapter(lm):
    """A request for a less used adapter is not passed over: waiting rows join in arrival order."""
    engine = engine_for(lm, max_batch_size=2)
    jobs = [job("a1", "a", 2), job("a2", "a", 2), job("a3", "a", 2), job("b1", "b", 2), job("base", None, 2)]
    for request in jobs[:4]:
        engine.submit(request)
    turn(engine)
    engine.submit(jobs[4])                   # arrives later than b1: must start after it
    started = []
    while engine._inbox or engine.has_work():
        turn(engine)
        started += [r.job_id for r in jobs if len(r.sink.tokens) == 1 and r.job_id not in started]
    assert ["a1", "a2", *started] == ["a1", "a2", "a3", "b1", "base"]
    assert all(len(r.sink.tokens) == 2 for r in jobs)


def test_rows_of_different_adapters_share_one_forward_and_each_gets_one_token_per_step(lm):
    engine = engine_for(lm)
    forwards: list[list[str | None]] = []
    context = engine.decoder.forward_context
    engine.decoder.forward_context = lambda ids: (forwards.append([engine._rows[i].adapter for i in ids]),
                                                  context(ids))[1]
    jobs = [job("1", "a", 3), job("2", "b", 3), job("3", None, 3)]
    for request in jobs:
        engine.submit(request)
    steps = 0
    while engine._inbox or engine.has_work():
        turn(engine)
        steps += 1
        assert {len(r.sink.tokens) for r in jobs} == {steps}      # every running row advanced by one
    # prefill and two decode steps, all mixed; ragged steps (this tiny LLaMA's) run the model's body with a joining
    # row once per token, then its head with one row per request
    mixed = ["a", "b", None]
    if engine.decoder.ragged:
        assert steps == 3 and forwards == [[n for n in mixed for _ in range(4)], *[mixed] * 5]
    else:
        assert steps == 3 and forwards == [mixed] * 3
    assert [r.sink.tokens for r in jobs] == [alone(lm, "a", 3), alone(lm, "b", 3), alone(lm, None, 3)]


# ---------------------------------------------------------------- classification
@pytest.fixture(scope="module")
def classifier():
    model = tiny_model("bert")
    for i, name in enumerate(("pos", "topic")):
        loralab.inject(model, loralab.LoraConfig(r=2, alpha=4), adapter=name)
        fill_adapter(model, name, seed=10 + i, std=0.4)
    return model


def classify_job(adapter: str | None, rows: int, first: int = 5) -> ClassifyJob:
    return ClassifyJob(adapter, [{"input_ids": [2, first + i, first + 2 * i + 1, 3]} for i in range(rows)], Sink())


def test_classify_rows_of_several_requests_and_adapters_fill_each_forward_in_arrival_order(classifier):
    engine = ClassifierEngine(classifier, pad_token_id=0, max_batch_size=3, max_queue=8, metrics=Metrics(),
                              regression=False)
    forwards = []
    forward = engine._forward
    engine._forward = lambda rows: (forwards.append([(job.adapter, i) for job, i in rows]), forward(rows))[1]
    jobs = [classify_job("pos", 2), classify_job("topic", 2, first=20), classify_job(None, 1, first=40)]
    for request in jobs:
        engine.submit(request)
    assert engine.queued == 5
    with pytest.raises(ApiError, match=r"^the server's queue is full \(5 waiting\); retry shortly$"):
        engine.submit(classify_job("pos", 4))
    turn(engine)
    assert engine.queued == 2 and [len(r.sink.events) for r in jobs] == [1, 0, 0]
    turn(engine)
    assert engine.queued == 0 and not engine.has_work()
    assert forwards == [[("pos", 0), ("pos", 1), ("topic", 0)], [("topic", 1), (None, 0)]]
    for request in jobs:                      # each row's probabilities are those of the row run alone
        (kind, probs), = request.sink.events
        assert kind == "done"
        for feature, got in zip(request.features, probs):
            single = ClassifierEngine(classifier, 0, 1, 1, Metrics(), regression=False)._forward(
                [(ClassifyJob(request.adapter, [feature], Sink()), 0)])[0]
            assert got == pytest.approx(single, abs=1e-6)
