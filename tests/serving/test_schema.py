"""The pydantic request models (loralab.serving.schema): built from api.FIELDS, so the OpenAPI schema lists
exactly the table's fields with their required-ness, JSON types and meanings; every kind of validation error
FastAPI finds is answered with OpenAI's error object (400, never 422) naming the field."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.serving.over_http import client

from loralab.serving import api, schema
from loralab.serving.app import create_app
from loralab.serving.settings import ServeSettings


@pytest.fixture(scope="module")
def openapi() -> dict:
    """The app's OpenAPI document (the routes need no model to be described)."""
    return create_app(SimpleNamespace()).openapi()


def _properties(openapi: dict, endpoint: str) -> tuple[dict, set]:
    ref = openapi["paths"][endpoint]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    model = openapi["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert ref.endswith(schema.MODEL_NAMES[endpoint]) and model["additionalProperties"] is False
    return model["properties"], set(model.get("required", ()))


@pytest.mark.parametrize("endpoint", api.ENDPOINTS)
def test_openapi_lists_exactly_the_field_table_s_fields(openapi, endpoint):
    properties, required = _properties(openapi, endpoint)
    expected = {name for name, rule in api.FIELDS.items() if endpoint in rule.endpoints}
    assert set(properties) == expected
    assert required == {name for name in expected if api.FIELDS[name].required}
    for name in expected:
        assert properties[name]["description"] == f"{api.FIELDS[name].handling}: {api.FIELDS[name].meaning}"


def test_openapi_types_follow_the_field_kinds(openapi):
    completions, _ = _properties(openapi, api.COMPLETIONS)
    chat, required = _properties(openapi, api.CHAT)
    assert {"model", "messages"} == required
    assert {"type": "integer"} in completions["max_tokens"]["anyOf"] and {"type": "null"} in \
        completions["max_tokens"]["anyOf"]
    assert {"type": "integer"} in completions["logprobs"]["anyOf"]          # the legacy API: top tokens
    assert {"type": "boolean"} in chat["logprobs"]["anyOf"]                 # chat: true / false
    assert {"type": "integer"} in completions["temperature"]["anyOf"] and {"type": "number"} in \
        completions["temperature"]["anyOf"]
    assert completions["model"]["type"] == "string"
    assert set(openapi["paths"]) >= {*api.ENDPOINTS, "/v1/models"}


LIMITS = ServeSettings(model="m")


def test_a_pydantic_only_error_is_worded_from_its_location():
    """Where api's checkers find nothing (they never look inside messages), the 400 names the place."""
    body = {"model": "a", "messages": ["hi"]}
    with pytest.raises(Exception) as caught:
        schema.ChatCompletionRequest.model_validate(body)
    error = schema.validation_error(caught.value.errors(), body, api.CHAT, LIMITS)
    assert (error.status, error.param) == (400, "messages")
    assert error.message.startswith("'messages[0]': Input should be a valid dictionary") and '"hi"' in error.message


# (endpoint, body, param, message: exact, or the start of it when it ends with "...")
ERRORS = [
    # missing required fields
    (api.COMPLETIONS, {"prompt": "x"}, "model", "'model' is required"),
    (api.COMPLETIONS, {"model": "a"}, "prompt", "'prompt' must be a string or a non-empty list of strings ..."),
    (api.CHAT, {"model": "a"}, "messages", "'messages' is required"),
    (api.CLASSIFY, {"model": "a"}, "input", "'input' must be a string or a non-empty list ..."),
    (api.LOAD, {"lora_name": "x"}, "lora_path", "'lora_path' is required"),
    (api.UNLOAD, {}, "lora_name", "'lora_name' is required"),
    # wrong JSON types (strict: no "1" for 1, no true for a number)
    (api.COMPLETIONS, {"model": "a", "prompt": "x", "temperature": "hot"}, "temperature",
     "'temperature' must be a JSON number, got \"hot\""),
    (api.COMPLETIONS, {"model": "a", "prompt": "x", "max_tokens": 1.5}, "max_tokens",
     "'max_tokens' must be a JSON integer, got 1.5"),
    (api.COMPLETIONS, {"model": "a", "prompt": "x", "top_p": True}, "top_p", "'top_p' must be a JSON number, got true"),
    (api.CHAT, {"model": "a", "messages": [], "stream": "yes"}, "stream", "'stream' must be a JSON boolean, got \"yes\""),
    (api.COMPLETIONS, {"model": "a", "prompt": [1, 2]}, "prompt", "'prompt' must be a string or a non-empty list ..."),
    (api.COMPLETIONS, {"model": 7, "prompt": "x"}, "model", "'model' must be a JSON string, got 7"),
    (api.UNLOAD, {"lora_name": ["x"]}, "lora_name", "'lora_name' must be a JSON string, got [\"x\"]"),
    (api.CLASSIFY, {"model": "a", "input": [["a", "b", "c"]]}, "input",
     "each input must be a string or a [text, text_pair] pair of strings"),
    # fields the endpoint does not take
    (api.COMPLETIONS, {"model": "a", "prompt": "x", "ignore_eos": True}, "ignore_eos",
     "'ignore_eos' is not a field this server knows for /v1/completions; docs/serving.md lists the fields it takes"),
    (api.COMPLETIONS, {"model": "a", "prompt": "x", "input": "x"}, "input",
     "'input' is a field of /v1/classify, not of /v1/completions"),
    (api.CLASSIFY, {"model": "a", "input": "x", "temperature": 0}, "temperature",
     "'temperature' is a field of /v1/completions, not of /v1/classify"),
    (api.LOAD, {"lora_name": "x", "lora_path": "y", "force": True}, "force",
     "'force' is not a field this server knows for /v1/load_lora_adapter; docs/serving.md lists the fields it takes"),
    # refused values and nested objects
    (api.COMPLETIONS, {"model": "a", "prompt": "x", "echo": True}, "echo",
     "'echo': echoing the prompt is not supported by this server"),
    (api.CHAT, {"model": "a", "messages": [], "tools": [{"type": "function"}]}, "tools",
     "'tools': tool calls are not supported by this server"),
    (api.COMPLETIONS, {"model": "a", "prompt": "x", "stream": True, "stream_options": {"chunks": 1}}, "stream_options",
     "'stream_options.chunks' is not supported; only include_usage is"),
    (api.COMPLETIONS, {"model": "a", "prompt": "x", "stream": True, "stream_options": {"include_usage": "no"}},
     "stream_options", "'stream_options.include_usage' must be a JSON boolean, got \"no\""),
    (api.CHAT, {"model": "a", "messages": [3]}, "messages", "'messages[0]': Input should be a valid dictionary ..."),
]


def _check(c, endpoint: str, body: dict, param: str, message: str) -> None:
    r = c.post(endpoint, json=body)
    assert r.status_code == 400, (endpoint, body, r.text)
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert error["param"] == param, (body, error)
    if message.endswith("..."):
        assert error["message"].startswith(message[:-3].rstrip()), (body, error)
    else:
        assert error["message"] == message, (body, error)


def test_every_kind_of_validation_error_is_an_openai_error_object(start_server, lm_files, classifier_files):
    _, classifiers = classifier_files
    with client(start_server(adapters=classifiers)) as c:       # /v1/classify exists on a classifier server only
        for endpoint, body, param, message in ERRORS:
            if endpoint == api.CLASSIFY:
                _check(c, endpoint, body, param, message)
    base, adapters = lm_files
    server = start_server(model=str(base), adapters=adapters, adapter_root=base.parent, api_key="k3y")
    auth = {"Authorization": "Bearer k3y"}
    with client(server, headers=auth) as c:
        for endpoint, body, param, message in ERRORS:
            if endpoint != api.CLASSIFY:
                _check(c, endpoint, body, param, message)
        r = c.post(api.COMPLETIONS, content=b'{"model": "a", "prompt": "x"}', headers={"content-type": "text/plain"})
        assert r.status_code == 400 and "Content-Type: application/json" in r.json()["error"]["message"]
        r = c.post(api.COMPLETIONS, json=[1])
        assert r.status_code == 400 and r.json()["error"]["message"] == "the body must be a JSON object, got list"
        valid = c.post(api.COMPLETIONS, json={"model": "a", "prompt": "the cat", "max_tokens": 2, "temperature": 0,
                                              "user": "u", "echo": False, "stream_options": None})
        assert valid.status_code == 200, valid.text
        assert c.post(api.CLASSIFY, json={"model": "a", "input": "x"}).json()["error"]["code"] == "wrong_endpoint"
        # the schema is public, like /health; the endpoints it describes still need the key
        assert c.get("/openapi.json", headers={"Authorization": ""}).status_code == 200
        assert c.post(api.COMPLETIONS, json={"prompt": 1}, headers={"Authorization": ""}).status_code == 401
