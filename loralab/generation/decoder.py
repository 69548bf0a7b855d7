"""BatchDecoder: step-wise batched decoding with a KV cache, where requests join and leave at any step.

    decoder = BatchDecoder(model, tokenizer, max_batch_size=16)
    decoder.add("a", prompt_ids, SamplingParams(temperature=0.7, seed=1))
    while decoder.has_work:
        for out in decoder.step():          # one new token for every running request
            print(out.request_id, repr(out.text), out.finished and out.finish_reason)
    decoder.add("b", other_ids, SamplingParams())   # may be called between any two steps
    decoder.cancel("a")                              # leaves at once, its cache rows dropped

One `step()`: (1) the running rows feed their last token through the model in one (B, 1) forward and
each chooses its next token; finished rows leave the batch; (2) waiting requests join, up to
`max_batch_size` rows in all: their prompts are prefilled together in one left-padded forward (each
chooses its first token) and their cache rows are appended to the batch's (loralab.generation.cache).
Each row carries its own position ids (the count of its real tokens), attention mask, sampling
settings, random generator, seen-token set (repetition penalty), output token counts (frequency and presence
penalties), n-gram table and text, so a row's
tokens do not depend on the other rows beyond float rounding; greedy rows give the tokens of
`model.generate(do_sample=False)`.

Ragged steps (`ragged`, on by default for the models the architecture table lists: LLaMA-family, Qwen2): (1)
and (2) are one forward, every token a row of an (N, 1) batch — the running rows' next tokens, then every
joining prompt's tokens — with attention per request (loralab.generation.ragged), so a step reads the weights
once however many requests join; the same tokens as the two forwards, up to float rounding (greedy rows equal
transformers' generate in the tests). A row that finishes at its length limit gives its place to a waiting
request in the same step; one that stops at EOS gives it at the next step.

`forward_context(row_ids)`, when given, is entered around every model forward — prefill included —
with the request id of each row of that forward in batch order (a ragged step enters it twice: around the
model's body, where each token is a row, so a joining request's id comes once per prompt token, and around
the LM head, one row per request): the hook for per-row adapters, e.g.
`forward_context=lambda ids: loralab.per_row_adapters(model, [adapter_of[i] for i in ids])`.
`row_ids` is the running rows' order between steps.

A row whose own work after the forward (recording its token, detokenising, stop strings) raises leaves
the batch at that step with `finish_reason` "error" and the exception in `StepOutput.error`; the other
rows go on. (A failing forward raises from step(): it is the whole batch's.)
"""
from __future__ import annotations

import contextlib
import inspect
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ContextManager

import torch
from torch import nn

from loralab.data.batching import pad_token_id_for
from loralab.errors import LoraLabError
from loralab.generation import cache as kv
from loralab.generation.packed import PackedLinears
from loralab.generation.params import SamplingParams
from loralab.generation.ragged import RaggedStep, ragged_attention, ragged_supported
from loralab.generation.sampling import (RowSettings, apply_frequency_presence, apply_repetition_penalty, draw_uniforms,
                                         sample_tokens, token_logprobs)
from loralab.generation.text import IncrementalText

ForwardContext = Callable[[list[Hashable]], ContextManager[Any]]


@dataclass(frozen=True)
class StepOutput:
    """What one request got from one step: the token chosen (EOS included), the text it added (may be
    empty: an unfinished character or a possible stop string is held back), whether the request is
    done and why ("stop": EOS or a stop string; "length": max_new_tokens or the model's context),
    and the count of tokens generated so far. error: the exception of a row whose own work failed (it
    is finished, finish_reason "error"); None otherwise. logprob: the token's natural-log probability
    under the model's logits of this step (a log-softmax before penalties, bans and temperature) and
    top_logprobs: the params.logprobs most likely (token id, log-probability) pairs, most likely first —
    only when the request's params.logprobs is set (else None and ())."""

    request_id: Hashable
    token_id: int
    text: str
    finished: bool
    finish_reason: str | None
    completion_tokens: int
    error: Exception | None = None
    logprob: float | None = None
    top_logprobs: tuple[tuple[int, float], ...] = ()


