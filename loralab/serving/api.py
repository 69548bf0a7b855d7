"""The OpenAI-compatible wire format: request bodies checked into dataclasses, errors, response objects.

Errors are OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with a matching HTTP status.
One table, FIELDS, decides every field of /v1/completions and /v1/chat/completions: each is honoured,
bookkeeping (accepted, changes nothing: `user`, `metadata`, ... that OpenAI's SDKs send), or refused with a
400 naming it unless its value is the one that changes nothing (`echo: false`, `tools: []`, ...). A field not
in the table, or one of the other endpoint, is a 400 too: nothing that could change the output is ignored.
"""
from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Callable
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
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    logprobs: int | None = None                    # None: off; k: each token's logprob and the k most likely
    include_usage: bool = True                     # streams: the last chunk carries the usage

    def sampling(self, choice: int, max_new_tokens: int):
        """SamplingParams of choice `choice` (seed + choice, so each choice is reproducible on its own)."""
        seed = None if self.seed is None else (self.seed + choice) % (2 ** 63)
        try:
            return SamplingParams(max_new_tokens=max_new_tokens, min_new_tokens=min(self.min_tokens, max_new_tokens),
                                  temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, seed=seed,
                                  stop=self.stop, frequency_penalty=self.frequency_penalty,
                                  presence_penalty=self.presence_penalty, repetition_penalty=self.repetition_penalty,
                                  logprobs=self.logprobs)
        except LoraLabError as exc:
            raise bad_request(str(exc)) from None


# ------------------------------------------------------------------------------------------------
# The field table of /v1/completions and /v1/chat/completions
# ------------------------------------------------------------------------------------------------
HONOURED, BOOKKEEPING, REFUSED = "honoured", "bookkeeping", "refused"
COMPLETIONS, CHAT = "/v1/completions", "/v1/chat/completions"
CLASSIFY, LOAD, UNLOAD = "/v1/classify", "/v1/load_lora_adapter", "/v1/unload_lora_adapter"
BOTH = (COMPLETIONS, CHAT)
ENDPOINTS = (COMPLETIONS, CHAT, CLASSIFY, LOAD, UNLOAD)     # the endpoints whose JSON bodies FIELDS describes


def _absent(value: Any) -> bool:
    return value is None


@dataclass(frozen=True)
class Field:
    """How one request field is handled. endpoints: where it exists. handling: HONOURED (it does what
    OpenAI / vLLM say), BOOKKEEPING (accepted, checked against kind, changes nothing) or REFUSED (400 naming
    it unless neutral(value): the value that asks for nothing). meaning: the docs' wording and, refused, why.
    kind: its JSON type ("string", "integer", "number", "boolean", "object", "array", "string|array"; a
    {endpoint: kind} dict where the endpoints differ; None: any). required: every request must send it.
    serving.schema builds the pydantic request models (FastAPI's validation, the OpenAPI schema) from this."""

    endpoints: tuple[str, ...]
    handling: str
    meaning: str
    kind: str | dict[str, str] | None = None
    neutral: Callable[[Any], bool] = _absent
    required: bool = False

    def kind_at(self, endpoint: str) -> str | None:
        return self.kind.get(endpoint) if isinstance(self.kind, dict) else self.kind


def _empty(value: Any) -> bool:
    return value in (None, [], {}, "")


