"""Fuzzing `loralab serve`: random, malformed, huge and deeply nested bodies on every endpoint, sent
concurrently with valid requests and with clients killed mid-stream. No answer may be a 500, every error
is an OpenAI error object, and every valid request still gets exactly its own output."""
from __future__ import annotations

import concurrent.futures
import json
import random
import socket
import time

import httpx

ENDPOINTS = ("/v1/completions", "/v1/chat/completions", "/v1/classify", "/v1/load_lora_adapter",
             "/v1/unload_lora_adapter", "/v1/models")
FIELDS = ("model", "prompt", "messages", "max_tokens", "temperature", "top_p", "top_k", "n", "stop", "seed",
          "stream", "input", "lora_name", "lora_path", "logprobs", "best_of", "role", "content")


def random_value(rng: random.Random, depth: int = 0):
    kinds = ["int", "float", "str", "bool", "null"] + (["list", "dict"] if depth < 5 else [])
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.choice([0, -1, 1, 7, 2 ** 31, -2 ** 63, 2 ** 70])
    if kind == "float":
        return rng.choice([0.5, -3.25, 1e308, 1e-9, 2.0])
    if kind == "str":
        return rng.choice(["", "a", "b", "c", "base", "the cat", "\x00\ufffd\u202e", "../../etc", "x" * 3000])
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "list":
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(FIELDS): random_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def random_body(rng: random.Random) -> bytes:
    shape = rng.randrange(6)
    if shape == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
    if shape == 1:
        return ("[" * rng.randrange(1, 3000)).encode()
    if shape == 2:
        return json.dumps(random_value(rng)).encode()
    body = {name: random_value(rng) for name in rng.sample(FIELDS, rng.randrange(1, 7))}
    if shape >= 4:
        body["model"] = rng.choice(["a", "b", "base", "nope"])
        body.setdefault("prompt", "the cat")
        body["max_tokens"] = rng.choice([1, 3, body.get("max_tokens")])
    return json.dumps(body).encode()


def kill_mid_stream(url: str, body: dict) -> None:
    """Open a raw connection, read part of a streamed answer, and drop the socket without a goodbye."""
    host, port = url.removeprefix("http://").split(":")
    raw = json.dumps(body).encode()
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: " + str(len(raw)).encode() + b"\r\n\r\n" + raw)
        s.recv(200)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")   # RST on close


def test_fuzzed_concurrent_requests_never_crash_or_leak(start_server, lm_files):
    base, adapters = lm_files
    server = start_server(model=str(base), served_name="base", adapters=adapters, adapter_root=base.parent,
                          max_body_bytes=200_000, max_batch_size=8)
    rng = random.Random(0)
    valid = [{"model": m, "prompt": p, "temperature": 0, "max_tokens": 6}
             for m in ("a", "b", "c", "base") for p in ("the cat sat", "one two three")]
    with httpx.Client(base_url=server.url, timeout=120) as c:
        expected = [c.post("/v1/completions", json=v).json()["choices"][0]["text"] for v in valid]
        bodies = [(rng.choice(ENDPOINTS), random_body(rng)) for _ in range(150)]
        bodies.append(("/v1/completions", b'{"model": "a", "prompt": "' + b"y" * 400_000 + b'"}'))

        def fuzz(item):
            endpoint, body = item
            r = c.request("GET" if endpoint == "/v1/models" else "POST", endpoint, content=body,
                          headers={"content-type": "application/json"})
            return endpoint, r.status_code, r.headers.get("content-type", ""), r.content

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            fuzzed = pool.map(fuzz, bodies)
            answers = [pool.submit(lambda v=v: c.post("/v1/completions", json=v).json()) for v in valid * 2]
            kills = [pool.submit(kill_mid_stream, server.url, {"model": m, "prompt": "the cat", "stream": True,
                                                               "temperature": 0, "max_tokens": 50})
                     for m in ("a", "b", "c")]
            results = list(fuzzed)
            [k.result() for k in kills]
            got = [a.result()["choices"][0]["text"] for a in answers]
        assert got == expected * 2
        for endpoint, status, kind, content in results:
            assert status != 500, (endpoint, content[:300])
            if status != 200 and not kind.startswith("text/event-stream"):
                error = json.loads(content)["error"]
                assert set(error) == {"message", "type", "param", "code"}
        statuses = {s for _, s, _, _ in results}
        assert statuses - {200, 400, 403, 404} == set() and {200, 400, 404} <= statuses
        deadline = time.monotonic() + 30
        engine = server.service.engine
        while (engine.decoder.has_work or engine.queued) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not engine.decoder.has_work and engine.queued == 0
        assert c.get("/health").json()["status"] == "ok"
        again = [c.post("/v1/completions", json=v).json()["choices"][0]["text"] for v in valid]
        assert again == expected
