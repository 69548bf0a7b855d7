"""The API boundary: text that is not valid Unicode (JSON's \\uXXXX escapes can spell lone surrogates) and
paths with NUL are a 400 naming the field, on every endpoint; max_completion_tokens is checked, and named
in errors, as itself."""
from __future__ import annotations

import json
from pathlib import Path

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


# ---- the field table ---------------------------------------------------------------------------------
def generation(body: dict, chat: bool = False) -> api.GenerationRequest:
    base = {"model": "a", "messages": [{"role": "user", "content": "hi"}]} if chat else {"model": "a", "prompt": "x"}
    return api.generation_request({**base, **body}, chat, LIMITS)


@pytest.mark.parametrize("body, chat, param, message", [
    ({"response_format": {"type": "json_object"}}, True, "response_format",
     "'response_format': only {\"type\": \"text\"} is supported (no JSON mode or schema) by this server"),
    ({"logit_bias": {"5": 10}}, False, "logit_bias", "'logit_bias': logit_bias is not supported by this server"),
    ({"echo": True}, False, "echo", "'echo': echoing the prompt is not supported by this server"),
    ({"suffix": "end"}, False, "suffix", "'suffix': suffix (insertion) is not supported by this server"),
    ({"tools": [{"type": "function"}]}, True, "tools", "'tools': tool calls are not supported by this server"),
    ({"tool_choice": "required"}, True, "tool_choice", "'tool_choice': tool calls are not supported by this server"),
    ({"modalities": ["text", "audio"]}, True, "modalities", "'modalities': only text output is supported by this server"),
    ({"ignore_eos": True}, False, "ignore_eos", "'ignore_eos' is not a field this server knows for /v1/completions; "
                                                "docs/serving.md lists the fields it takes"),
    ({"top_logprobs": 2}, False, "top_logprobs", "'top_logprobs' is a field of /v1/chat/completions, not of "
                                                 "/v1/completions"),
    ({"top_logprobs": 2}, True, "top_logprobs", "'top_logprobs' needs 'logprobs': true"),
    ({"logprobs": 21}, False, "logprobs", "'logprobs' must be between 0 and 20, got 21"),
    ({"logprobs": 2}, True, "logprobs", "'logprobs' must be a JSON boolean, got 2"),
    ({"frequency_penalty": 2.5}, False, "frequency_penalty", "'frequency_penalty' must be between -2 and 2, got 2.5"),
    ({"presence_penalty": -3}, True, "presence_penalty", "'presence_penalty' must be between -2 and 2, got -3"),
    ({"repetition_penalty": 0}, False, "repetition_penalty",
     "'repetition_penalty' must be above 0 and at most 100 (1 is off), got 0.0"),
    ({"min_tokens": 9, "max_tokens": 8}, False, "min_tokens", "'min_tokens' must be between 0 and 8, got 9"),
    ({"stream": True, "stream_options": {"continuous_usage_stats": True}}, False, "stream_options",
     "'stream_options.continuous_usage_stats' is not supported; only include_usage is"),
    ({"stream_options": {"include_usage": True}}, False, "stream_options",
     "'stream_options' is only allowed with 'stream': true"),
    ({"user": 7}, False, "user", "'user' must be a JSON string, got 7"),
    ({"metadata": "x"}, True, "metadata", "'metadata' must be a JSON object, got \"x\""),
])
def test_fields_that_would_change_the_output_are_refused_naming_them(body, chat, param, message):
    error = refused(generation, body, chat)
    assert (error.param, error.message) == (param, message)


def test_neutral_values_of_refused_fields_and_bookkeeping_fields_are_accepted():
    plain = generation({})
    neutral = {"echo": False, "suffix": None, "logit_bias": {}, "user": "u-1", "metadata": {"k": "v"},
               "store": False, "service_tier": "auto", "safety_identifier": "s", "prompt_cache_key": "p"}
    assert generation(neutral) == plain
    chat_plain = generation({}, chat=True)
    assert generation({"response_format": {"type": "text"}, "tools": [], "tool_choice": "none", "modalities": ["text"],
                       "parallel_tool_calls": True, "user": "u", "logprobs": False}, chat=True) == chat_plain


def test_honoured_fields_reach_sampling_params():
    req = generation({"frequency_penalty": 0.5, "presence_penalty": -1, "repetition_penalty": 1.2, "min_tokens": 3,
                      "max_tokens": 9, "logprobs": 4, "temperature": 0, "top_k": 5})
    params = req.sampling(0, req.max_tokens)
    assert (params.frequency_penalty, params.presence_penalty, params.repetition_penalty, params.min_new_tokens,
            params.logprobs, params.top_k) == (0.5, -1.0, 1.2, 3, 4, 5)
    assert generation({"logprobs": 0}).logprobs == 0 and generation({}).logprobs is None
    assert generation({"logprobs": True, "top_logprobs": 3}, chat=True).logprobs == 3
    assert generation({"logprobs": True}, chat=True).logprobs == 0
    assert generation({"logprobs": False}, chat=True).logprobs is None
    assert not generation({"stream": True, "stream_options": {"include_usage": False}}).include_usage
    assert generation({"stream": True}).include_usage


def test_the_docs_field_table_is_the_code_s():
    docs = (Path(__file__).resolve().parents[2] / "docs" / "serving.md").read_text(encoding="utf-8")
    assert api.fields_markdown() in docs
    assert {"frequency_penalty", "logprobs", "response_format", "user", "metadata"} <= set(api.FIELDS)


def test_logprobs_objects_have_openais_shapes():
    tokens = [api.TokenLogprob("the", -0.5, (("the", -0.5), ("a", -1.25))),
              api.TokenLogprob(" é", float("-inf"), ())]
    assert api.completion_logprobs(tokens, 4) == {
        "tokens": ["the", " é"], "token_logprobs": [-0.5, -9999.0],
        "top_logprobs": [{"the": -0.5, "a": -1.25}, {}], "text_offset": [4, 7]}
    assert api.chat_logprobs(tokens) == {"content": [
        {"token": "the", "logprob": -0.5, "bytes": [116, 104, 101], "top_logprobs": [
            {"token": "the", "logprob": -0.5, "bytes": [116, 104, 101]},
            {"token": "a", "logprob": -1.25, "bytes": [97]}]},
        {"token": " é", "logprob": -9999.0, "bytes": [32, 195, 169], "top_logprobs": []}], "refusal": None}
