"""The request bodies as pydantic models, built from api.FIELDS (the one list of fields): FastAPI validates
every body against its endpoint's model, and the OpenAPI schema (/openapi.json, /docs) describes them.

    REQUEST_MODELS["/v1/completions"]       # CompletionRequest: model, prompt, max_tokens, ... (extra: refused)
    validation_error(exc.errors(), body, "/v1/completions", settings)   # -> api.ApiError (OpenAI's 400)

A model checks what a JSON schema can say: which fields exist (any other is a 400), which are required,
each field's JSON type (strict: "1" is no integer, true is no number), and that refused fields carry their
neutral value. The rules that need the server's limits or several fields (max_tokens against
--max-tokens, best_of equal to n, top_logprobs with logprobs, ...) stay in api's checkers, which run on
the same body after the model accepts it. A validation error is answered with the message those checkers
give for the same body when they find the problem (one wording whichever layer notices it), else with
one built from pydantic's error, naming the field.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any, Optional, Union

from pydantic import AfterValidator, BaseModel, ConfigDict
from pydantic import Field as Described
from pydantic import StrictBool, StrictFloat, StrictInt, StrictStr, create_model

from loralab.serving import api
from loralab.serving.api import FIELDS, REFUSED, ApiError

_KINDS: dict[str, Any] = {
    "string": StrictStr, "integer": StrictInt, "number": Union[StrictInt, StrictFloat], "boolean": StrictBool,
    "object": dict[str, Any], "array": list[Any],
}


class StreamOptions(BaseModel):
    """stream_options: only include_usage is taken."""
    model_config = ConfigDict(extra="forbid")
    include_usage: Optional[StrictBool] = None


# Fields whose JSON schema says more than their kind (each still of that kind).
_SHAPES: dict[str, Any] = {
    "prompt": Union[StrictStr, list[StrictStr]],
    "stop": Union[StrictStr, list[StrictStr]],
    "messages": list[dict[str, Any]],
    "stream_options": StreamOptions,
    "input": Union[StrictStr, list[Union[StrictStr, Annotated[list[StrictStr], Described(min_length=2,
                                                                                          max_length=2)]]]],
}

MODEL_NAMES = {api.COMPLETIONS: "CompletionRequest", api.CHAT: "ChatCompletionRequest",
               api.CLASSIFY: "ClassifyRequest", api.LOAD: "LoadLoraAdapterRequest",
               api.UNLOAD: "UnloadLoraAdapterRequest"}


def _refused_unless_neutral(name: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if not FIELDS[name].neutral(value):
            raise ValueError(api.refusal(name).message)
        return value
    return check


def _annotation(name: str, endpoint: str) -> Any:
    rule = FIELDS[name]
    if rule.handling == REFUSED:
        return Annotated[Any, AfterValidator(_refused_unless_neutral(name))]
    kind = rule.kind_at(endpoint)
    shape = _SHAPES.get(name, _KINDS.get(kind, Any))
    return shape if rule.required else Optional[shape]


def request_model(endpoint: str) -> type[BaseModel]:
    """The pydantic model of `endpoint`'s body: one field per FIELDS entry that names it (required ones without
    default, the rest null by default), described by its meaning; any other field is refused."""
    fields = {}
    for name, rule in FIELDS.items():
        if endpoint not in rule.endpoints:
            continue
        described = Described(description=f"{rule.handling}: {rule.meaning}")
        fields[name] = (_annotation(name, endpoint), described) if rule.required else \
            (_annotation(name, endpoint), Described(default=None, description=described.description))
    return create_model(MODEL_NAMES[endpoint], __config__=ConfigDict(extra="forbid"), **fields)


REQUEST_MODELS: dict[str, type[BaseModel]] = {endpoint: request_model(endpoint) for endpoint in api.ENDPOINTS}
CompletionRequest = REQUEST_MODELS[api.COMPLETIONS]
ChatCompletionRequest = REQUEST_MODELS[api.CHAT]
ClassifyRequest = REQUEST_MODELS[api.CLASSIFY]
LoadLoraAdapterRequest = REQUEST_MODELS[api.LOAD]
UnloadLoraAdapterRequest = REQUEST_MODELS[api.UNLOAD]


# The checkers each endpoint's body goes through after its model (and whose wording validation errors reuse).
CHECKERS: dict[str, Callable[[dict, Any], Any]] = {
    api.COMPLETIONS: lambda body, limits: api.generation_request(body, False, limits),
    api.CHAT: lambda body, limits: api.generation_request(body, True, limits),
    api.CLASSIFY: lambda body, limits: api.classify_request(body, limits),
    api.LOAD: lambda body, limits: (api.adapter_name_field(body), api.path_field(body, "lora_path")),
    api.UNLOAD: lambda body, limits: api.adapter_name_field(body),
}


def validation_error(errors: list[dict], body: Any, endpoint: str, limits: Any) -> ApiError:
    """OpenAI's 400 for FastAPI's validation `errors` of `body` at `endpoint` (limits: ServeSettings)."""
    if isinstance(body, dict):
        try:
            CHECKERS[endpoint](body, limits)
        except ApiError as exc:
            return exc
    return _from_pydantic(errors[0] if errors else {}, endpoint)


def _from_pydantic(error: dict, endpoint: str) -> ApiError:
    loc = [part for part in error.get("loc", ()) if part != "body"]
    kind = error.get("type", "")
    if not loc or not isinstance(loc[0], str):
        return api.bad_request("the body must be a JSON object sent as JSON (Content-Type: application/json)")
    name = loc[0]
    if kind == "extra_forbidden" and len(loc) == 1:
        return api.field_not_taken(name, endpoint) or api.bad_request(f"'{name}' is not taken here", param=name)
    if kind == "missing" and len(loc) == 1:
        return api.bad_request(f"'{name}' is required", param=name)
    where = name + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc[1:]
                           if isinstance(p, int) or p in _subfields(name))
    if kind == "extra_forbidden":
        return api.bad_request(f"'{where}' is not supported", param=name)
    if kind == "value_error":                                  # a refused field's message, as api words it
        return api.bad_request(str(error.get("ctx", {}).get("error", error.get("msg"))), param=name)
    got = json.dumps(error.get("input"), default=str)[:60]
    return api.bad_request(f"'{where}': {error.get('msg', 'invalid value')}, got {got}", param=name)


def _subfields(name: str) -> set[str]:
    shape = _SHAPES.get(name)
    return set(shape.model_fields) if isinstance(shape, type) and issubclass(shape, BaseModel) else set()
