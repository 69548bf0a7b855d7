"""Tokenizing: `encode_examples(examples, tokenizer, Task(...), label_map)` gives an `EncodedDataset` of
variable-length features for a task; `loralab.data.batching` pads and batches them.

docs/data.md ("Tasks and tokenization") describes the features of each task, the length limits and the
causal LM prompt formats.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from loralab.data.chat import (assistant_spans, chat_needs_causal_lm, has_assistant_turn, prompt_messages,
                               render_chat_prompt, trained_token_mask)
from loralab.data.examples import Example
from loralab.data.labels import LabelMap
from loralab.data.tasks import DEFAULT_TASK, TaskKind, task_kind
from loralab.errors import LoraLabError

IGNORE_INDEX = -100  # label id that torch.nn.CrossEntropyLoss skips (its default ignore_index)

DEFAULT_PROMPT_TEMPLATE = "{prompt}\n"


class DroppedExamplesWarning(UserWarning):
    """Examples left out of an encoded data set because truncation left nothing to train on."""


@dataclass(frozen=True)
class Task:
    """What the model learns, and how examples become token ids.

    kind: a task name (loralab.data.tasks.TASK_NAMES): "classification" (one text),
        "pair-classification" (text + text_pair, tokenized as one sequence with the tokenizer's separator
        and segment ids), "regression" (one text or a pair, float label), "causal-lm" (prompt -> target;
        the loss covers only the target tokens and the EOS).
    max_length: tokens per example after truncation; None means the task's default_max_length (128 for
        the classifiers, 256 for causal LM). Classifiers truncate the longer text first; causal LM drops prompt tokens from the left
        (after any BOS) and cuts the target only if it alone does not fit.
    prompt_template: plain-text prompt format for causal LM, with `{prompt}` where the example text goes.
        The default "{prompt}\\n" puts the target on the line after the prompt.
    chat_template: format the prompt with the tokenizer's chat template instead (one user turn, then the
        assistant prefix, by loralab.data.chat.render_chat_prompt), for instruction-tuned models;
        prompt_template is then not used. Chat examples (Example.messages) always use the chat template.
    """

    kind: str = DEFAULT_TASK
    max_length: int | None = None
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    chat_template: bool = False

    def __post_init__(self) -> None:
        task_kind(self.kind)  # an unknown name is an error listing the known ones
        if self.max_length is not None and self.max_length < 2:
            raise LoraLabError(f"max_length must be at least 2 tokens, got {self.max_length}")
        if "{prompt}" not in self.prompt_template:
            raise LoraLabError(f"prompt template {self.prompt_template!r} has no {{prompt}} placeholder")
        try:
            self.prompt_template.format(prompt="")
        except (KeyError, IndexError, ValueError):
            raise LoraLabError(f"prompt template {self.prompt_template!r} may only use {{prompt}}; "
                               "write literal braces as {{ and }}") from None

    @property
    def spec(self) -> TaskKind:
        """What the task decides (labels, text pairs, best metric, ...): loralab.data.tasks.TASKS[kind]."""
        return task_kind(self.kind)

    @property
    def token_limit(self) -> int:
        if self.max_length is not None:
            return self.max_length
        return self.spec.default_max_length

    @property
    def is_generative(self) -> bool:
        return self.spec.is_generative


class EncodedDataset:
    """Tokenized examples, one feature dict per example, unpadded (a map-style torch Dataset).

    A feature has "input_ids" (list[int], length <= task.token_limit), "token_type_ids" when the tokenizer
    makes them (pairs for BERT), and "labels" when labels were encoded: an int class id, a float
    regression target, or for causal LM a list[int] as long as input_ids with IGNORE_INDEX on prompt tokens.
    `lengths[i]` is len(features[i]["input_ids"]), what the length-grouped sampler sorts by.
    examples[i] is the example features[i] came from; `dropped` holds the examples left out (chat
    conversations with no assistant token within the length limit).
    """

    def __init__(self, features: list[dict[str, Any]], examples: Sequence[Example], task: Task,
                 dropped: Sequence[Example] = ()) -> None:
        self.features = features
        self.examples = list(examples)
        self.task = task
        self.dropped = list(dropped)
        self.lengths = [len(f["input_ids"]) for f in features]

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.features[index]


_TOKENIZE_CHUNK = 2048  # examples per tokenizer call: batch calls are ~10x faster than one at a time


def _tokenize(tokenizer: Any, texts: list[str], pairs: list[str] | None = None, **kwargs: Any) -> dict[str, list]:
    merged: dict[str, list] = {}
    for start in range(0, len(texts), _TOKENIZE_CHUNK):
        args = [texts[start:start + _TOKENIZE_CHUNK]]
        if pairs is not None:
            args.append(pairs[start:start + _TOKENIZE_CHUNK])
        encoded = tokenizer(*args, **kwargs)
        for key, values in encoded.items():
            merged.setdefault(key, []).extend(values)
    return merged


def format_prompt(text: str, tokenizer: Any, task: Task) -> str:
    """The prompt string a causal LM sees for a one-text prompt: the plain template, or with
    task.chat_template one user turn rendered by loralab.data.chat.render_chat_prompt."""
    if not task.chat_template:
        return task.prompt_template.format(prompt=text)
    return render_chat_prompt(tokenizer, [{"role": "user", "content": text}])


def _fit_causal(prompt: list[int], target: list[int], limit: int, bos_id: int | None) -> tuple[list[int], list[int]]:
    """Cut prompt tokens from the left (keeping a leading BOS), then the target from the right, to fit."""
    if len(prompt) + len(target) <= limit:
        return prompt, target
    keep_bos = bool(prompt) and bos_id is not None and prompt[0] == bos_id
    head = prompt[:1] if keep_bos else []
    room = limit - len(target) - len(head)
    if room > 0:
        return head + prompt[len(prompt) - room:], target
    return head, target[: limit - len(head)]


def _text_pairs(examples: Sequence[Example], spec: TaskKind) -> list[str] | None:
    """The second texts of a sentence-pair task (every example must have one), None for single texts."""
    if spec.text_pair == "required" or (spec.text_pair == "optional" and examples[0].text_pair is not None):
        missing = next((e for e in examples if e.text_pair is None), None)
        if missing is not None:
            raise LoraLabError(f"{missing.where}: a sentence-pair task needs a second text; "
                               "set --text-pair-column")
        return [example.text_pair for example in examples]
    if spec.text_pair == "never":
        paired = next((e for e in examples if e.text_pair is not None), None)
        if paired is not None:
            raise LoraLabError(f"{paired.where}: examples have a second text but the task is single-sentence "
                               f"{spec.name}; use --task pair-classification, or drop --text-pair-column")
    return None


def require_targets(examples: Sequence[Example], task: Task) -> None:
    """Training and evaluating a causal LM learn each example's target: a prompt without one (that is no
    conversation) is an error naming the flag that reads it. Other tasks: nothing to check here."""
    if not task.is_generative:
        return
    missing = next((e for e in examples if e.target is None and e.messages is None), None)
    if missing is not None:
        raise LoraLabError(f"{missing.where}: the example has a prompt but no target text for the causal LM to "
                           "learn; name the target column with --target-column (the prompt's with --text-column)")


def encode_examples(examples: Sequence[Example], tokenizer: Any, task: Task,
                    label_map: LabelMap | None = None, include_labels: bool = True) -> EncodedDataset:
    """Tokenize examples for `task`. Labels are included when include_labels is True and there is a
    label_map (classifiers) or a target (causal LM); otherwise features hold inputs only (prediction,
    and the prompts of generation-based evaluation).

    Causal LM: input_ids = prompt ids + target ids + [eos]; labels = IGNORE_INDEX for every prompt token,
    then the target ids and eos, so the loss covers only the target. Prompt and target are tokenized
    separately so the prompt tokens are exactly those the model is given at generation time; the prompt
    uses the tokenizer's special tokens (e.g. BOS) unless it comes from the chat template, which writes
    them itself. Examples without a target are encoded as prompts only (for generation).

    Chat examples (Example.messages) are rendered with the chat template; see `_encode_chat`.
    """
    if not examples:
        raise LoraLabError("no examples to encode")
    limit = task.token_limit
    chat = next((e for e in examples if e.messages is not None), None)
    if chat is not None and not task.is_generative:
        raise chat_needs_causal_lm(chat.where, task.kind)
    if chat is not None:
        return _encode_chat(examples, tokenizer, task, limit, include_labels)
    if task.is_generative:
        return _encode_causal(examples, tokenizer, task, limit, include_labels)
    if not include_labels:
        label_map = None
    if label_map is not None and label_map.regression != task.spec.is_regression:
        kind = "regression" if label_map.regression else "classification"
        raise LoraLabError(f"the label map is for {kind} but the task is {task.kind}; use --task {kind}")
    texts = [example.text for example in examples]
    pairs = _text_pairs(examples, task.spec)
    encoded = _tokenize(tokenizer, texts, pairs, truncation=True, max_length=limit)
    features = []
    for i, example in enumerate(examples):
        feature: dict[str, Any] = {"input_ids": encoded["input_ids"][i]}
        if "token_type_ids" in encoded:
            feature["token_type_ids"] = encoded["token_type_ids"][i]
        if label_map is not None:
            feature["labels"] = label_map.encode(example.label, example.source, example.line)
        features.append(feature)
    return EncodedDataset(features, examples, task)


def _encode_causal(examples: Sequence[Example], tokenizer: Any, task: Task, limit: int,
                   include_labels: bool) -> EncodedDataset:
    prompts = [format_prompt(example.text, tokenizer, task) for example in examples]
    # The chat template already writes BOS and role markers; adding special tokens again would double them.
    prompt_ids = _tokenize(tokenizer, prompts, add_special_tokens=not task.chat_template)["input_ids"]
    with_target = [i for i, example in enumerate(examples) if include_labels and example.target is not None]
    target_ids: dict[int, list[int]] = {}
    if with_target:
        eos_id = tokenizer.eos_token_id
        if eos_id is None:
            raise LoraLabError("the tokenizer has no EOS token, which causal LM training appends to every "
                               "target; use a causal LM tokenizer")
        encoded = _tokenize(tokenizer, [examples[i].target for i in with_target], add_special_tokens=False)
        target_ids = {i: ids + [eos_id] for i, ids in zip(with_target, encoded["input_ids"])}
    bos_id = getattr(tokenizer, "bos_token_id", None)
    features = []
    for i, prompt in enumerate(prompt_ids):
        if i in target_ids:
            prompt, target = _fit_causal(prompt, target_ids[i], limit, bos_id)
            features.append({"input_ids": prompt + target, "labels": [IGNORE_INDEX] * len(prompt) + target})
        else:
            prompt, _ = _fit_causal(prompt, [], limit, bos_id)
            features.append({"input_ids": prompt})
    return EncodedDataset(features, examples, task)


def _encode_chat(examples: Sequence[Example], tokenizer: Any, task: Task, limit: int,
                 include_labels: bool) -> EncodedDataset:
    """Chat examples (loralab.data.chat). With labels: the whole conversation as the template renders it,
    labels equal to the input ids on assistant tokens (content + end-of-turn marker) and IGNORE_INDEX
    elsewhere, cut to `limit` tokens from the right (input ids and labels alike); a conversation left
    with no assistant token is dropped (DroppedExamplesWarning; an error if none is left). Without
    labels: the generation prompt for the final assistant reply (render_chat_prompt of the conversation
    without its last assistant message), cut from the left like other causal LM prompts.
    """
    plain = next((e for e in examples if e.messages is None), None)
    if plain is not None:
        raise LoraLabError(f"{plain.where}: prompt/target examples mixed with chat examples (messages); "
                           "use one kind per data set")
    if not include_labels:
        prompts = [render_chat_prompt(tokenizer, prompt_messages(e.messages)) for e in examples]
        bos_id = getattr(tokenizer, "bos_token_id", None)
        ids = _tokenize(tokenizer, prompts, add_special_tokens=False)["input_ids"]
        return EncodedDataset([{"input_ids": _fit_causal(p, [], limit, bos_id)[0]} for p in ids], examples, task)
    silent = next((e for e in examples if not has_assistant_turn(e.messages)), None)
    if silent is not None:
        raise LoraLabError(f"{silent.where}: the conversation has no assistant turn (or only empty ones), so "
                           "nothing would be learned from it; add an assistant message, or remove the row")
    rendered = [assistant_spans(tokenizer, e.messages, e.where) for e in examples]
    try:
        encoded = _tokenize(tokenizer, [text for text, _ in rendered], add_special_tokens=False,
                            return_offsets_mapping=True)
    except NotImplementedError:
        raise LoraLabError("chat data needs a fast tokenizer (one that reports character offsets)") from None
    features, kept, dropped = [], [], []
    for example, (_, spans), ids, offsets in zip(examples, rendered, encoded["input_ids"], encoded["offset_mapping"]):
        trained = trained_token_mask(offsets, spans, example.where)[:limit]
        if not any(trained):
            dropped.append(example)
            continue
        features.append({"input_ids": ids[:limit],
                         "labels": [t if keep else IGNORE_INDEX for t, keep in zip(ids, trained)]})
        kept.append(example)
    if dropped:
        message = (f"{len(dropped)} of {len(examples)} conversations have no assistant token within the first "
                   f"{limit} tokens (first: {dropped[0].where}); raise max_length to train on them")
        if not kept:
            raise LoraLabError(message)
        warnings.warn(message + "; they are left out", DroppedExamplesWarning, stacklevel=3)
    return EncodedDataset(features, kept, task, dropped)
