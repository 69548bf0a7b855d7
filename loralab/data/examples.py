"""`Example`: one raw example as read from a file, before any tokenizer sees it."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

from loralab.errors import LoraLabError

# A column is named by its header name or, in files without a header, by its 0-based position.
Column = Union[str, int]


@dataclass(frozen=True)
class Example:
    """One raw example, before tokenization.

    text: the sentence (classification) or the prompt (causal LM). text_pair: the second sentence of a
    pair task. label: as read (str from TSV/CSV; str, int or float from JSONL/datasets); None when the
    data has no label column. target: the text a causal LM learns to continue the prompt with.
    messages: a conversation (chat data, loralab.data.chat): a tuple of {"role", "content"} dicts with roles
    system/user/assistant. A chat example's text is its last user message and its target the final
    assistant message, if the conversation ends with one (for reading and references); the model sees
    the whole conversation through the tokenizer's chat template.
    source/line: where the example starts (1-based physical line; for datasets folders the 1-based row),
    used by every later error message.
    """

    text: str
    text_pair: str | None = None
    label: str | int | float | None = None
    target: str | None = None
    messages: tuple[dict[str, str], ...] | None = None
    source: str = "<memory>"
    line: int = 0

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"

    @classmethod
    def from_messages(cls, messages: Sequence[dict[str, str]], source: str = "<memory>", line: int = 0) -> "Example":
        """A chat example (messages already checked, see loralab.data.chat.check_messages): text is the
        last user message ("" if none), target the final assistant message (None if it ends otherwise)."""
        messages = tuple(messages)
        users = [m["content"] for m in messages if m["role"] == "user"]
        final = messages[-1]["content"] if messages and messages[-1]["role"] == "assistant" else None
        return cls(text=users[-1] if users else "", target=final, messages=messages, source=source, line=line)


def group_references(examples: Sequence[Example]) -> list[tuple[str, list[str]]]:
    """Collapse causal LM examples that share a prompt: [(prompt, [target, ...])] in first-seen order.

    E2E lists one line per reference; generation metrics (BLEU etc.) score one output per meaning
    representation against all of its references.
    """
    grouped: dict[str, list[str]] = {}
    for example in examples:
        if example.target is None:
            raise LoraLabError(f"{example.where}: example has no target text to use as a reference; name the "
                               "target column with --target-column")
        grouped.setdefault(example.text, []).append(example.target)
    return list(grouped.items())
