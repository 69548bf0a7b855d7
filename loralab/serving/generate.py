"""Batched text generation for causal LMs (with or without an active LoRA adapter): greedy or beam search.

    texts = generate(model, tokenizer, ["name[The Eagle], food[French]"], max_new_tokens=64, num_beams=4)

Prompts are tokenized exactly as in training (loralab.data.encoding: the task's prompt template or chat
template, the tokenizer's special tokens), sorted by length into batches, left-padded so every prompt
ends at the last position, and decoded back into input order. Decoding uses transformers'
`model.generate` with sampling off, so the output is deterministic.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from loralab.errors import LoraLabError


def generate(model: nn.Module, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int = 64,
             num_beams: int = 1, task: Any = None, batch_size: int = 8, length_penalty: float = 1.0,
             no_repeat_ngram_size: int = 0, device: torch.device | str | None = None) -> list[str]:
    """The continuation of each prompt (new tokens only, special tokens dropped, whitespace stripped).

    prompts: raw prompt texts (e.g. E2E meaning representations), formatted with `task`
    (a loralab.data.encoding.Task of kind "causal-lm"; default: the plain "{prompt}\\n" template).
    max_new_tokens: the most tokens generated per prompt; generation also stops at EOS.
    num_beams: 1 is greedy search, more is beam search. Returns one string per prompt, in order.
    """
    from loralab.data.batching import PadCollator, eval_batches, pad_token_id_for, restore_order
    from loralab.data.encoding import Task, encode_examples
    from loralab.data.examples import Example

    if max_new_tokens < 1:
        raise LoraLabError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if num_beams < 1:
        raise LoraLabError(f"num_beams must be at least 1, got {num_beams}")
    if not prompts:
        return []
    task = task or Task("causal-lm")
    if task.kind != "causal-lm":
        raise LoraLabError(f"generation needs a causal-lm task, not {task.kind!r}")
    encoded = encode_examples([Example(text=p) for p in prompts], tokenizer, task, include_labels=False)
    pad_id = pad_token_id_for(tokenizer)
    collator = PadCollator(pad_id, padding_side="left")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    batches = eval_batches(encoded.lengths, batch_size)
    was_training = model.training
    model.eval()
    outputs = []
    with torch.inference_mode():
        for batch_indices in batches:
            batch = collator([encoded[i] for i in batch_indices])
            input_ids = batch["input_ids"].to(device)
            generated = model.generate(
                input_ids=input_ids, attention_mask=batch["attention_mask"].to(device),
                max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False,
                length_penalty=length_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
                pad_token_id=pad_id, eos_token_id=tokenizer.eos_token_id,
                early_stopping=num_beams > 1)
            new_tokens = generated[:, input_ids.shape[1]:]
            outputs.append([text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)])
    if was_training:
        model.train()
    return restore_order(batches, outputs)
