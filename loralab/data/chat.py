"""Chat data: conversations rendered with the tokenizer's chat template, the loss only on assistant tokens.

    prompt = render_chat_prompt(tokenizer, messages)   # what the model continues: the conversation + the
                                                       # assistant header (add_generation_prompt=True)
    ids = chat_prompt_ids(tokenizer, messages)         # the same, tokenized as training tokenizes it

Training, evaluation, prediction, the E2E experiment and the server all build generation prompts with
`render_chat_prompt` (single-turn prompts through loralab.data.encoding.format_prompt), so one template
decides what the model sees everywhere.

Which tokens are trained: chat templates such as SmolLM2's carry no `{% generation %}` markers, so the
assistant turns are found by rendering conversation prefixes. For an assistant message i,
render(messages[:i], add_generation_prompt=True) ends just before the turn's content and
render(messages[:i+1]) just after its end-of-turn marker; the characters between them, without
trailing whitespace (the template's separator between turns), are what the model learns to write. Both
renderings must be prefixes of the whole conversation's rendering (otherwise the template renders
prefixes inconsistently, and the conversation is refused). The whole rendering is tokenized once and
character spans become tokens through the tokenizer's offsets; a token that straddles a span edge
(text merged across the prompt/answer boundary) is an error. docs/data.md ("Chat data") shows an example.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from loralab.errors import LoraLabError

ROLES = ("system", "user", "assistant")
# The row shapes a chat file may use; the first key set a row has decides.
ROW_SHAPES = ('{"messages": [{"role", "content"}, ...]}', '{"prompt", "completion"}',
              '{"instruction", "input" (optional), "output"}')

Messages = tuple[dict[str, str], ...]
Span = tuple[int, int]  # [start, end) character offsets into a rendered conversation


def check_messages(messages: Any, where: str = "conversation") -> Messages:
    """The conversation as a tuple of fresh {"role", "content"} dicts; anything else is a one-line error.

    Roles are system, user and assistant; content is a string; a system message may only come first.
    Extra keys of a message (e.g. "name") are dropped.
    """
    if not isinstance(messages, (list, tuple)) or not messages:
        raise LoraLabError(f"{where}: messages must be a non-empty list of {{\"role\", \"content\"}} objects")
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise LoraLabError(f"{where}: message {i} must be an object with \"role\" and \"content\"")
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise LoraLabError(f"{where}: message {i} has role {role!r}; use one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise LoraLabError(f"{where}: message {i} content must be text, got {type(content).__name__}")
        if role == "system" and i > 0:
            raise LoraLabError(f"{where}: a system message may only come first (message {i} is one)")
        checked.append({"role": role, "content": content})
    return tuple(checked)


def has_assistant_turn(messages: Messages) -> bool:
    """Whether a conversation has an assistant message with text: the only turns training learns."""
    return any(m["role"] == "assistant" and m["content"].strip() for m in messages)


def chat_needs_causal_lm(where: str, task: str) -> LoraLabError:
    """The error for chat data (messages) given to a classifier task: name the flag that fixes it."""
    return LoraLabError(f"{where}: chat data (messages) trains a causal LM, but the task is {task}; use --task "
                        f"causal-lm, or for {task} give a TSV/CSV/JSONL file with --text-column and --label-column")


def _turns(value: Any, role: str) -> list[Any]:
    """A prompt/completion field: a string is one message of `role`; a list is already messages."""
    return list(value) if isinstance(value, (list, tuple)) else [{"role": role, "content": value}]


def row_shape(row: Mapping[str, Any]) -> str | None:
    """The keys that make `row` a conversation (one of ROW_SHAPES, as `conversation_from_row` reads it, e.g.
    "'messages'"), or None when it holds none of them."""
    for keys in (("messages",), ("prompt", "completion"), ("instruction", "output")):
        if all(key in row for key in keys):
            return " + ".join(repr(key) for key in keys)
    return None


def conversation_from_row(row: Mapping[str, Any], where: str) -> Messages:
    """The conversation of one chat-file row: `messages`, or `prompt` + `completion` (strings, or lists
    of messages as TRL writes them), or Alpaca's `instruction` + optional `input` + `output` (one user
    turn "instruction\\n\\ninput", one assistant turn)."""
    if "messages" in row:
        return check_messages(row["messages"], where)
    if "prompt" in row and "completion" in row:
        return check_messages(_turns(row["prompt"], "user") + _turns(row["completion"], "assistant"), where)
    if "instruction" in row and "output" in row:
        extra = row.get("input")
        if extra is not None and not isinstance(extra, str):
            raise LoraLabError(f"{where}: \"input\" must be text, got {type(extra).__name__}")
        instruction = row["instruction"] if not extra else f"{row['instruction']}\n\n{extra}"
        return check_messages([{"role": "user", "content": instruction},
                               {"role": "assistant", "content": row["output"]}], where)
    raise LoraLabError(f"{where}: a chat row needs one of {'; '.join(ROW_SHAPES)}; "
                       f"fields present: {', '.join(map(str, row)) or 'none'} (for prompt/target columns use "
                       "--format jsonl --task causal-lm --text-column C --target-column C)")


def _render(tokenizer: Any, messages: Sequence[Mapping[str, str]], generation_prompt: bool, where: str) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise LoraLabError("the tokenizer has no chat template, which chat data (messages) and --chat-template "
                           "need; use an instruction-tuned model, or drop --chat-template to use the plain "
                           "prompt template")
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template([dict(m) for m in messages], tokenize=False,
                                             add_generation_prompt=generation_prompt)
    except TemplateError as exc:  # e.g. a template that insists on alternating user/assistant turns
        raise LoraLabError(f"{where}: the chat template refused the conversation ({exc})") from None


def render_chat_prompt(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> str:
    """The text a model continues to answer `messages`: the conversation rendered with the tokenizer's
    chat template and add_generation_prompt=True (so it ends with the assistant header).

    Tokenize it with add_special_tokens=False (the template writes BOS and role markers itself), or use
    `chat_prompt_ids`. The conversation must not end with an assistant message.
    """
    checked = check_messages(list(messages))
    if checked[-1]["role"] == "assistant":
        raise LoraLabError("the conversation already ends with an assistant message; drop it to generate the "
                           "assistant's reply")
    return _render(tokenizer, checked, True, "conversation")


def chat_prompt_ids(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> list[int]:
    """render_chat_prompt's text as token ids, tokenized exactly as training tokenizes conversations."""
    return tokenizer(render_chat_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]


