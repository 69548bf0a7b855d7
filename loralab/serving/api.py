"""The OpenAI-compatible wire format: request bodies checked into dataclasses, errors, response objects.

Errors are OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with a matching HTTP status.
Request fields loralab does not use (user, frequency_penalty at 0, ...) are ignored, as OpenAI-compatible
servers do; fields it cannot honour (logprobs, echo, best_of > n, tools) are refused with a 400 that says so.
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from loralab.errors import LoraLabError
from loralab.generation import SamplingParams

MAX_JSON_DEPTH = 32


class ApiError(Exception):
    """An error answered to the client: HTTP status, one-line message, OpenAI error type, param and code."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param)


def not_found(model: str) -> ApiError:
    return ApiError(404, f"the model {model!r} does not exist; GET /v1/models lists the base model and the adapters",
                    type="NotFoundError", param="model", code="model_not_found")


# ------------------------------------------------------------------------------------------------
# Bodies
# ------------------------------------------------------------------------------------------------
def parse_body(raw: bytes) -> dict[str, Any]:
    """The request's JSON object; malformed, non-object or too deeply nested JSON is a 400."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise bad_request(f"the body is not valid JSON ({exc})") from None
    except RecursionError:
        raise bad_request(f"the body nests deeper than {MAX_JSON_DEPTH} levels") from None
    if not isinstance(body, dict):
        raise bad_request(f"the body must be a JSON object, got {type(body).__name__}")
    if _depth(body) > MAX_JSON_DEPTH:
        raise bad_request(f"the body nests deeper than {MAX_JSON_DEPTH} levels")
    for name, value in body.items():
        _check_text(value, _printable(name), _printable(name))
    return body


def _check_text(value: Any, where: str, param: str) -> None:
    """400 naming the field when a string (or key) anywhere in `value` cannot be encoded as UTF-8: JSON's
    \\uXXXX escapes can spell lone surrogates, which no tokenizer, file path or response can carry."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise bad_request(f"'{where}' is not valid Unicode text: a lone surrogate {value[exc.start]!r} at "
                              f"character {exc.start}; send UTF-8 text", param=param) from None
    elif isinstance(value, dict):
        for key, child in value.items():
            _check_text(key, f"{where} key {_printable(key)}", param)
            _check_text(child, f"{where}.{_printable(key)}", param)
    elif isinstance(value, list):
        for i, child in enumerate(value):
            _check_text(child, f"{where}[{i}]", param)


