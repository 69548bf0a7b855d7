"""Choosing each row's next token from its logits, vectorised over rows with per-row settings.

Every setting is a (B,) tensor, one value per row, so rows with different temperatures, top-k, top-p and
repetition penalties are processed in one pass; no Python loop touches the vocabulary. A sampled row
draws ONE uniform number u in [0, 1) from its own generator and takes the token where the cumulative
distribution first exceeds u (inverse-CDF sampling, `torch.searchsorted`), so its choice depends only
on its own logits and its own generator: the same seed gives the same token whatever else is in the
batch. Greedy rows (temperature 0) take the argmax and draw nothing.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from loralab.generation.params import SamplingParams

_TENSOR_FIELDS = ("temperature", "top_k", "top_p", "repetition_penalty", "min_new_tokens", "frequency_penalty",
                  "presence_penalty")


@dataclass
class RowSettings:
    """The sampling settings of B rows as (B,) tensors (float32, except the int64 top_k and
    min_new_tokens; top_k 0 means off)."""

    temperature: torch.Tensor
    top_k: torch.Tensor
    top_p: torch.Tensor
    repetition_penalty: torch.Tensor
    min_new_tokens: torch.Tensor
    frequency_penalty: torch.Tensor
    presence_penalty: torch.Tensor

    @classmethod
    def of(cls, params: Sequence[SamplingParams], device: torch.device | str = "cpu") -> "RowSettings":
        def column(name: str, dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor([getattr(p, name) for p in params], dtype=dtype, device=device)

        return cls(column("temperature", torch.float32), column("top_k", torch.long), column("top_p", torch.float32),
                   column("repetition_penalty", torch.float32), column("min_new_tokens", torch.long),
                   column("frequency_penalty", torch.float32), column("presence_penalty", torch.float32))

    def select(self, index: torch.Tensor) -> "RowSettings":
        """The rows at `index` (a (b,) int64 tensor), in that order."""
        return RowSettings(*(getattr(self, name)[index] for name in _TENSOR_FIELDS))

    def concat(self, other: "RowSettings") -> "RowSettings":
        """These rows followed by `other`'s."""
        return RowSettings(*(torch.cat([getattr(self, n), getattr(other, n)]) for n in _TENSOR_FIELDS))


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """CTRL's repetition penalty, per row: for tokens with seen[b, v] True, a positive logit is divided by
    penalty[b] and a negative one multiplied by it. logits (B, V) float, seen (B, V) bool, penalty (B,)."""
    p = penalty[:, None]
    penalised = torch.where(logits > 0, logits / p, logits * p)
    return torch.where(seen, penalised, logits)


def apply_frequency_presence(logits: torch.Tensor, counts: torch.Tensor, frequency: torch.Tensor,
                             presence: torch.Tensor) -> torch.Tensor:
    """OpenAI's penalties, per row: logits[b, j] - counts[b, j] * frequency[b] - (counts[b, j] > 0) * presence[b].
    logits (B, V) float, counts (B, V) of each token in the row's output so far, frequency and presence (B,)."""
    counts = counts.to(logits.dtype)
    return logits - counts * frequency[:, None] - (counts > 0).to(logits.dtype) * presence[:, None]


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, top: int) -> tuple[torch.Tensor, torch.Tensor,
                                                                                    torch.Tensor]:
    """(log-probability of each row's token (B,), the `top` most likely tokens (B, top) and their
    log-probabilities (B, top), most likely first): a log-softmax of logits (B, V) in float32."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    chosen = logprobs.gather(1, tokens[:, None]).squeeze(1)
    values, ids = torch.topk(logprobs, min(top, logprobs.shape[-1]), dim=-1)
    return chosen, ids, values


def _sorted_warped(logits: torch.Tensor, settings: RowSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits / temperature sorted descending with the tokens top-k and top-p drop set to -inf, the
    token id at each sorted position); both (B, V). Rows must have temperature > 0."""
    scaled = logits / settings.temperature[:, None]
    ordered, order = torch.sort(scaled, dim=-1, descending=True, stable=True)
    rank = torch.arange(ordered.shape[-1], device=ordered.device)
    top_k = torch.where(settings.top_k > 0, settings.top_k, ordered.shape[-1])
    ordered = ordered.masked_fill(rank[None, :] >= top_k[:, None], float("-inf"))
    probs = torch.softmax(ordered, dim=-1)
    before = torch.cumsum(probs, dim=-1) - probs  # probability of the more likely tokens
    keep = (before < settings.top_p[:, None]) | (settings.top_p[:, None] >= 1.0)
    return ordered.masked_fill(~keep, float("-inf")), order


def warp_logits(logits: torch.Tensor, settings: RowSettings) -> torch.Tensor:
    """Sampling logits in vocabulary order: logits / temperature, with -inf where top-k or top-p drop a
    token. (B, V) -> (B, V); rows must have temperature > 0. What `sample_tokens` draws from."""
    ordered, order = _sorted_warped(logits, settings)
    return torch.empty_like(ordered).scatter_(1, order, ordered)


def sample_tokens(logits: torch.Tensor, settings: RowSettings, uniforms: torch.Tensor) -> torch.Tensor:
    """The next token of each row: argmax for rows with temperature 0, otherwise the inverse-CDF draw
    with that row's uniform number. logits (B, V) after penalties and bans; uniforms (B,) in [0, 1)
    (read only for sampled rows). Returns (B,) int64."""
    tokens = logits.argmax(dim=-1)
    sampled = torch.nonzero(settings.temperature > 0).flatten()
    if sampled.numel() == 0:
        return tokens
    ordered, order = _sorted_warped(logits[sampled], settings.select(sampled))
    cdf = torch.cumsum(torch.softmax(ordered, dim=-1).double(), dim=-1)
    target = uniforms[sampled].to(cdf)[:, None] * cdf[:, -1:]
    kept = torch.isfinite(ordered).sum(dim=-1, keepdim=True)
    position = torch.searchsorted(cdf, target, right=True).clamp_(max=kept - 1)
    tokens[sampled] = order.gather(1, position).squeeze(1)
    return tokens


def draw_uniforms(generators: Sequence[torch.Generator | None]) -> torch.Tensor:
    """One uniform number in [0, 1) per row from the row's own generator (CPU, float64), 0.0 for rows
    without one (greedy rows draw nothing, so their generator, if any, is not advanced)."""
    return torch.tensor([float(torch.rand((), generator=g, dtype=torch.float64)) if g is not None else 0.0
                         for g in generators], dtype=torch.float64)
