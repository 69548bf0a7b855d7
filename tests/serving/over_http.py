"""What the server tests share to talk to a running server over loopback HTTP (the `start_server` fixture of
conftest.py starts one): a client, a greedy completion, a streamed completion's lines and text, a bounded
wait for a condition, and /metrics parsed with prometheus_client's parser."""
from __future__ import annotations

import json
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families


def client(server, **kw) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=60, **kw)


def complete(c: httpx.Client, model: str, prompt: str, **kw) -> dict:
    """A greedy completion (8 tokens unless kw says otherwise); asserts 200."""
    r = c.post("/v1/completions", json={"model": model, "prompt": prompt, "temperature": 0, "max_tokens": 8, **kw})
    assert r.status_code == 200, r.text
    return r.json()


def wait_until(condition, what: str) -> None:
    """Poll `condition` until it holds; fail naming `what` after 30 s (a hang, not a timing assertion)."""
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def stream_lines(c: httpx.Client, model: str, prompt: str, max_tokens: int) -> list[str]:
    """The non-empty server-sent-event lines of a greedy streamed completion, [DONE] included."""
    with c.stream("POST", "/v1/completions", json={"model": model, "prompt": prompt, "max_tokens": max_tokens,
                                                   "temperature": 0, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        return [line for line in r.iter_lines() if line]


def streamed_text(lines: list[str]) -> str:
    """The text of `stream_lines`' events (the last line, [DONE], carries none)."""
    events = [json.loads(line[6:]) for line in lines[:-1]]
    return "".join(e["choices"][0]["text"] for e in events if e["choices"])


def samples(exposition: str) -> dict[tuple[str, frozenset], float]:
    """Prometheus text parsed by prometheus_client: {(sample name, frozenset of (label, value)): value}."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(exposition) for s in family.samples}


def sample(exposition: str, name: str, **labels: str) -> float | None:
    """One sample's value in a Prometheus text (None when absent)."""
    return samples(exposition).get((name, frozenset(labels.items())))
