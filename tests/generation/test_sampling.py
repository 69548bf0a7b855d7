"""Per-row logits processing equals transformers' processors row by row, and inverse-CDF sampling draws
each token with exactly its probability."""
from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import (RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                                                    TopKLogitsWarper, TopPLogitsWarper)

from loralab.generation import SamplingParams
from loralab.generation.sampling import (RowSettings, apply_frequency_presence, apply_repetition_penalty, draw_uniforms,
                                         sample_tokens, token_logprobs, warp_logits)

ROWS = [SamplingParams(temperature=1.0), SamplingParams(temperature=0.5, top_k=7),
        SamplingParams(temperature=1.7, top_p=0.6), SamplingParams(temperature=0.8, top_k=12, top_p=0.3),
        SamplingParams(temperature=1.0, top_k=1), SamplingParams(temperature=2.0, top_p=0.999)]


def transformers_warp(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    scores = TemperatureLogitsWarper(params.temperature)(None, logits.clone())
    if params.top_k:
        scores = TopKLogitsWarper(params.top_k)(None, scores)
    if params.top_p < 1:
        scores = TopPLogitsWarper(params.top_p)(None, scores)
    return scores


def test_warping_equals_transformers_row_by_row():
    logits = torch.randn(len(ROWS), 50, generator=torch.Generator().manual_seed(0)) * 3
    ours = warp_logits(logits, RowSettings.of(ROWS))
    for row, params in enumerate(ROWS):
        theirs = transformers_warp(logits[row:row + 1], params)[0]
        assert torch.equal(torch.isfinite(ours[row]), torch.isfinite(theirs)), params
        kept = torch.isfinite(theirs)
        torch.testing.assert_close(ours[row][kept], theirs[kept])
    assert int(torch.isfinite(ours[4]).sum()) == 1 and int(torch.isfinite(ours[1]).sum()) == 7


def test_repetition_penalty_equals_transformers_per_row():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 40, generator=g)
    history = [torch.tensor([[3, 5, 5, 9]]), torch.tensor([[0, 39]]), torch.tensor([[7]])]
    seen = torch.zeros(3, 40, dtype=torch.bool)
    for row, ids in enumerate(history):
        seen[row, ids[0]] = True
    penalty = torch.tensor([1.3, 0.7, 1.0])
    ours = apply_repetition_penalty(logits, seen, penalty)
    for row, ids in enumerate(history):
        theirs = RepetitionPenaltyLogitsProcessor(float(penalty[row]))(ids, logits[row:row + 1].clone())[0]
        torch.testing.assert_close(ours[row], theirs)
    assert not torch.equal(ours[0], logits[0])


@pytest.mark.parametrize("row", range(len(ROWS)))
def test_inverse_cdf_draws_each_token_with_its_probability(row):
    """N evenly spaced uniforms u = (j + 1/2) / N: token v is drawn for a run of them as long as N·p(v),
    so the counts equal the probabilities within 1 / N (one draw at each boundary)."""
    n = 4000
    logits = torch.randn(1, 30, generator=torch.Generator().manual_seed(2)).repeat(n, 1) * 2
    settings = RowSettings.of([ROWS[row]] * n)
    uniforms = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    counts = torch.bincount(sample_tokens(logits, settings, uniforms), minlength=30).double() / n
    probabilities = torch.softmax(warp_logits(logits[:1], settings.select(torch.tensor([0])))[0].double(), dim=-1)
    assert torch.allclose(counts, probabilities, atol=1.5 / n)


def test_greedy_and_sampled_rows_mix_and_do_not_depend_on_each_other():
    logits = torch.randn(4, 25, generator=torch.Generator().manual_seed(3))
    params = [SamplingParams(), SamplingParams(temperature=1.0, top_p=0.8), SamplingParams(),
              SamplingParams(temperature=0.6, top_k=4)]
    uniforms = torch.tensor([0.99, 0.42, 0.0, 0.77], dtype=torch.float64)
    together = sample_tokens(logits.clone(), RowSettings.of(params), uniforms)
    for row in range(4):
        alone = sample_tokens(logits[row:row + 1].clone(), RowSettings.of(params[row:row + 1]), uniforms[row:row + 1])
        assert int(alone) == int(together[row])
    assert int(together[0]) == int(logits[0].argmax()) and int(together[2]) == int(logits[2].argmax())
    # a sampled token is one the warping kept
    assert torch.isfinite(warp_logits(logits[3:], RowSettings.of(params[3:]))[0, together[3]])


def test_generators_are_drawn_only_for_sampled_rows():
    seeded = [torch.Generator().manual_seed(4), None, torch.Generator().manual_seed(4)]
    first = draw_uniforms(seeded)
    assert first[0] == first[2] and first[1] == 0.0 and 0 <= first[0] < 1
    again = draw_uniforms([torch.Generator().manual_seed(4)])
    assert again[0] == first[0]
    assert draw_uniforms(seeded[:1])[0] != first[0]  # the generator moved on


def test_frequency_and_presence_penalties_on_counts_worked_by_hand():
    """OpenAI's definition: logit[j] -= c[j] * frequency + (c[j] > 0) * presence, c = output counts."""
    logits = torch.tensor([[1.0, 2.0, -0.5, 0.0], [1.0, 2.0, -0.5, 0.0], [1.0, 2.0, -0.5, 0.0]])
    counts = torch.tensor([[0, 2, 1, 0], [3, 0, 0, 1], [0, 2, 1, 0]], dtype=torch.int32)
    frequency = torch.tensor([0.5, 0.0, -1.0])
    presence = torch.tensor([1.0, 0.25, 0.0])
    out = apply_frequency_presence(logits, counts, frequency, presence)
    assert out.tolist() == [[1.0, 2.0 - 2 * 0.5 - 1.0, -0.5 - 0.5 - 1.0, 0.0],    # [1, 0, -2, 0]
                            [1.0 - 0.25, 2.0, -0.5, 0.0 - 0.25],                   # presence only
                            [1.0, 2.0 + 2.0, -0.5 + 1.0, 0.0]]                     # negative: encourages
    assert torch.equal(logits[0], torch.tensor([1.0, 2.0, -0.5, 0.0]))             # not changed in place


def test_repetition_penalty_on_logits_worked_by_hand():
    """vLLM's / transformers': a seen token's positive logit is divided by the penalty, a negative one multiplied."""
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0], [2.0, -1.0, 0.5, 3.0]])
    seen = torch.tensor([[True, True, False, False], [False, True, True, True]])
    out = apply_repetition_penalty(logits, seen, torch.tensor([2.0, 0.5]))
    assert out.tolist() == [[1.0, -2.0, 0.5, 3.0], [2.0, -0.5, 1.0, 6.0]]


def test_token_logprobs_are_a_log_softmax():
    logits = torch.tensor([[0.0, 1.0, 2.0], [3.0, 3.0, 0.0]])
    chosen, ids, values = token_logprobs(logits, torch.tensor([0, 1]), 2)
    expected = torch.log_softmax(logits, dim=-1)
    torch.testing.assert_close(chosen, torch.stack([expected[0, 0], expected[1, 1]]), rtol=0, atol=1e-7)
    assert ids.tolist() == [[2, 1], [0, 1]]
    torch.testing.assert_close(values, expected.gather(1, ids), rtol=0, atol=0)
    assert token_logprobs(logits, torch.tensor([0, 1]), 9)[1].shape == (2, 3)   # k above V: every token
