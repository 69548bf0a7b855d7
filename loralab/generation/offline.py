"""Generation for a list of prompt texts (what `loralab predict` and `loralab e2e` call).

    texts = generate(model, tokenizer, ["name[The Eagle], food[French]"], SamplingParams(max_new_tokens=64))
    done = generate_completions(model, tokenizer, prompts, SamplingParams(temperature=0.8, seed=0, stop=["."]))
    done[0].text, done[0].finish_reason, done[0].token_ids

Prompts are tokenized exactly as in training (loralab.data.encoding.encode_examples: the task's prompt
template or chat template, the tokenizer's special tokens). Greedy and sampled decoding run on
BatchDecoder with continuous batching: the prompts join longest first, up to `batch_size` rows at a
time, and a finished row's place goes to the next prompt at the next step. Beam search
(num_beams > 1) runs transformers' `model.generate` on length-sorted, left-padded batches of
`batch_size`; its stop strings are cut from the finished text. With a seed, prompt i is decoded with
seed + i, so equal prompts get different samples and each output is reproducible on its own.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from loralab.data.batching import PadCollator, eval_batches, pad_token_id_for, restore_order
from loralab.data.encoding import Task, encode_examples
from loralab.data.examples import Example
from loralab.data.tasks import task_kind
from loralab.errors import LoraLabError
from loralab.generation.decoder import BatchDecoder, eos_ids_of
from loralab.generation.params import MAX_SEED, SamplingParams


@dataclass(frozen=True)
class Completion:
    """One prompt's output: the text (special tokens dropped, cut before a stop string, not stripped),
    "stop" (EOS or a stop string) or "length" (max_new_tokens or the context), the generated token ids
    (EOS included when it ended the output) and the prompt's token count."""

    text: str
    finish_reason: str
    token_ids: tuple[int, ...]
    prompt_tokens: int


def encode_prompts(tokenizer: Any, prompts: Sequence[str], task: Any = None) -> list[list[int]]:
    """Token ids of each prompt, formatted as in training (default task: causal LM, "{prompt}\\n")."""
    task = task or Task("causal-lm")
    if not task_kind(task.kind).is_generative:
        raise LoraLabError(f"generation needs a causal-lm task, not {task.kind!r}")
    encoded = encode_examples([Example(text=p) for p in prompts], tokenizer, task, include_labels=False)
    return [list(feature["input_ids"]) for feature in encoded.features]


def generate(model: nn.Module, tokenizer: Any, prompts: Sequence[str], params: SamplingParams | None = None, *,
             task: Any = None, batch_size: int = 8, progress: bool = False) -> list[str]:
    """The continuation of each prompt as text, whitespace stripped, in prompt order.
    See generate_completions for the arguments."""
    completions = generate_completions(model, tokenizer, prompts, params, task=task, batch_size=batch_size,
                                       progress=progress)
    return [c.text.strip() for c in completions]


def generate_completions(model: nn.Module, tokenizer: Any, prompts: Sequence[str],
                         params: SamplingParams | None = None, *, task: Any = None, batch_size: int = 8,
                         progress: bool = False) -> list[Completion]:
    """One Completion per prompt, in prompt order.

    prompts: raw prompt texts, formatted with `task` (a loralab.data.encoding.Task of kind "causal-lm";
    default: the plain "{prompt}\\n" template). params: decoding settings (default: greedy, 64 new
    tokens). batch_size: rows decoded together. progress: a tqdm bar over finished prompts (stderr).
    """
    params = params or SamplingParams()
    if batch_size < 1:
        raise LoraLabError(f"batch size must be at least 1, got {batch_size}")
    if not prompts:
        return []
    prompt_ids = encode_prompts(tokenizer, prompts, task)
    was_training = model.training
    model.eval()
    try:
        if params.num_beams > 1:
            return _beam_search(model, tokenizer, prompt_ids, params, batch_size, progress)
        return _decode_all(model, tokenizer, prompt_ids, params, batch_size, progress)
    finally:
        if was_training:
            model.train()


def _progress_bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="generating", unit="prompt", disable=not enabled, dynamic_ncols=True)


def _decode_all(model: nn.Module, tokenizer: Any, prompt_ids: list[list[int]], params: SamplingParams,
                batch_size: int, progress: bool) -> list[Completion]:
    decoder = BatchDecoder(model, tokenizer, max_batch_size=batch_size)
    for index in (i for batch in eval_batches([len(p) for p in prompt_ids], batch_size) for i in batch):
        seeded = params if params.seed is None else replace(params, seed=(params.seed + index) % (MAX_SEED + 1))
        decoder.add(index, prompt_ids[index], seeded)
    tokens: list[list[int]] = [[] for _ in prompt_ids]
    texts = [""] * len(prompt_ids)
    reasons = [""] * len(prompt_ids)
    with _progress_bar(len(prompt_ids), progress) as bar:
        while decoder.has_work:
            for out in decoder.step():
                if out.error is not None:
                    raise out.error
                tokens[out.request_id].append(out.token_id)
                texts[out.request_id] += out.text
                if out.finished:
                    reasons[out.request_id] = out.finish_reason
                    bar.update(1)
    return [Completion(text, reason, tuple(ids), len(prompt))
            for text, reason, ids, prompt in zip(texts, reasons, tokens, prompt_ids)]


def _beam_search(model: nn.Module, tokenizer: Any, prompt_ids: list[list[int]], params: SamplingParams,
                 batch_size: int, progress: bool) -> list[Completion]:
    """transformers' beam search on length-sorted, left-padded batches; stop strings cut afterwards."""
    pad_id = pad_token_id_for(tokenizer)
    eos_ids = eos_ids_of(tokenizer)
    collator = PadCollator(pad_id, padding_side="left")
    device = next(model.parameters()).device
    batches = eval_batches([len(p) for p in prompt_ids], batch_size)
    outputs = []
    with torch.inference_mode(), _progress_bar(len(prompt_ids), progress) as bar:
        for indices in batches:
            batch = collator([{"input_ids": prompt_ids[i]} for i in indices])
            input_ids = batch["input_ids"].to(device)
            generated = model.generate(
                input_ids=input_ids, attention_mask=batch["attention_mask"].to(device),
                max_new_tokens=params.max_new_tokens, min_new_tokens=params.min_new_tokens or None,
                num_beams=params.num_beams, do_sample=False, length_penalty=params.length_penalty,
                repetition_penalty=params.repetition_penalty, no_repeat_ngram_size=params.no_repeat_ngram_size,
                pad_token_id=pad_id, eos_token_id=tokenizer.eos_token_id, early_stopping=True)
            outputs.append([_beam_completion(row.tolist(), tokenizer, eos_ids, params, len(prompt_ids[i]))
                            for row, i in zip(generated[:, input_ids.shape[1]:], indices)])
            bar.update(len(indices))
    return restore_order(batches, outputs)


def _beam_completion(new_ids: list[int], tokenizer: Any, eos_ids: tuple[int, ...], params: SamplingParams,
                     prompt_tokens: int) -> Completion:
    """A beam's new tokens (padded after EOS) as a Completion, cut at EOS and at the first stop string."""
    end = next((i + 1 for i, t in enumerate(new_ids) if t in eos_ids), len(new_ids))
    ids = new_ids[:end]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    stops = [i for i in (text.find(s) for s in params.stop) if i >= 0]
    reason = "stop" if stops or end < len(new_ids) or (ids and ids[-1] in eos_ids) else "length"
    return Completion(text[:min(stops)] if stops else text, reason, tuple(ids), prompt_tokens)
