"""Packing: best-fit rows, the block-diagonal mask, packed loss equal to unpacked loss on tiny LLaMA and GPT-2
(eager and sdpa attention), and a packed chat training run through the data pieces."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from loralab.data.batching import LengthGroupedBatchSampler, PadCollator
from loralab.data.encoding import IGNORE_INDEX, EncodedDataset, Task, encode_examples
from loralab.data.packing import block_causal_mask, pack_examples, pack_rows
from loralab.data.readers import ReadOptions, read_examples
from loralab.errors import LoraLabError
from loralab.testing import tiny_model
from loralab.training.config import TrainConfig

LENGTHS = [5, 9, 3, 12, 7, 4, 6, 2, 8]


def random_causal_set(lengths=LENGTHS, seed: int = 0) -> EncodedDataset:
    """Causal LM features of the given lengths, the first third of each a prompt (labels IGNORE_INDEX)."""
    generator = torch.Generator().manual_seed(seed)
    features = []
    for n in lengths:
        ids = torch.randint(3, 100, (n,), generator=generator).tolist()
        features.append({"input_ids": ids, "labels": [IGNORE_INDEX] * (n // 3) + ids[n // 3:]})
    return EncodedDataset(features, [None] * len(features), Task("causal-lm"))


def test_best_fit_decreasing_rows_by_hand():
    # longest first: 12 opens row A (4 left), 9 row B (7 left), 8 row C (8 left); 7 fits B exactly;
    # 6 goes to C (2 left); 5 opens row D (11 left); 4 fills A; 3 goes to D (8 left); 2 fills C.
    assert pack_rows(LENGTHS, 16) == [[3, 5], [1, 4], [6, 7, 8], [0, 2]]
    packed = pack_examples(random_causal_set(), 16)
    assert packed.lengths == [16, 16, 16, 8] and packed.fill == pytest.approx(56 / 64)
    assert sorted(i for row in packed.rows for i in row) == list(range(len(LENGTHS)))
    assert pack_rows([4, 4, 4], 4) == [[0], [1], [2]]


def test_packed_row_features():
    data = random_causal_set()
    row = pack_examples(data, 16)[0]  # examples 3 (12 tokens) and 5 (4 tokens)
    assert row["input_ids"] == data[3]["input_ids"] + data[5]["input_ids"]
    assert row["position_ids"] == list(range(12)) + list(range(4))
    # every example's first label is ignored: nothing predicts across the boundary
    assert row["labels"] == [IGNORE_INDEX] + data[3]["labels"][1:] + [IGNORE_INDEX] + data[5]["labels"][1:]


def test_block_causal_mask_by_hand():
    # one row: example of 2 tokens, example of 1 token, one pad
    mask = block_causal_mask(torch.tensor([[0, 1, 0, 0]]), [3])
    allowed = (mask == 0).int()[0, 0].tolist()
    assert allowed == [[1, 0, 0, 0],
                       [1, 1, 0, 0],
                       [0, 0, 1, 0],
                       [0, 0, 0, 1]]  # the pad attends to itself only, so no softmax row is empty
    assert mask.dtype == torch.float32 and mask.shape == (1, 1, 4, 4)
    assert mask.min() == torch.finfo(torch.float32).min


def token_loss_sum(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Sum of next-token cross-entropies over labelled tokens, and their count."""
    labels = batch.pop("labels")
    logits = model(**batch).logits
    scored = labels[:, 1:] != IGNORE_INDEX
    loss = nn.functional.cross_entropy(logits[:, :-1][scored], labels[:, 1:][scored], reduction="sum")
    return loss, int(scored.sum())


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@torch.no_grad()
def test_packed_loss_equals_unpacked_loss(family, attention):
    # initializer_range 0.2 (not 0.02): outputs then depend on context enough to show a leak across examples
    model = tiny_model(family, initializer_range=0.2)
    model.set_attn_implementation(attention)
    data = random_causal_set()
    collator = PadCollator(pad_token_id=0)
    unpacked_sum, unpacked_count = 0.0, 0
    for feature in data.features:
        loss, count = token_loss_sum(model, collator([feature]))
        unpacked_sum, unpacked_count = unpacked_sum + loss, unpacked_count + count
    packed = pack_examples(data, 16)
    batch = collator([packed[i] for i in range(len(packed))])
    assert batch["attention_mask"].shape == (4, 1, 16, 16) and batch["position_ids"].shape == (4, 16)
    packed_sum, packed_count = token_loss_sum(model, dict(batch))
    assert packed_count == unpacked_count == 39
    assert abs(float(packed_sum) / packed_count - float(unpacked_sum) / unpacked_count) < 1e-5
    assert abs(float(model(**batch).loss) - float(unpacked_sum) / unpacked_count) < 1e-5  # the model's own loss
    # without the block mask and position resets the rows would read across examples: clearly different
    padding = (torch.arange(16) < torch.tensor(packed.lengths)[:, None]).long()
    naive_sum, _ = token_loss_sum(model, {"input_ids": batch["input_ids"], "labels": batch["labels"],
                                          "attention_mask": padding})
    assert abs(float(naive_sum) - float(unpacked_sum)) / unpacked_count > 5e-3


