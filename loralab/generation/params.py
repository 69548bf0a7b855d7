"""SamplingParams: how one request is decoded (greedy, sampled or beam search), checked at construction.

    SamplingParams()                                        # greedy, up to 64 new tokens
    SamplingParams(temperature=0.7, top_p=0.9, seed=1)      # nucleus sampling, reproducible per request
    SamplingParams(num_beams=4, max_new_tokens=48)          # beam search (greedy only)
    SamplingParams(stop=["\\n", "."], max_new_tokens=20)    # stop strings, cut from the returned text

The logits of a row go through, in this order (transformers' and vLLM's order): repetition penalty, frequency
and presence penalties, n-gram ban, EOS ban below min_new_tokens, then — when sampling — temperature, top-k,
top-p. Log-probabilities (`logprobs`) are those of the model's own logits, before any of these.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from loralab.errors import LoraLabError

MAX_SEED = 2**63 - 1


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class SamplingParams:
    """Decoding settings of one request.

    max_new_tokens: the most tokens generated (EOS included); also stops when the model's context is full.
    min_new_tokens: EOS is banned until this many tokens were generated (0: no ban).
    temperature: 0 is greedy (argmax); above 0 samples from softmax(logits / temperature).
    top_p: sample from the smallest set of most likely tokens whose probabilities sum to at least top_p
        (1.0: off). top_k: sample from the k most likely tokens (0: off). Both only when sampling.
    repetition_penalty: CTRL's penalty (Keskar et al. 2019) as in transformers: the logit of every token
        already in the prompt or the output is divided by it when positive, multiplied when negative
        (1.0: off; above 1 discourages repeats).
    frequency_penalty, presence_penalty: OpenAI's penalties: with c[j] the count of token j in the OUTPUT so
        far (the prompt does not count), logit[j] -= c[j] * frequency_penalty + (c[j] > 0) * presence_penalty
        (0.0: off; positive discourages repeats, negative encourages them).
    no_repeat_ngram_size: a token that would repeat an n-gram of the prompt + output is banned (0: off).
    seed: seeds this request's own random generator, so its samples do not depend on what else is in
        the batch (None: a fresh random seed). Greedy and beam search draw nothing.
    stop: strings that end the output when generated (also across token boundaries); the returned text
        stops before the first one. EOS always stops too.
    num_beams: 1 is greedy or sampled decoding; more is beam search, which needs temperature 0.
    length_penalty: beam search only: beams are ranked by log-probability / length ** length_penalty.
    logprobs: None returns no log-probabilities; k >= 0 returns, for every generated token, its natural-log
        probability under the model's logits (log-softmax, before penalties, bans and temperature) and the k
        most likely tokens' (step-wise decoding only, not beam search).
    """

    max_new_tokens: int = 64
    min_new_tokens: int = 0
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    num_beams: int = 1
    length_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logprobs: int | None = None

    def __post_init__(self) -> None:
        stop = (self.stop,) if isinstance(self.stop, str) else self.stop
        if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop):
            raise LoraLabError(f"stop must be a list of non-empty strings, got {self.stop!r}")
        object.__setattr__(self, "stop", tuple(stop))
        self._check_counts()
        self._check_numbers()
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed <= MAX_SEED):
            raise LoraLabError(f"seed must be an integer from 0 to 2**63-1 or unset, got {self.seed!r}")
        if self.num_beams > 1 and self.temperature > 0:
            raise LoraLabError(f"beam search (num_beams={self.num_beams}) is greedy only; set temperature to 0 "
                               "or num_beams to 1 to sample")
        if self.num_beams > 1:
            self._check_beam_search()

    def _check_beam_search(self) -> None:
        """Beam search runs transformers' generate, which has no OpenAI penalties and returns no logprobs."""
        for name, off in (("frequency_penalty", 0.0), ("presence_penalty", 0.0), ("logprobs", None)):
            if getattr(self, name) != off:
                raise LoraLabError(f"{name} is not available with beam search (num_beams={self.num_beams}); "
                                   "set num_beams to 1")

    def _check_counts(self) -> None:
        for name, low in (("max_new_tokens", 1), ("min_new_tokens", 0), ("top_k", 0),
                          ("no_repeat_ngram_size", 0), ("num_beams", 1)):
            value = getattr(self, name)
            if not _is_int(value) or value < low:
                raise LoraLabError(f"{name} must be an integer of at least {low}, got {value!r}")
        if self.logprobs is not None and (not _is_int(self.logprobs) or self.logprobs < 0):
            raise LoraLabError(f"logprobs must be unset or an integer of at least 0 (the top tokens returned), "
                               f"got {self.logprobs!r}")
        if self.min_new_tokens > self.max_new_tokens:
            raise LoraLabError(f"min_new_tokens ({self.min_new_tokens}) is above max_new_tokens "
                               f"({self.max_new_tokens}); lower it or raise max_new_tokens")

    def _check_numbers(self) -> None:
        if not _is_number(self.temperature) or self.temperature < 0:
            raise LoraLabError(f"temperature must be 0 (greedy) or a positive number, got {self.temperature!r}")
        if not _is_number(self.top_p) or not 0 < self.top_p <= 1:
            raise LoraLabError(f"top_p must be in (0, 1] (1 is off), got {self.top_p!r}")
        if not _is_number(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise LoraLabError(f"repetition_penalty must be a positive number (1 is off), "
                               f"got {self.repetition_penalty!r}")
        for name in ("frequency_penalty", "presence_penalty"):
            if not _is_number(getattr(self, name)):
                raise LoraLabError(f"{name} must be a finite number (0 is off), got {getattr(self, name)!r}")
        if not _is_number(self.length_penalty):
            raise LoraLabError(f"length_penalty must be a finite number, got {self.length_penalty!r}")

    @property
    def greedy(self) -> bool:
        """True when no token is drawn at random (temperature 0: greedy or beam search)."""
        return self.temperature == 0

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-ready values (stop as a list)."""
        return {**asdict(self), "stop": list(self.stop)}

    def non_default(self) -> dict[str, Any]:
        """Only the settings that differ from SamplingParams()'s, as JSON-ready values."""
        default = SamplingParams().to_dict()
        return {k: v for k, v in self.to_dict().items() if v != default[k]}

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))