def prompt_messages(messages: Messages) -> Messages:
    """The conversation a reply is generated for: `messages` without a final assistant message."""
    return messages[:-1] if len(messages) > 1 and messages[-1]["role"] == "assistant" else messages


def assistant_spans(tokenizer: Any, messages: Messages, where: str = "conversation") -> tuple[str, list[Span]]:
    """The conversation's full rendering and the character spans of its assistant turns to train on.

    Each span runs from the end of render(messages[:i], add_generation_prompt=True) to the end of
    render(messages[:i+1]) minus trailing whitespace: the turn's content and its end-of-turn marker
    (SmolLM2: "Hello!<|im_end|>"), not the assistant header and not the newline after the marker.
    """
    full = _render(tokenizer, messages, False, where)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], True, where)
        after = _render(tokenizer, messages[:i + 1], False, where)
        if not (full.startswith(after) and after.startswith(before)):
            raise LoraLabError(
                f"{where}: the chat template renders conversation prefixes inconsistently at message {i} (the "
                "conversation up to it, with the generation prompt, is not the start of the whole rendering), "
                "so the assistant tokens cannot be found; use a template that renders earlier turns the same way")
        end = len(after.rstrip())
        if end > len(before):
            spans.append((len(before), end))
    return full, spans


def trained_token_mask(offsets: Sequence[tuple[int, int]], spans: Sequence[Span], where: str) -> list[bool]:
    """Per token of the full rendering: True when the token lies inside one of `spans`.

    offsets: (start, end) character offsets of each token, as the tokenizer reports them
    (return_offsets_mapping=True). A token crossing a span edge means the tokenizer merged prompt and
    answer text into one token, so the boundary the model sees at generation time would differ: an error.
    """
    edges = {edge for span in spans for edge in span}
    mask = []
    for start, end in offsets:
        if any(start < edge < end for edge in edges):
            raise LoraLabError(f"{where}: a token spans characters {start}..{end} across the edge of an assistant "
                               "turn, so prompt and answer tokens cannot be separated; this tokenizer does not "
                               "split at the chat template's turn boundaries")
        mask.append(end > start and any(lo <= start and end <= hi for lo, hi in spans))
    return mask
