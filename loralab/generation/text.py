"""One row's generated text, decoded token by token, with stop strings.

Decoding a token alone is wrong for most tokenizers (SentencePiece drops the leading space of a
sequence's first piece; byte-level BPE splits a character such as an emoji over several tokens, and
half of it decodes to U+FFFD). So each new token is decoded together with the token before it, and
the text added is the difference between decoding [previous..new] and decoding [previous] alone;
while that decoding ends in U+FFFD (an unfinished character) nothing is added until the next token
completes it (the method of Hugging Face's text-generation-inference). The pieces concatenate to the
decoding of all the tokens at once.

Stop strings are searched in the whole text, so one that spans token boundaries is found; the text is
cut before the first one. While the row runs, the last len(longest stop) - 1 characters are held back
from `take()`, since they may be the start of a stop string: what a streaming client has received is
always a prefix of the final text.
"""
from __future__ import annotations

from typing import Any

UNFINISHED = "\ufffd"


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

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def add(self, token_id: int) -> bool:
        """Append a token; True when the text now contains a stop string (and was cut before it)."""
        if self.stopped:
            return True
        self.ids.append(int(token_id))
        before = self._decode(self.ids[self._prefix:self._read])
        after = self._decode(self.ids[self._prefix:])
        if len(after) <= len(before) or after.endswith(UNFINISHED):
            return False
        self._prefix, self._read = self._read, len(self.ids)
        return self._extend(after[len(before):])

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