class _Row:
    """The Python-side state of one running request."""

    def __init__(self, request_id: Hashable, prompt: list[int], params: SamplingParams, tokenizer: Any) -> None:
        self.request_id = request_id
        self.prompt = prompt
        self.params = params
        self.text = IncrementalText(tokenizer, params.stop)
        self.output: list[int] = []
        self.generator = None
        if not params.greedy:
            self.generator = torch.Generator()
            if params.seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(params.seed)
        self._ngrams: dict[tuple[int, ...], set[int]] = {}
        n = params.no_repeat_ngram_size
        if n:
            for i in range(len(prompt) - n + 1):
                self._ngrams.setdefault(tuple(prompt[i:i + n - 1]), set()).add(prompt[i + n - 1])

    def banned(self) -> list[int]:
        """Tokens that would repeat an n-gram of prompt + output (no_repeat_ngram_size)."""
        key = self._tail()
        return sorted(self._ngrams.get(key, ())) if key is not None else []

    def _tail(self) -> tuple[int, ...] | None:
        """The last n-1 tokens of prompt + output (None when n-gram banning is off or too few tokens)."""
        n = self.params.no_repeat_ngram_size
        sequence = self.prompt + self.output
        if not n or len(sequence) < n - 1:
            return None
        return tuple(sequence[len(sequence) - (n - 1):])

    def record(self, token: int) -> None:
        key = self._tail()
        if key is not None:
            self._ngrams.setdefault(key, set()).add(token)
        self.output.append(token)


@dataclass
class _Batch:
    """Rows with a KV cache: Python state, (B, T) mask, and per-row tensors: next position (B,), the
    chosen token not yet in the cache (B,), sampling settings, seen tokens (B, V) bool (prompt and output),
    counts (B, V) int32 of each token in the output."""

    rows: list[_Row]
    cache: Any
    mask: torch.Tensor
    positions: torch.Tensor
    pending: torch.Tensor
    settings: RowSettings
    seen: torch.Tensor
    counts: torch.Tensor

    def keep(self, index: list[int]) -> "_Batch":
        at = torch.tensor(index, dtype=torch.long, device=self.mask.device)
        mask = kv.keep_rows(self.cache, self.mask, at)
        return _Batch([self.rows[i] for i in index], self.cache, mask, self.positions[at], self.pending[at],
                      self.settings.select(at), self.seen[at], self.counts[at])

    def extend(self, other: "_Batch") -> "_Batch":
        mask = kv.append_rows(self.cache, self.mask, other.cache, other.mask)
        return _Batch(self.rows + other.rows, self.cache, mask, torch.cat([self.positions, other.positions]),
                      torch.cat([self.pending, other.pending]), self.settings.concat(other.settings),
                      torch.cat([self.seen, other.seen]), torch.cat([self.counts, other.counts]))


