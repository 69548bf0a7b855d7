"""generate / generate_completions: batched output equals one prompt at a time, greedy equals argmax by
hand, seeds make sampled outputs independent of batching, stop strings and finish reasons."""
from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import loralab
from loralab.generation import SamplingParams, encode_prompts, generate, generate_completions

_spec = importlib.util.spec_from_file_location("training_fixtures",
                                               Path(__file__).resolve().parents[1] / "training" / "conftest.py")
fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixtures)


def adapted_model(folder: Path):
    """The folder's model with a randomized (non-zero ΔW) LoRA adapter on every target."""
    model = AutoModelForCausalLM.from_pretrained(folder)
    loralab.inject(model, loralab.LoraConfig(r=4, init="gaussian"))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.5)
    return model.eval()


def e2e_prompts(count: int = 6) -> list[str]:
    prompts = [line.split("||")[0] for line in fixtures.e2e_lines(count)]
    prompts[1] = prompts[1].split("|")[0]  # a much shorter prompt: real left padding in its batch
    return prompts


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def tiny(request, tmp_path_factory):
    torch.set_num_threads(1)
    folder = fixtures.write_tiny_causal(tmp_path_factory.mktemp(request.param), request.param)
    return adapted_model(folder), AutoTokenizer.from_pretrained(folder)


def test_batched_generation_matches_one_at_a_time_and_greedy_by_hand(tiny):
    model, tokenizer = tiny
    prompts = e2e_prompts()
    params = SamplingParams(max_new_tokens=6)
    batched = generate(model, tokenizer, prompts, params, batch_size=3)
    single = [generate(model, tokenizer, [p], params)[0] for p in prompts]
    assert batched == single and len(batched) == 6
    # Greedy by hand for the first prompt: argmax of the next-token logits, six times.
    ids = torch.tensor([encode_prompts(tokenizer, prompts[:1])[0]])
    manual = []
    with torch.no_grad():
        for _ in range(6):
            next_id = int(model(input_ids=ids).logits[0, -1].argmax())
            if next_id == tokenizer.eos_token_id:
                break
            manual.append(next_id)
            ids = torch.cat([ids, torch.tensor([[next_id]])], dim=1)
    assert batched[0] == tokenizer.decode(manual, skip_special_tokens=True).strip()
    beams = generate(model, tokenizer, prompts[:2], SamplingParams(max_new_tokens=6, num_beams=3))
    assert len(beams) == 2 and all(isinstance(t, str) for t in beams)


def test_seeded_sampling_does_not_depend_on_batch_size_or_order(tiny):
    model, tokenizer = tiny
    prompts = e2e_prompts()
    params = SamplingParams(max_new_tokens=8, temperature=1.5, top_k=20, top_p=0.95, seed=11)
    wide = generate_completions(model, tokenizer, prompts, params, batch_size=6)
    narrow = generate_completions(model, tokenizer, prompts, params, batch_size=2)
    assert [c.token_ids for c in wide] == [c.token_ids for c in narrow]
    # prompt i is seeded with seed + i: the last prompt alone, seeded with 11 + 5, gives the same tokens
    alone = generate_completions(model, tokenizer, prompts[5:], SamplingParams(
        max_new_tokens=8, temperature=1.5, top_k=20, top_p=0.95, seed=16))
    assert alone[0].token_ids == wide[5].token_ids
    greedy = generate_completions(model, tokenizer, prompts, SamplingParams(max_new_tokens=8))
    assert sum(w.token_ids != g.token_ids for w, g in zip(wide, greedy)) >= 3  # it did sample
    other_seed = generate_completions(model, tokenizer, prompts, SamplingParams(
        max_new_tokens=8, temperature=1.5, top_k=20, top_p=0.95, seed=12))
    assert [c.token_ids for c in other_seed] != [c.token_ids for c in wide]


def test_completions_report_tokens_finish_reasons_and_stop_strings(tiny):
    model, tokenizer = tiny
    prompts = e2e_prompts()
    free = generate_completions(model, tokenizer, prompts, SamplingParams(max_new_tokens=7))
    prompt_ids = encode_prompts(tokenizer, prompts)
    for completion, ids in zip(free, prompt_ids):
        assert completion.prompt_tokens == len(ids)
        ended = tokenizer.eos_token_id in completion.token_ids
        assert completion.finish_reason == ("stop" if ended else "length")
        assert len(completion.token_ids) == 7 or completion.token_ids[-1] == tokenizer.eos_token_id
        assert completion.text == tokenizer.decode(list(completion.token_ids), skip_special_tokens=True)
    # a stop string spanning two tokens of the longest output: the text ends just before it
    for num_beams in (1, 2):
        params = SamplingParams(max_new_tokens=7, num_beams=num_beams)
        outputs = generate_completions(model, tokenizer, prompts, params)
        full = max(outputs, key=lambda c: len(c.text.split()))
        prompt, stop = prompts[outputs.index(full)], " ".join(full.text.split()[2:4])
        cut = generate_completions(model, tokenizer, [prompt], replace(params, stop=(stop,)))[0]
        assert cut.finish_reason == "stop" and cut.text == full.text[:full.text.index(stop)]
        if num_beams == 1:
            assert len(cut.token_ids) == 4  # decoding stopped at the token that completed the stop string


def test_generation_arguments_are_checked(tiny):
    model, tokenizer = tiny
    with pytest.raises(loralab.LoraLabError, match="batch size"):
        generate(model, tokenizer, ["x"], batch_size=0)
    assert generate(torch.nn.Linear(1, 1), None, []) == []
    from loralab.data.encoding import Task

    with pytest.raises(loralab.LoraLabError, match="causal-lm"):
        generate(model, tokenizer, ["x"], task=Task("classification"))