def _printable(text: str) -> str:
    """`text` with lone surrogates spelled as \\udXXX escapes, so an error message can quote it."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _depth(value: Any, level: int = 1) -> int:
    if level > MAX_JSON_DEPTH:
        return level
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return max((_depth(child, level + 1) for child in children), default=level)


_TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "object": dict, "array": list}


def field(body: dict, name: str, kind: str, default: Any = None, required: bool = False, nullable: bool = True) -> Any:
    """body[name] checked against a JSON type name; missing (or null when nullable) gives `default`."""
    value = body.get(name)
    if value is None and (name not in body or nullable):
        if required:
            raise bad_request(f"'{name}' is required", param=name)
        return default
    if isinstance(value, bool) and kind in ("integer", "number") or not isinstance(value, _TYPES[kind]):
        raise bad_request(f"'{name}' must be a JSON {kind}, got {json.dumps(value)[:60]}", param=name)
    return value


def _bounded(body: dict, name: str, kind: str, default: Any, low: float, high: float) -> Any:
    value = field(body, name, kind, default)
    if value is not None and not low <= value <= high:
        raise bad_request(f"'{name}' must be between {low:g} and {high:g}, got {value}", param=name)
    return value


@dataclass(frozen=True)
class GenerationRequest:
    """A /v1/completions (prompts) or /v1/chat/completions (messages) request, checked."""
    chat: bool
    model: str
    prompts: tuple[str, ...]                       # completions: one choice set per prompt
    messages: tuple[dict[str, str], ...] | None    # chat
    n: int
    stream: bool
    max_tokens: int
    max_tokens_field: str                          # the field that set max_tokens, named in errors about it
    temperature: float
    top_p: float
    top_k: int
    seed: int | None
    stop: tuple[str, ...]

    def sampling(self, choice: int, max_new_tokens: int):
        """SamplingParams of choice `choice` (seed + choice, so each choice is reproducible on its own)."""
        seed = None if self.seed is None else (self.seed + choice) % (2 ** 63)
        try:
            return SamplingParams(max_new_tokens=max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                                  top_k=self.top_k, seed=seed, stop=self.stop)
        except LoraLabError as exc:
            raise bad_request(str(exc)) from None


_UNSUPPORTED = {"logprobs": "log-probabilities are not returned", "top_logprobs": "log-probabilities are not returned",
                "echo": "echo is not supported", "tools": "tool calls are not supported",
                "functions": "function calls are not supported", "suffix": "suffix (insertion) is not supported"}


def generation_request(body: dict, chat: bool, limits) -> GenerationRequest:
    """Check a completions or chat completions body against the server's limits (ServeSettings)."""
    for name, why in _UNSUPPORTED.items():
        if body.get(name) not in (None, False, 0, [], ""):
            raise bad_request(f"'{name}': {why} by this server", param=name)
    model = field(body, "model", "string", required=True)
    if chat:
        messages = field(body, "messages", "array", required=True)
        prompts: tuple[str, ...] = ()
    else:
        messages = None
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            prompts = (prompt,)
        elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            prompts = tuple(prompt)
        else:
            raise bad_request("'prompt' must be a string or a non-empty list of strings (token-id prompts are "
                              "not supported)", param="prompt")
    n = _bounded(body, "n", "integer", 1, 1, limits.max_n)
    best_of = field(body, "best_of", "integer")
    if best_of is not None and best_of != n:
        raise bad_request("'best_of' other than n is not supported", param="best_of")
    if len(prompts) * n > limits.max_n:
        raise bad_request(f"{len(prompts)} prompts × n={n} choices is above this server's {limits.max_n}", param="n")
    max_tokens_field, max_tokens = _max_tokens(body, chat, limits)
    stop = body.get("stop")
    stop = (stop,) if isinstance(stop, str) else stop or ()
    if not isinstance(stop, (list, tuple)) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise bad_request("'stop' must be a non-empty string or a list of up to 4 of them", param="stop")
    stream = field(body, "stream", "boolean", False)
    return GenerationRequest(
        chat=chat, model=model, prompts=prompts, messages=tuple(messages) if messages is not None else None, n=n,
        stream=stream, max_tokens=max_tokens, max_tokens_field=max_tokens_field, temperature=float(_bounded(body, "temperature", "number", 1.0, 0, 2)),
        top_p=float(_bounded(body, "top_p", "number", 1.0, 1e-9, 1)), top_k=_top_k(body),
        seed=_bounded(body, "seed", "integer", None, -2 ** 63, 2 ** 64 - 1), stop=tuple(stop))


def _max_tokens(body: dict, chat: bool, limits) -> tuple[str, int]:
    """(the field that set it, tokens per choice): chat takes OpenAI's max_completion_tokens or the older
    max_tokens (both: they must agree); each is checked, and named in errors, as itself."""
    names = ("max_completion_tokens", "max_tokens") if chat else ("max_tokens",)
    given = {name: _bounded(body, name, "integer", None, 1, limits.max_tokens) for name in names}
    given = {name: value for name, value in given.items() if value is not None}
    if len(set(given.values())) > 1:
        raise bad_request(f"'max_completion_tokens' ({given['max_completion_tokens']}) and 'max_tokens' "
                          f"({given['max_tokens']}) differ; send one of them", param="max_completion_tokens")
    if given:
        return next(iter(given.items()))
    return "max_tokens", limits.max_tokens if chat else limits.default_max_tokens