def context_length(model: nn.Module) -> int | None:
    """The most positions the model embeds (max_position_embeddings / n_positions), None if unknown."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def eos_ids_of(tokenizer: Any) -> tuple[int, ...]:
    eos = getattr(tokenizer, "eos_token_id", None)
    return () if eos is None else (int(eos),)


class BatchDecoder:
    """Continuous batching over one causal LM: add / step / cancel (see the module docstring).

    model: a transformers causal LM (LoRA-injected or not), in eval mode. tokenizer: its tokenizer
    (decoding and pad id). max_batch_size: the most running rows (None: no limit); requests beyond it
    wait in arrival order. forward_context: see the module docstring. eos_token_ids: tokens that end a
    request (default: the tokenizer's EOS). packed: the model's plain linears through oneDNN's packed-weight
    kernel inside every forward (loralab.generation.packed; 1.2–1.7× the tokens/s on a CPU in
    benchmarks/decode.py, at the cost of a packed copy of those weights): None (default) where oneDNN is available, False off, or a
    PackedLinears to share one packed copy between decoders. ragged: one forward per step for the running rows and
    the joining prompts (see the module docstring): None (default) where the model supports it, False off, True
    required (LoraLabError for a model that does not support it).
    """

    def __init__(self, model: nn.Module, tokenizer: Any, max_batch_size: int | None = None,
                 forward_context: ForwardContext | None = None, eos_token_ids: Iterable[int] | None = None,
                 packed: bool | PackedLinears | None = None, ragged: bool | None = None) -> None:
        if max_batch_size is not None and max_batch_size < 1:
            raise LoraLabError(f"max_batch_size must be at least 1, got {max_batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.forward_context = forward_context or (lambda row_ids: contextlib.nullcontext())
        self.eos_token_ids = tuple(eos_ids_of(tokenizer) if eos_token_ids is None else eos_token_ids)
        self.pad_token_id = pad_token_id_for(tokenizer)
        self.context_length = context_length(model)
        self.vocab_size = model.get_input_embeddings().num_embeddings
        self.device = next(model.parameters()).device
        self.packed = packed if isinstance(packed, PackedLinears) else PackedLinears(model, enabled=packed)
        supported = ragged_supported(model)
        if ragged and not supported:
            raise LoraLabError(f"ragged steps need a model whose attention the architecture table lists as ragged "
                               f"(Architecture.ragged); {type(model).__name__} is not one")
        self.ragged = supported if ragged is None else ragged
        accepted = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in accepted else "past_key_values"
        self._extra = {"logits_to_keep": 1} if "logits_to_keep" in accepted else {}
        self._waiting: deque[tuple[Hashable, list[int], SamplingParams]] = deque()
        self._batch: _Batch | None = None

    # ---- what is in the decoder ----------------------------------------------------------------
    @property
    def row_ids(self) -> list[Hashable]:
        """Request ids of the running rows, in batch order (the order of the next decode forward)."""
        return [row.request_id for row in self._batch.rows] if self._batch else []

    @property
    def waiting_ids(self) -> list[Hashable]:
        """Request ids added but not yet running, in the order they will join."""
        return [request_id for request_id, _, _ in self._waiting]

    @property
    def cache_columns(self) -> int:
        """Length T of the running batch's KV cache (B, heads, T, head_dim), left padding included."""
        return int(self._batch.mask.shape[1]) if self._batch else 0

    @property
    def has_work(self) -> bool:
        return bool(self._waiting) or self._batch is not None

    def __contains__(self, request_id: Hashable) -> bool:
        return request_id in self.row_ids or request_id in self.waiting_ids

    # ---- requests ----------------------------------------------------------------------------------
    def add(self, request_id: Hashable, prompt_ids: Sequence[int], params: SamplingParams | None = None) -> None:
        """Queue a request; it joins the batch at the next step() with room. prompt_ids: its token ids
        (at least one, at most the model's context)."""
        params = params or SamplingParams()
        if params.num_beams != 1:
            raise LoraLabError("step-wise decoding is greedy or sampled; beam search (num_beams > 1) goes through "
                               "loralab.generation.generate")
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise LoraLabError(f"request {request_id!r} has an empty prompt; give at least one token")
        if min(prompt) < 0 or max(prompt) >= self.vocab_size:
            raise LoraLabError(f"request {request_id!r}: prompt token ids must be in 0..{self.vocab_size - 1}; "
                               "tokenize with the model's tokenizer")
        if self.context_length is not None and len(prompt) > self.context_length:
            raise LoraLabError(f"request {request_id!r}: the prompt has {len(prompt)} tokens, more than the model's "
                               f"context of {self.context_length}; shorten the prompt")
        if request_id in self:
            raise LoraLabError(f"request id {request_id!r} is already in the decoder; give each request its own id")
        self._waiting.append((request_id, prompt, params))

    def cancel(self, request_id: Hashable) -> bool:
        """Remove a waiting or running request (its cache rows are dropped); False if it is not here."""
        for i, (waiting, _, _) in enumerate(self._waiting):
            if waiting == request_id:
                del self._waiting[i]
                return True
        ids = self.row_ids
        if request_id not in ids:
            return False
        with torch.inference_mode():
            self._keep([i for i, other in enumerate(ids) if other != request_id])
        return True

    def _keep(self, index: list[int]) -> None:
        if self._batch is not None and len(index) < len(self._batch.rows):
            self._batch = self._batch.keep(index) if index else None

    # ---- decoding ------------------------------------------------------------------------------------
    def step(self) -> list[StepOutput]:
        """Advance every running request by one token, then let waiting requests join (their first
        token comes from the prefill). Returns one StepOutput per request that got a token."""
        outputs: list[StepOutput] = []
        with torch.inference_mode():
            if self.ragged:
                return self._ragged_step()
            if self._batch is not None:
                outputs += self._decode()
            joining = self._joining()
            if joining:
                outputs += self._prefill(joining)
        return outputs

    def _joining(self, leaving: int = 0) -> list[tuple[Hashable, list[int], SamplingParams]]:
        """The waiting requests that fit into the batch now, besides `leaving` running rows certain to finish
        first, taken from the queue in arrival order."""
        room = len(self._waiting) if self.max_batch_size is None else \
            self.max_batch_size - (len(self._batch.rows) if self._batch else 0) + leaving
        return [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]

    def _ragged_step(self) -> list[StepOutput]:
        """step() in one forward (loralab.generation.ragged): the model's body on the running rows' next tokens
        and the joining prompts' tokens, its LM head on each request's last token; the running rows choose and
        report first, then the joining ones, as on the two-forward path."""
        batch = self._batch
        # a row at its last token leaves in this step, so its place is taken now; a row that stops at EOS frees
        # its place for the next step
        leaving = 0 if batch is None else sum(len(r.output) + 1 >= r.params.max_new_tokens for r in batch.rows)
        joining = self._joining(leaving)
        lengths = [len(prompt) for _, prompt, _ in joining]
        mask = None if batch is None else torch.cat([batch.mask, batch.mask.new_ones(len(batch.rows), 1)], dim=1)
        ids = ([batch.pending] if batch is not None else []) + [torch.tensor(p, device=self.device)
                                                                 for _, p, _ in joining]
        positions = ([batch.positions] if batch is not None else []) + [torch.arange(n, device=self.device)
                                                                         for n in lengths]
        running_ids = self.row_ids
        rows = running_ids + [rid for rid, _, _ in joining]
        tokens = running_ids + [rid for (rid, _, _), n in zip(joining, lengths) for _ in range(n)]
        step = RaggedStep(batch.cache if batch is not None else None, mask, lengths)
        # the body on every token, the LM head only on each row's last one (a joining prompt's other tokens need
        # no logits); the architectures with ragged steps are exactly body + head (no logit scaling or capping)
        with self.forward_context(tokens), self.packed, ragged_attention(self.model):
            hidden = self.model.get_decoder()(input_ids=torch.cat(ids)[:, None],
                                              position_ids=torch.cat(positions)[:, None], use_cache=False,
                                              ragged=step).last_hidden_state          # (N, 1, hidden)
        running = 0 if batch is None else len(batch.rows)
        last = torch.cat([torch.arange(running), running + torch.tensor(lengths, dtype=torch.long).cumsum(0) - 1])
        with self.forward_context(rows), self.packed:
            logits = self.model.get_output_embeddings()(hidden[last.to(hidden.device)])[:, -1].float()   # (rows, V)
        outputs: list[StepOutput] = []
        if batch is not None:
            batch.mask, batch.positions = mask, batch.positions + 1
            outputs += self._choose(batch, logits[:running])
            self._keep([i for i, o in enumerate(outputs) if not o.finished])
        if joining:
            outputs += self._join(joining, logits[running:], step.joined, step.joined_mask.to(self.device))
        return outputs

    def _forward(self, row_ids: list[Hashable], input_ids: torch.Tensor, mask: torch.Tensor,
                 positions: torch.Tensor, cache: Any) -> torch.Tensor:
        """The model's last-position logits (B, V) as float32."""
        with self.forward_context(row_ids), self.packed:
            out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                             **{self._cache_arg: cache}, use_cache=True, **self._extra)
        return out.logits[:, -1].float()

    def _decode(self) -> list[StepOutput]:
        batch = self._batch
        mask = torch.cat([batch.mask, batch.mask.new_ones(len(batch.rows), 1)], dim=1)
        logits = self._forward(self.row_ids, batch.pending[:, None], mask, batch.positions[:, None], batch.cache)
        batch.mask, batch.positions = mask, batch.positions + 1
        outputs = self._choose(batch, logits)
        self._keep([i for i, out in enumerate(outputs) if not out.finished])
        return outputs

    def _prefill(self, joining: list[tuple[Hashable, list[int], SamplingParams]]) -> list[StepOutput]:
        width = max(len(prompt) for _, prompt, _ in joining)
        ids = torch.full((len(joining), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(joining), width), dtype=torch.long)
        for b, (_, prompt, _) in enumerate(joining):
            ids[b, width - len(prompt):] = torch.tensor(prompt)
            mask[b, width - len(prompt):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(dim=1) - 1).clamp_(min=0)
        cache = kv.new_cache()
        logits = self._forward([r for r, _, _ in joining], ids, mask, positions, cache)
        return self._join(joining, logits, cache, mask)

    def _join(self, joining: list[tuple[Hashable, list[int], SamplingParams]], logits: torch.Tensor, cache: Any,
              mask: torch.Tensor) -> list[StepOutput]:
        """Make rows of the joining requests, whose prompts are in `cache` (left-padded, `mask` (J, T) marking real
        tokens) and whose last positions gave `logits` (J, V); each chooses its first token; the unfinished
        ones join the batch."""
        rows = [_Row(request_id, prompt, params, self.tokenizer) for request_id, prompt, params in joining]
        seen = torch.zeros((len(rows), logits.shape[-1]), dtype=torch.bool, device=self.device)
        for b, row in enumerate(rows):
            seen[b, torch.tensor(row.prompt, device=self.device)] = True
        settings = RowSettings.of([r.params for r in rows], self.device)
        last = torch.tensor([prompt[-1] for _, prompt, _ in joining], device=self.device)
        batch = _Batch(rows, cache, mask, mask.sum(dim=1), last, settings, seen,
                       torch.zeros(seen.shape, dtype=torch.int32, device=self.device))
        outputs = self._choose(batch, logits)
        batch = batch.keep([i for i, out in enumerate(outputs) if not out.finished])
        if batch.rows:
            self._batch = batch if self._batch is None else self._batch.extend(batch)
        return outputs

    def _choose(self, batch: _Batch, logits: torch.Tensor) -> list[StepOutput]:
        """Pick each row's next token from its logits (B, V), record it, and report it."""
        settings = batch.settings
        raw = logits                         # logprobs are the model's own: before penalties and bans
        if bool((settings.repetition_penalty != 1).any()):
            logits = apply_repetition_penalty(logits, batch.seen, settings.repetition_penalty)
        if bool(((settings.frequency_penalty != 0) | (settings.presence_penalty != 0)).any()):
            logits = apply_frequency_presence(logits, batch.counts, settings.frequency_penalty,
                                              settings.presence_penalty)
        elif any(row.params.logprobs is not None for row in batch.rows):
            logits = logits.clone()          # the bans below write in place; raw stays the model's
        counts = torch.tensor([len(row.output) for row in batch.rows], device=logits.device)
        if self.eos_token_ids and bool((counts < settings.min_new_tokens).any()):
            early = (counts < settings.min_new_tokens)[:, None]
            eos = torch.tensor(self.eos_token_ids, device=logits.device)
            logits[:, eos] = logits[:, eos].masked_fill(early, float("-inf"))
        for b, row in enumerate(batch.rows):
            banned = row.banned()
            if banned:
                logits[b, banned] = float("-inf")
        uniforms = draw_uniforms([row.generator for row in batch.rows])
        tokens = sample_tokens(logits, settings, uniforms.to(logits.device))
        batch.pending = tokens
        rows = torch.arange(len(tokens), device=tokens.device)
        batch.seen[rows, tokens] = True
        batch.counts[rows, tokens] += 1
        logprobs = self._logprobs(batch.rows, raw, tokens)
        return [self._report_or_fail(row, int(token), int(position), lp)
                for row, token, position, lp in zip(batch.rows, tokens.tolist(), batch.positions.tolist(), logprobs)]

    @staticmethod
    def _logprobs(rows: list[_Row], raw: torch.Tensor, tokens: torch.Tensor) -> list[dict[str, Any]]:
        """Per row, {} or (when its params.logprobs is set) the StepOutput fields logprob and top_logprobs,
        from one log-softmax over the rows that asked."""
        wanted = [b for b, row in enumerate(rows) if row.params.logprobs is not None]
        out: list[dict[str, Any]] = [{} for _ in rows]
        if not wanted:
            return out
        at = torch.tensor(wanted, device=raw.device)
        top = max(rows[b].params.logprobs for b in wanted)
        chosen, ids, values = token_logprobs(raw[at], tokens[at], top)
        for b, lp, row_ids, row_values in zip(wanted, chosen.tolist(), ids.tolist(), values.tolist()):
            k = rows[b].params.logprobs
            out[b] = {"logprob": lp, "top_logprobs": tuple(zip(row_ids[:k], row_values[:k]))}
        return out

    def _report_or_fail(self, row: _Row, token: int, position: int, logprobs: dict[str, Any]) -> StepOutput:
        """_report, or a finished "error" output when this row's own work raises: one row's failure
        (a tokenizer that cannot decode its token, say) ends that row only."""
        try:
            return self._report(row, token, position, logprobs)
        except Exception as exc:  # noqa: BLE001 - handed to the caller in the row's output
            return StepOutput(row.request_id, token, "", True, "error", len(row.output), error=exc)

    def _report(self, row: _Row, token: int, position: int, logprobs: dict[str, Any]) -> StepOutput:
        """Record `token` for `row` (to be fed at `position`) and decide whether the row is done."""
        row.record(token)
        reason = None
        if token in self.eos_token_ids or row.text.add(token):
            reason = "stop"
        elif len(row.output) >= row.params.max_new_tokens or (
                self.context_length is not None and position >= self.context_length):
            reason = "length"
        if reason is not None:
            row.text.finish()
        return StepOutput(row.request_id, token, row.text.take(final=reason is not None), reason is not None,
                          reason, len(row.output), **logprobs)