FIELDS: dict[str, Field] = {
    "model": Field((*BOTH, CLASSIFY), HONOURED, "the base model's served name or an adapter's", "string",
                   required=True),
    "prompt": Field((COMPLETIONS,), HONOURED, "a string or a list of strings, one choice set each", "string|array",
                    required=True),
    "messages": Field((CHAT,), HONOURED, "the conversation, formatted with the tokenizer's chat template", "array",
                      required=True),
    "max_tokens": Field(BOTH, HONOURED, "tokens to generate at most per choice", "integer"),
    "max_completion_tokens": Field((CHAT,), HONOURED, "OpenAI's newer name of max_tokens", "integer"),
    "min_tokens": Field(BOTH, HONOURED, "vLLM's: EOS is banned before this many tokens (stop strings still stop)",
                        "integer"),
    "temperature": Field(BOTH, HONOURED, "0 to 2; 0 is greedy (default 1)", "number"),
    "top_p": Field(BOTH, HONOURED, "nucleus sampling, (0, 1]", "number"),
    "top_k": Field(BOTH, HONOURED, "vLLM's: sample from the k most likely tokens; 0 or -1 is off", "integer"),
    "frequency_penalty": Field(BOTH, HONOURED, "-2 to 2: logit -= count in the output so far × this", "number"),
    "presence_penalty": Field(BOTH, HONOURED, "-2 to 2: logit -= this for every token already in the output",
                              "number"),
    "repetition_penalty": Field(BOTH, HONOURED, "vLLM's / transformers': tokens in prompt or output get their "
                                                "positive logit divided, negative multiplied, by this (> 0; 1 off)",
                                "number"),
    "n": Field(BOTH, HONOURED, "choices per prompt, each seeded seed + index", "integer"),
    "best_of": Field((COMPLETIONS,), HONOURED, "equal to n only (no ranking of extra candidates)", "integer"),
    "seed": Field(BOTH, HONOURED, "reproducible sampling per choice", "integer"),
    "stop": Field(BOTH, HONOURED, "up to 4 strings; the text ends before the first", "string|array"),
    "stream": Field(BOTH, HONOURED, "server-sent events, one chunk per token", "boolean"),
    "stream_options": Field(BOTH, HONOURED, "{\"include_usage\": false} leaves out the last chunk's usage "
                                            "(default: sent)", "object"),
    "logprobs": Field(BOTH, HONOURED, "completions: an integer 0 to 20 (the top tokens returned); chat: true",
                      {COMPLETIONS: "integer", CHAT: "boolean"}),
    "top_logprobs": Field((CHAT,), HONOURED, "0 to 20 most likely tokens per position, with logprobs: true",
                          "integer"),
    "input": Field((CLASSIFY,), HONOURED, "a text, or a list of texts or [text, text_pair] pairs", "string|array",
                   required=True),
    "lora_name": Field((LOAD, UNLOAD), HONOURED, "the adapter's name: 1-128 printable characters, no '.' or '/'",
                       "string", required=True),
    "lora_path": Field((LOAD,), HONOURED, "the adapter folder, under --adapter-root", "string", required=True),
    "echo": Field((COMPLETIONS,), REFUSED, "echoing the prompt is not supported", neutral=lambda v: v in (None, False)),
    "suffix": Field((COMPLETIONS,), REFUSED, "suffix (insertion) is not supported", neutral=_empty),
    "logit_bias": Field(BOTH, REFUSED, "logit_bias is not supported", neutral=_empty),
    "response_format": Field((CHAT,), REFUSED, "only {\"type\": \"text\"} is supported (no JSON mode or schema)",
                             neutral=lambda v: v is None or v == {"type": "text"}),
    "tools": Field((CHAT,), REFUSED, "tool calls are not supported", neutral=_empty),
    "functions": Field((CHAT,), REFUSED, "function calls are not supported", neutral=_empty),
    "tool_choice": Field((CHAT,), REFUSED, "tool calls are not supported", neutral=lambda v: v in (None, "none", "auto")),
    "function_call": Field((CHAT,), REFUSED, "function calls are not supported",
                           neutral=lambda v: v in (None, "none", "auto")),
    "modalities": Field((CHAT,), REFUSED, "only text output is supported", neutral=lambda v: v in (None, ["text"])),
    "audio": Field((CHAT,), REFUSED, "audio output is not supported"),
    "prediction": Field((CHAT,), REFUSED, "predicted outputs are not supported"),
    "reasoning_effort": Field((CHAT,), REFUSED, "these models do not reason in a hidden channel"),
    "web_search_options": Field((CHAT,), REFUSED, "web search is not supported"),
    "user": Field(BOTH, BOOKKEEPING, "an end-user id for the caller's records", "string"),
    "safety_identifier": Field(BOTH, BOOKKEEPING, "an end-user id for the caller's records", "string"),
    "prompt_cache_key": Field(BOTH, BOOKKEEPING, "a caching hint; the server keeps no prompt cache", "string"),
    "metadata": Field(BOTH, BOOKKEEPING, "key-value tags for the caller's records", "object"),
    "store": Field(BOTH, BOOKKEEPING, "nothing is stored either way", "boolean"),
    "service_tier": Field(BOTH, BOOKKEEPING, "every request is served alike", "string"),
    "parallel_tool_calls": Field((CHAT,), BOOKKEEPING, "only matters with tools, which are refused", "boolean"),
}