def test_packed_gradients_equal_unpacked_gradients():
    model = tiny_model("llama", initializer_range=0.2)
    data = random_causal_set()
    collator = PadCollator(pad_token_id=0)
    total = sum(token_loss_sum(model, collator([f]))[0] for f in data.features)
    total.backward()
    unpacked = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    packed = pack_examples(data, 16)
    token_loss_sum(model, collator([packed[i] for i in range(len(packed))]))[0].backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, unpacked[name], rtol=1e-4, atol=1e-4, msg=name)  # grads up to ~16


def test_packed_chat_training_end_to_end(tmp_path, chat_tokenizer):
    """A chat JSONL -> read -> encode (loss on assistant tokens) -> pack -> sampler + collator -> LoRA steps."""
    import loralab

    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]},
            {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what is two plus two ?"},
                          {"role": "assistant", "content": "four"}]},
            {"prompt": "name the colour of the sky", "completion": "blue"},
            {"messages": [{"role": "user", "content": "thanks"}, {"role": "assistant", "content": "you are welcome"},
                          {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}] * 3
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    encoded = encode_examples(read_examples(path, ReadOptions(format="chat")), chat_tokenizer,
                              Task("causal-lm", max_length=32))
    packed = pack_examples(encoded, 32)
    assert sum(packed.lengths) == sum(encoded.lengths) and len(packed) < len(encoded)  # 12 examples, fewer rows

    model = tiny_model("llama", vocab_size=len(chat_tokenizer))
    loralab.inject(model, loralab.LoraConfig(r=4, alpha=8, targets=["q_proj", "v_proj"]))
    collator = PadCollator(pad_token_id=chat_tokenizer.pad_token_id)
    everything = collator([packed[i] for i in range(len(packed))])
    unpacked = collator(encoded.features)  # one padded batch of all examples: the same mean token loss

    def losses() -> tuple[float, float]:
        with torch.no_grad():
            return float(model.eval()(**everything).loss), float(model(**unpacked).loss)

    packed_before, unpacked_before = losses()
    assert abs(packed_before - unpacked_before) < 1e-5
    sampler = LengthGroupedBatchSampler(packed.lengths, batch_size=2, seed=0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        for indices in sampler:
            loss = model.train()(**collator([packed[i] for i in indices])).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    packed_after, unpacked_after = losses()
    assert abs(packed_after - unpacked_after) < 1e-5
    assert packed_after < packed_before - 0.1  # the assistant tokens were learned


def test_packing_errors_and_config():
    with pytest.raises(LoraLabError, match="an example has 12 tokens, more than the packed length 10"):
        pack_examples(random_causal_set(), 10)
    classes = EncodedDataset([{"input_ids": [1, 2], "labels": 0}], [None], Task("classification"))
    with pytest.raises(LoraLabError, match="packing applies to causal LM training data"):
        pack_examples(classes, 16)
    packed = pack_examples(random_causal_set(), 16)
    with pytest.raises(LoraLabError, match="padded on the right"):
        PadCollator(0, padding_side="left")([packed[0]])
    assert TrainConfig(data="e2e", packing=True).packing
    with pytest.raises(LoraLabError, match="packing applies to causal LM training, not the classification task"):
        TrainConfig(data="sst2", packing=True)
    with pytest.raises(LoraLabError, match="packing must be true or false"):
        TrainConfig(data="e2e", packing="yes")
