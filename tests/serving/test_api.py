"""The API boundary: text that is not valid Unicode (JSON's \\uXXXX escapes can spell lone surrogates) and
paths with NUL are a 400 naming the field, on every endpoint; max_completion_tokens is checked, and named
in errors, as itself."""
from __future__ import annotations

import json

import httpx
import pytest

from loralab.serving import api
from loralab.serving.api import ApiError
from loralab.serving.settings import ServeSettings

LIMITS = ServeSettings(model="m")


def refused(fn, *args) -> ApiError:
    with pytest.raises(ApiError) as caught:
        fn(*args)
    assert caught.value.status == 400
    return caught.value


@pytest.mark.parametrize("body, param, where, at", [
    ({"model": "a", "prompt": "the \ud800 cat"}, "prompt", "prompt", 4),
    ({"model": "a", "prompt": ["ok", "\udfff"]}, "prompt", "prompt[1]", 0),
    ({"model": "a", "messages": [{"role": "user", "content": "hi \ud800"}]}, "messages", "messages[0].content", 3),
    ({"model": "pos", "input": [["fine", "\ud800"]]}, "input", "input[0][1]", 0),
    ({"lora_name": "x", "lora_path": "/srv/\ud800"}, "lora_path", "lora_path", 5),
    ({"lora_name": "\ud800"}, "lora_name", "lora_name", 0),
    ({"model": "\udc80"}, "model", "model", 0),
    ({"model": "a", "user": {"\ud800": 1}}, "user", "user key \\ud800", 0),
])
def test_lone_surrogates_anywhere_in_a_body_are_a_400_naming_the_field(body, param, where, at):
    error = refused(api.parse_body, json.dumps(body).encode())
    char = next(c for c in json.dumps(body).encode().decode("unicode_escape") if 0xD800 <= ord(c) <= 0xDFFF)
    assert error.param == param
    assert error.message == (f"'{where}' is not valid Unicode text: a lone surrogate {char!r} at character {at}; "
                             "send UTF-8 text")
    json.dumps(error.body(), ensure_ascii=False).encode()    # the answer itself can be sent


def test_a_nul_in_a_path_is_a_400():
    error = refused(api.path_field, {"lora_path": "adapters/a\x00b"}, "lora_path")
    assert (error.param, error.message) == ("lora_path", "'lora_path' holds a NUL character at position 10; no path has one")
    assert api.path_field({"lora_path": "adapters/ü"}, "lora_path") == "adapters/ü"


@pytest.mark.parametrize("extra, field, tokens", [
    ({}, "max_tokens", LIMITS.max_tokens),
    ({"max_completion_tokens": 3}, "max_completion_tokens", 3),
    ({"max_tokens": 5}, "max_tokens", 5),
    ({"max_tokens": 4, "max_completion_tokens": 4}, "max_completion_tokens", 4),
    ({"max_completion_tokens": None}, "max_tokens", LIMITS.max_tokens),
])
def test_chat_takes_max_completion_tokens_or_max_tokens(extra, field, tokens):
    req = api.generation_request({"model": "a", "messages": [], **extra}, chat=True, limits=LIMITS)
    assert (req.max_tokens_field, req.max_tokens) == (field, tokens)


@pytest.mark.parametrize("extra, message", [
    ({"max_completion_tokens": 0}, "'max_completion_tokens' must be between 1 and 512, got 0"),
    ({"max_completion_tokens": 10_000}, "'max_completion_tokens' must be between 1 and 512, got 10000"),
    ({"max_completion_tokens": "8"}, "'max_completion_tokens' must be a JSON integer, got \"8\""),
    ({"max_tokens": 0}, "'max_tokens' must be between 1 and 512, got 0"),
    ({"max_tokens": 4, "max_completion_tokens": 5}, "'max_completion_tokens' (5) and 'max_tokens' (4) differ; "
                                                     "send one of them"),
])
def test_max_completion_tokens_is_checked_under_its_own_name(extra, message):
    error = refused(api.generation_request, {"model": "a", "messages": [], **extra}, True, LIMITS)
    assert error.message == message
    assert error.param == ("max_tokens" if "max_completion_tokens" not in extra else "max_completion_tokens")


def test_over_http_bad_text_and_paths_are_400_and_the_context_error_names_the_field(start_server, lm_files, tmp_path):
    base, adapters = lm_files
    server = start_server(model=str(base), adapters=adapters, adapter_root=tmp_path)
    headers = {"content-type": "application/json"}
    bodies = {"/v1/completions": ({"model": "a", "prompt": "the \ud800"}, "prompt"),
              "/v1/chat/completions": ({"model": "a", "messages": [{"role": "user", "content": "\ud800"}]},
                                       "messages"),
              "/v1/load_lora_adapter": ({"lora_name": "x", "lora_path": "\ud800"}, "lora_path")}
    with httpx.Client(base_url=server.url, timeout=60) as c:
        for path, (body, param) in bodies.items():
            r = c.post(path, content=json.dumps(body), headers=headers)
            assert r.status_code == 400 and r.json()["error"]["param"] == param, (path, r.text)
        for body, param in (({"lora_name": "x", "lora_path": "a\x00b"}, "lora_path"),
                            ({"lora_name": "\ud800", "lora_path": "a"}, "lora_name")):
            r = c.post("/v1/load_lora_adapter", content=json.dumps(body), headers=headers)
            assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
        chat = {"model": "a", "messages": [{"role": "user", "content": "the cat"}], "temperature": 0}
        r = c.post("/v1/chat/completions", json={**chat, "max_completion_tokens": 0})
        assert r.status_code == 400 and r.json()["error"]["param"] == "max_completion_tokens"
        r = c.post("/v1/chat/completions", json={**chat, "max_completion_tokens": 95})
        assert r.status_code == 400 and r.json()["error"]["param"] == "max_completion_tokens"
        assert r.json()["error"]["message"] == ("this model's context is 96 tokens, but the prompt (5) plus "
                                                "max_completion_tokens (95) needs 100")
        three = c.post("/v1/chat/completions", json={**chat, "max_completion_tokens": 3}).json()
        assert three["usage"]["completion_tokens"] == 3
        assert three["choices"][0] == c.post("/v1/chat/completions", json={**chat, "max_tokens": 3}).json()["choices"][0]


def test_over_http_bad_classify_input_is_400(start_server, classifier_files):
    _, adapters = classifier_files
    server = start_server(adapters=adapters)
    with httpx.Client(base_url=server.url, timeout=60) as c:
        r = c.post("/v1/classify", content=json.dumps({"model": "pos", "input": ["fine", "bad \ud800"]}),
                   headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "input"
        assert r.json()["error"]["message"].startswith("'input[1]' is not valid Unicode text")
        assert c.post("/v1/classify", json={"model": "pos", "input": "fine"}).status_code == 200
