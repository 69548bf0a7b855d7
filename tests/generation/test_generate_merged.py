"""Generation with an adapter gives the same tokens whether the adapter is merged into W0 or not.

Merging replaces x·W0ᵀ + s·(x·Aᵀ)·Bᵀ by x·(W0 + s·B·A)ᵀ: equal up to float rounding (~1e-7 on these logits),
far below the gap between a tiny model's top two logits, so greedy and beam search must pick the same
tokens. The adapter is randomized (B is zero after init, which would make the check vacuous) and is
checked to change the outputs, so the equality is not the base model's twice.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import loralab
from loralab.generation import SamplingParams, generate
from loralab.testing import VOCAB, tiny_model

_spec = importlib.util.spec_from_file_location("training_fixtures",
                                               Path(__file__).resolve().parents[1] / "training" / "conftest.py")
fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixtures)


def tiny_vocabulary_tokenizer():
    """Word-level tokenizer whose ids fill tiny_model's vocabulary exactly: 4 specials + words t0..t95."""
    tokenizer = fixtures.word_tokenizer([" ".join(f"t{i}" for i in range(VOCAB - 4))])
    assert len(tokenizer) == VOCAB and tokenizer.eos_token_id == 2
    return tokenizer


def random_prompts(count: int, seed: int = 3) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 9, (count,), generator=g)  # unequal lengths: left padding inside batches
    return [" ".join(f"t{int(i)}" for i in torch.randint(0, VOCAB - 4, (int(n),), generator=g)) for n in lengths]


@pytest.fixture(scope="module")
def adapted():
    torch.set_num_threads(1)
    model = tiny_model("llama", seed=0)
    loralab.inject(model, loralab.LoraConfig(r=4, alpha=8, targets="all-linear"))
    with torch.no_grad():
        g = torch.Generator().manual_seed(7)
        for _, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model.eval(), tiny_vocabulary_tokenizer()


def raw_generate(model, input_ids, attention_mask, num_beams: int) -> torch.Tensor:
    with torch.inference_mode():
        return model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=10, do_sample=False,
                              num_beams=num_beams, pad_token_id=0, eos_token_id=2, early_stopping=num_beams > 1)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_merged_and_unmerged_generation_are_token_identical(adapted, num_beams):
    model, tokenizer = adapted
    params = SamplingParams(max_new_tokens=10, num_beams=num_beams)
    prompts = random_prompts(6)
    batch = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")

    with loralab.disabled(model):
        base_text = generate(model, tokenizer, prompts, params, batch_size=4)
    unmerged_text = generate(model, tokenizer, prompts, params, batch_size=4)
    unmerged_ids = raw_generate(model, batch["input_ids"], batch["attention_mask"], num_beams)
    with torch.no_grad():
        unmerged_logits = model(**batch).logits

    loralab.merge(model)
    try:
        assert loralab.is_merged(model)
        merged_text = generate(model, tokenizer, prompts, params, batch_size=4)
        merged_ids = raw_generate(model, batch["input_ids"], batch["attention_mask"], num_beams)
        with torch.no_grad():
            merged_logits = model(**batch).logits
    finally:
        loralab.unmerge(model)

    assert torch.equal(merged_ids, unmerged_ids)  # token for token, including where each row stopped
    assert merged_text == unmerged_text
    torch.testing.assert_close(merged_logits, unmerged_logits, atol=1e-5, rtol=1e-5)
    # the outputs are real continuations, and the adapter changed them: the check is not vacuous
    assert unmerged_ids.shape[1] > batch["input_ids"].shape[1]
    assert sum(a != b for a, b in zip(base_text, unmerged_text)) >= 3
    # loralab's decoding (BatchDecoder for greedy) gives the texts of transformers' generate
    new_ids = unmerged_ids[:, batch["input_ids"].shape[1]:]
    assert [t.strip() for t in tokenizer.batch_decode(new_ids, skip_special_tokens=True)] == unmerged_text

    # unmerging restores the unmerged path exactly enough to give the same tokens again
    again = generate(model, tokenizer, prompts, params, batch_size=4)
    assert again == unmerged_text
