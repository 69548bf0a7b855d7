"""One row's generated text, decoded token by token, with stop strings.

Decoding a token alone is wrong for most tokenizers (SentencePiece drops the leading space of a
sequence's first piece; byte-level BPE splits a character such as an emoji over several tokens, and
half of it decodes to U+FFFD). A fast tokenizer whose decoding is its backend's alone (no
transformers-side `clean_up_tokenization_spaces`) goes through `tokenizers.decoders.DecodeStream`,
which buffers tokens until they form whole characters, in Rust. Any other tokenizer: each new token is
decoded together with the token before it, and the text added is the difference between decoding
[previous..new] and decoding [previous] alone; while that decoding ends in U+FFFD (an unfinished
character) nothing is added until the next token completes it (the method of Hugging Face's
text-generation-inference). Either way the pieces concatenate to the decoding of all the tokens at once.

Stop strings are searched in the whole text, so one that spans token boundaries is found; the text is
cut before the first one. While the row runs, the last len(longest stop) - 1 characters are held back
from `take()`, since they may be the start of a stop string: what a streaming client has received is
always a prefix of the final text.
"""
from __future__ import annotations

from typing import Any

from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream

UNFINISHED = "\ufffd"


def stream_backend(tokenizer: Any) -> Tokenizer | None:
    """The `tokenizers.Tokenizer` a DecodeStream can decode `tokenizer`'s ids with, or None when its decoding
    is not the backend's alone (a slow tokenizer, or transformers' clean-up of spaces before punctuation)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if not isinstance(backend, Tokenizer) or getattr(tokenizer, "clean_up_tokenization_spaces", False):
        return None
    return backend


class IncrementalText:
    """The text of one row's tokens, built as they come. `add(token)` returns True when a stop string
    appeared (the text is then cut before it); `take(final)` returns the text not handed out yet."""

    def __init__(self, tokenizer: Any, stop: tuple[str, ...] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        self._hold = max((len(s) for s in stop), default=1) - 1
        self.ids: list[int] = []
        self.text = ""
        self._prefix = 0  # decode window: ids[_prefix:_read] were decoded as context, ids[_read:] are new
        self._read = 0
        self._given = 0  # characters of self.text already returned by take()
        self.stopped = False
        self._backend = stream_backend(tokenizer)
        self._stream = DecodeStream(skip_special_tokens=True) if self._backend is not None else None

    @property
    def streaming(self) -> bool:
        """True when the text comes from tokenizers' DecodeStream."""
        return self._stream is not None

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def add(self, token_id: int) -> bool:
        """Append a token; True when the text now contains a stop string (and was cut before it)."""
        if self.stopped:
            return True
        self.ids.append(int(token_id))
        if self._stream is not None:
            delta = self._stream.step(self._backend, int(token_id))     # None: an unfinished character
            if not delta:
                return False
        else:
            before = self._decode(self.ids[self._prefix:self._read])
            after = self._decode(self.ids[self._prefix:])
            if len(after) <= len(before) or after.endswith(UNFINISHED):
                return False
            delta = after[len(before):]
        self._prefix, self._read = self._read, len(self.ids)        # finish() decodes what follows ids[:_read]
        return self._extend(delta)

    def _extend(self, delta: str) -> bool:
        start = max(0, len(self.text) - self._hold)
        self.text += delta
        found = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        if found:
            self.text = self.text[:min(found)]
            self.stopped = True
        return self.stopped

    def finish(self) -> None:
        """The row ended for another reason: add what an unfinished character was holding back."""
        if not self.stopped and self._read < len(self.ids):
            before = self._decode(self.ids[self._prefix:self._read])
            after = self._decode(self.ids[self._prefix:])
            self._read = len(self.ids)
            if len(after) > len(before):
                self._extend(after[len(before):])

    def take(self, final: bool = False) -> str:
        """Text not returned before; unless `final`, without the tail that may begin a stop string."""
        end = len(self.text) if final or self.stopped else max(self._given, len(self.text) - self._hold)
        piece = self.text[self._given:end]
        self._given = end
        return piece
