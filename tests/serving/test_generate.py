"""Batched generation with left padding gives what one-prompt-at-a-time generation gives."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

import loralab
from loralab.data.encoding import Task, encode_examples
from loralab.data.examples import Example
from loralab.serving.generate import generate

_spec = importlib.util.spec_from_file_location("training_fixtures",
                                               Path(__file__).resolve().parents[1] / "training" / "conftest.py")
fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixtures)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_batched_left_padded_generation_matches_one_at_a_time(family, tmp_path):
    torch.set_num_threads(1)
    folder = fixtures.write_tiny_causal(tmp_path, family)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder)
    loralab.inject(model, loralab.LoraConfig(r=4, init="gaussian"))  # non-zero ΔW: the adapter is in the path
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.normal_(0, 0.5)
    prompts = [line.split("||")[0] for line in fixtures.e2e_lines(6)]
    prompts[1] = prompts[1].split("|")[0]  # a much shorter prompt: real left padding in its batch
    batched = generate(model, tokenizer, prompts, max_new_tokens=6, batch_size=3)
    single = [generate(model, tokenizer, [p], max_new_tokens=6)[0] for p in prompts]
    assert batched == single and len(batched) == 6
    # Greedy by hand for the first prompt: argmax of the next-token logits, six times.
    ids = torch.tensor([encode_examples([Example(text=prompts[0])], tokenizer, Task("causal-lm"),
                                        include_labels=False)[0]["input_ids"]])
    manual = []
    with torch.no_grad():
        for _ in range(6):
            next_id = int(model(input_ids=ids).logits[0, -1].argmax())
            if next_id == tokenizer.eos_token_id:
                break
            manual.append(next_id)
            ids = torch.cat([ids, torch.tensor([[next_id]])], dim=1)
    assert batched[0] == tokenizer.decode(manual, skip_special_tokens=True).strip()
    beams = generate(model, tokenizer, prompts[:2], max_new_tokens=6, num_beams=3)
    assert len(beams) == 2 and all(isinstance(t, str) for t in beams)


def test_generation_arguments_are_checked():
    with pytest.raises(loralab.LoraLabError, match="num_beams"):
        generate(torch.nn.Linear(1, 1), None, ["x"], num_beams=0)
    assert generate(torch.nn.Linear(1, 1), None, []) == []