def fields_markdown() -> str:
    """FIELDS as the Markdown table of docs/serving.md (a test keeps the two equal)."""
    short = {COMPLETIONS: "completions", CHAT: "chat", CLASSIFY: "classify", LOAD: "load", UNLOAD: "unload"}
    lines = ["| field | endpoints | handling | what it does |", "|---|---|---|---|"]
    for name, rule in FIELDS.items():
        where = "both" if rule.endpoints == BOTH else ", ".join(short[e] for e in rule.endpoints)
        meaning = rule.meaning.replace("|", "\\|")
        lines.append(f"| `{name}` | {where} | {rule.handling} | {meaning} |")
    return "\n".join(lines)


def field_not_taken(name: str, endpoint: str) -> ApiError | None:
    """The 400 for a field `endpoint` does not take (unknown, or another endpoint's); None when it takes it."""
    rule = FIELDS.get(name)
    if rule is None:
        return bad_request(f"'{name}' is not a field this server knows for {endpoint}; docs/serving.md lists "
                           "the fields it takes", param=name)
    if endpoint not in rule.endpoints:
        return bad_request(f"'{name}' is a field of {rule.endpoints[0]}, not of {endpoint}", param=name)
    return None


def refusal(name: str) -> ApiError:
    return bad_request(f"'{name}': {FIELDS[name].meaning} by this server", param=name)


def check_fields(body: dict, chat: bool) -> None:
    """400 naming the first field FIELDS refuses (with a value that asks for something) or does not know."""
    endpoint = CHAT if chat else COMPLETIONS
    for name, value in body.items():
        rule = FIELDS.get(name)
        error = field_not_taken(name, endpoint)
        if error is not None:
            raise error
        if rule.handling == REFUSED and not rule.neutral(value):
            raise refusal(name)
        if rule.handling == BOOKKEEPING:
            field(body, name, rule.kind_at(endpoint))


def generation_request(body: dict, chat: bool, limits) -> GenerationRequest:
    """Check a completions or chat completions body against the server's limits (ServeSettings)."""
    check_fields(body, chat)
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
    min_tokens = _bounded(body, "min_tokens", "integer", 0, 0, max_tokens)
    return GenerationRequest(
        chat=chat, model=model, prompts=prompts, messages=tuple(messages) if messages is not None else None, n=n,
        stream=stream, max_tokens=max_tokens, max_tokens_field=max_tokens_field,
        temperature=float(_bounded(body, "temperature", "number", 1.0, 0, 2)),
        top_p=float(_bounded(body, "top_p", "number", 1.0, 1e-9, 1)), top_k=_top_k(body),
        seed=_bounded(body, "seed", "integer", None, -2 ** 63, 2 ** 64 - 1), stop=tuple(stop),
        frequency_penalty=float(_bounded(body, "frequency_penalty", "number", 0.0, -2, 2)),
        presence_penalty=float(_bounded(body, "presence_penalty", "number", 0.0, -2, 2)),
        repetition_penalty=_repetition_penalty(body), min_tokens=min_tokens, logprobs=_logprobs(body, chat),
        include_usage=_include_usage(body))


MAX_LOGPROBS = 20