def _top_k(body: dict) -> int:
    value = _bounded(body, "top_k", "integer", 0, -1, 1 << 30)
    return 0 if value in (-1, None) else value          # vLLM spells "off" as -1, loralab as 0


@dataclass(frozen=True)
class ClassifyRequest:
    model: str
    inputs: tuple[tuple[str, str | None], ...]     # (text, text_pair)


def classify_request(body: dict, limits) -> ClassifyRequest:
    """{"model", "input": text | [text, ...] | [[text, text_pair], ...]}."""
    model = field(body, "model", "string", required=True)
    raw = body.get("input")
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not items:
        raise bad_request("'input' must be a string or a non-empty list of strings or [text, text_pair] pairs",
                          param="input")
    if len(items) > limits.max_inputs:
        raise bad_request(f"{len(items)} inputs is above this server's {limits.max_inputs} per request", param="input")
    inputs = []
    for item in items:
        if isinstance(item, str):
            inputs.append((item, None))
        elif isinstance(item, list) and len(item) == 2 and all(isinstance(t, str) for t in item):
            inputs.append((item[0], item[1]))
        else:
            raise bad_request("each input must be a string or a [text, text_pair] pair of strings", param="input")
    return ClassifyRequest(model, tuple(inputs))


def path_field(body: dict, name: str) -> str:
    """A required file-system path: a string without NUL characters (no file name holds one)."""
    value = field(body, name, "string", required=True)
    if "\x00" in value:
        raise bad_request(f"'{name}' holds a NUL character at position {value.index(chr(0))}; no path has one",
                          param=name)
    return value


def adapter_name_field(body: dict) -> str:
    name = field(body, "lora_name", "string", required=True)
    if not name or "." in name or "/" in name or len(name) > 128 or not name.isprintable():
        raise bad_request("'lora_name' must be 1-128 printable characters without '.' or '/'", param="lora_name")
    return name


# ------------------------------------------------------------------------------------------------
# Responses
# ------------------------------------------------------------------------------------------------
def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_object(request: GenerationRequest, response_id: str, choices: list[dict], use: dict) -> dict:
    """The non-streamed response; choices: [{"index", "text", "finish_reason"}] in index order."""
    if request.chat:
        out = [{"index": c["index"], "message": {"role": "assistant", "content": c["text"]}, "logprobs": None,
                "finish_reason": c["finish_reason"]} for c in choices]
    else:
        out = [{"index": c["index"], "text": c["text"], "logprobs": None, "finish_reason": c["finish_reason"]}
               for c in choices]
    return {"id": response_id, "object": "chat.completion" if request.chat else "text_completion",
            "created": int(time.time()), "model": request.model, "choices": out, "usage": use}


def chunk_object(request: GenerationRequest, response_id: str, index: int, text: str | None,
                 finish_reason: str | None = None, first: bool = False) -> dict:
    """One streamed chunk of choice `index`: its new text (chat: a delta), and the finish reason at the end."""
    if request.chat:
        delta: dict[str, str] = {"role": "assistant", "content": ""} if first else {}
        if text:
            delta["content"] = text
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    else:
        choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
    return {"id": response_id, "object": "chat.completion.chunk" if request.chat else "text_completion",
            "created": int(time.time()), "model": request.model, "choices": [choice]}


def usage_chunk(request: GenerationRequest, response_id: str, use: dict) -> dict:
    """The last chunk of a stream: no choices, the usage (OpenAI's stream_options.include_usage shape)."""
    return {"id": response_id, "object": "chat.completion.chunk" if request.chat else "text_completion",
            "created": int(time.time()), "model": request.model, "choices": [], "usage": use}


def sse(data: dict | str) -> bytes:
    """One server-sent event: `data: <json>` and a blank line."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()