def _logprobs(body: dict, chat: bool) -> int | None:
    """The top tokens to return per position (0: only the chosen token's logprob), None when off. Chat:
    logprobs true (+ top_logprobs); completions: logprobs an integer (OpenAI's legacy API)."""
    if not chat:
        return _bounded(body, "logprobs", "integer", None, 0, MAX_LOGPROBS)
    wanted = field(body, "logprobs", "boolean", False)
    top = _bounded(body, "top_logprobs", "integer", None, 0, MAX_LOGPROBS)
    if top is not None and not wanted:
        raise bad_request("'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    return (top or 0) if wanted else None


def _repetition_penalty(body: dict) -> float:
    value = float(field(body, "repetition_penalty", "number", 1.0))
    if not 0 < value <= 100 or not math.isfinite(value):
        raise bad_request(f"'repetition_penalty' must be above 0 and at most 100 (1 is off), got {value}",
                          param="repetition_penalty")
    return value


def _include_usage(body: dict) -> bool:
    options = field(body, "stream_options", "object", {})
    unknown = sorted(set(options) - {"include_usage"})
    if unknown:
        raise bad_request(f"'stream_options.{unknown[0]}' is not supported; only include_usage is",
                          param="stream_options")
    if options and not field(body, "stream", "boolean", False):
        raise bad_request("'stream_options' is only allowed with 'stream': true", param="stream_options")
    include = options.get("include_usage")
    if include is not None and not isinstance(include, bool):
        raise bad_request(f"'stream_options.include_usage' must be a JSON boolean, got {json.dumps(include)[:60]}",
                          param="stream_options")
    return include is not False


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


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token for the logprobs of a response: its text (the token decoded alone), its natural-log
    probability, and the requested most likely tokens' (text, logprob), most likely first."""
    text: str
    logprob: float
    top: tuple[tuple[str, float], ...]


LOWEST_LOGPROB = -9999.0       # what OpenAI answers for a probability that underflows; JSON has no -Infinity


def _finite(logprob: float) -> float:
    return logprob if math.isfinite(logprob) else LOWEST_LOGPROB


def completion_logprobs(tokens: list[TokenLogprob], text_offset: int = 0) -> dict:
    """The legacy completions' logprobs object: tokens, token_logprobs, top_logprobs (one {text: logprob}
    per token) and text_offset (each token's character offset in the choice's text, counting from
    text_offset; the tokens' texts laid end to end, as vLLM counts)."""
    offsets = []
    for token in tokens:
        offsets.append(text_offset)
        text_offset += len(token.text)
    return {"tokens": [t.text for t in tokens], "token_logprobs": [_finite(t.logprob) for t in tokens],
            "top_logprobs": [{text: _finite(lp) for text, lp in t.top} for t in tokens], "text_offset": offsets}


def _chat_token(text: str, logprob: float) -> dict:
    return {"token": text, "logprob": _finite(logprob), "bytes": list(text.encode("utf-8"))}


def chat_logprobs(tokens: list[TokenLogprob]) -> dict:
    """Chat's logprobs object: content, one {token, logprob, bytes, top_logprobs} per token; refusal null."""
    return {"content": [{**_chat_token(t.text, t.logprob), "top_logprobs": [_chat_token(*top) for top in t.top]}
                        for t in tokens], "refusal": None}


def logprobs_object(request: GenerationRequest, tokens: list[TokenLogprob] | None, text_offset: int = 0) -> dict | None:
    """A choice's logprobs in its endpoint's shape; None when the request did not ask for them."""
    if request.logprobs is None or tokens is None:
        return None
    return chat_logprobs(tokens) if request.chat else completion_logprobs(tokens, text_offset)


def completion_object(request: GenerationRequest, response_id: str, choices: list[dict], use: dict) -> dict:
    """The non-streamed response; choices: [{"index", "text", "finish_reason", "logprobs"}] in index order
    (logprobs: a list of TokenLogprob, or None)."""
    if request.chat:
        out = [{"index": c["index"], "message": {"role": "assistant", "content": c["text"]},
                "logprobs": logprobs_object(request, c.get("logprobs")), "finish_reason": c["finish_reason"]}
               for c in choices]
    else:
        out = [{"index": c["index"], "text": c["text"], "logprobs": logprobs_object(request, c.get("logprobs")),
                "finish_reason": c["finish_reason"]} for c in choices]
    return {"id": response_id, "object": "chat.completion" if request.chat else "text_completion",
            "created": int(time.time()), "model": request.model, "choices": out, "usage": use}


def chunk_object(request: GenerationRequest, response_id: str, index: int, text: str | None,
                 finish_reason: str | None = None, first: bool = False, logprobs: list[TokenLogprob] | None = None,
                 text_offset: int = 0) -> dict:
    """One streamed chunk of choice `index`: its new text (chat: a delta), the logprobs of its token (when
    asked; text_offset: the choice's token texts so far, in characters), and the finish reason at the end."""
    lp = logprobs_object(request, logprobs, text_offset)
    if request.chat:
        delta: dict[str, str] = {"role": "assistant", "content": ""} if first else {}
        if text:
            delta["content"] = text
        choice = {"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish_reason}
    else:
        choice = {"index": index, "text": text or "", "logprobs": lp, "finish_reason": finish_reason}
    return {"id": response_id, "object": "chat.completion.chunk" if request.chat else "text_completion",
            "created": int(time.time()), "model": request.model, "choices": [choice]}


def usage_chunk(request: GenerationRequest, response_id: str, use: dict) -> dict:
    """The last chunk of a stream: no choices, the usage (OpenAI's stream_options.include_usage shape)."""
    return {"id": response_id, "object": "chat.completion.chunk" if request.chat else "text_completion",
            "created": int(time.time()), "model": request.model, "choices": [], "usage": use}


def sse(data: dict | str) -> bytes:
    """One server-sent event: `data: <json>` and a blank line."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()
