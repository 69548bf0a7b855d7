"""Chat data: conversations through the chat template, the loss only on assistant tokens (counts by hand),
truncation, prompts for generation, and the template checks."""
from __future__ import annotations

import json
import warnings

import pytest

from loralab.data.chat import (assistant_spans, chat_prompt_ids, check_messages, conversation_from_row,
                               render_chat_prompt)
from loralab.data.encoding import IGNORE_INDEX, DroppedExamplesWarning, Task, encode_examples, format_prompt
from loralab.data.examples import Example
from loralab.data.labels import LabelMap
from loralab.data.readers import ReadOptions, read_examples
from loralab.errors import LoraLabError

TWO_TURNS = check_messages([
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4"},
])


def trained(feature: dict) -> list[int]:
    return [label for label in feature["labels"] if label != IGNORE_INDEX]


def test_smollm2_two_turns_with_a_system_message_train_only_the_assistant_tokens(smollm2_tokenizer):
    tokenizer = smollm2_tokenizer
    feature = encode_examples([Example.from_messages(TWO_TURNS)], tokenizer, Task("causal-lm"))[0]
    # Worked out by hand from SmolLM2's ChatML template and its BPE (token by token):
    #   <|im_start|> system \n You ␣are ␣ter se . <|im_end|> \n     10
    #   <|im_start|> user \n Hi ␣there <|im_end|> \n                  7
    #   <|im_start|> ass istant \n                                      4   header: not trained
    #   Hello ! ␣How ␣can ␣I ␣help ? <|im_end|>                        8   trained
    #   \n                                                              1   not trained
    #   <|im_start|> user \n What ␣is ␣ 2 + 2 ? <|im_end|> \n          12
    #   <|im_start|> ass istant \n                                      4
    #   4 <|im_end|>                                                    2   trained
    #   \n                                                              1
    assert len(feature["input_ids"]) == 49
    assert len(trained(feature)) == 10
    assert [i for i, label in enumerate(feature["labels"]) if label != IGNORE_INDEX] == [*range(21, 29), 46, 47]
    # The same tokens found independently: each assistant content tokenized alone, then the end-of-turn token.
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert end_of_turn == tokenizer.eos_token_id == 2
    content = [tokenizer(m["content"], add_special_tokens=False)["input_ids"] for m in TWO_TURNS if m["role"] == "assistant"]
    assert [len(ids) for ids in content] == [7, 1]
    assert trained(feature) == content[0] + [end_of_turn] + content[1] + [end_of_turn]
    assert all(label in (IGNORE_INDEX, token) for label, token in zip(feature["labels"], feature["input_ids"]))


def test_smollm2_generation_prompt_is_the_training_prefix(smollm2_tokenizer):
    tokenizer = smollm2_tokenizer
    prompt = render_chat_prompt(tokenizer, TWO_TURNS[:4])
    assert prompt == ("<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
                      "<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
                      "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    feature = encode_examples([Example.from_messages(TWO_TURNS)], tokenizer, Task("causal-lm"))[0]
    ids = chat_prompt_ids(tokenizer, TWO_TURNS[:4])
    assert len(ids) == 46 and ids == feature["input_ids"][:46]  # what generation sees = what training saw
    # prediction inputs drop the final assistant reply and end with the assistant header
    prompt_only = encode_examples([Example.from_messages(TWO_TURNS)], tokenizer, Task("causal-lm"),
                                  include_labels=False)[0]
    assert prompt_only == {"input_ids": ids}


def test_simple_template_counts_by_hand(chat_tokenizer):
    tokenizer = chat_tokenizer
    messages = check_messages([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                               {"role": "assistant", "content": "hello there"},
                               {"role": "user", "content": "what is two plus two ?"},
                               {"role": "assistant", "content": "four"}])
    full, spans = assistant_spans(tokenizer, messages)
    assert full == ("<system> be brief </turn> <user> hi </turn> <assistant> hello there </turn> "
                    "<user> what is two plus two ? </turn> <assistant> four </turn> ")
    assert [full[a:b] for a, b in spans] == ["hello there </turn>", "four </turn>"]
    feature = encode_examples([Example.from_messages(messages)], tokenizer, Task("causal-lm"))[0]
    # words: system turn 4, user turn 3, "<assistant>" 1 + "hello there </turn>" 3, user turn 8,
    # "<assistant>" 1 + "four </turn>" 2 = 22 tokens, 5 of them trained
    vocab = tokenizer.get_vocab()
    assert len(feature["input_ids"]) == 22
    assert trained(feature) == [vocab[w] for w in "hello there </turn> four </turn>".split()]
    assert [i for i, label in enumerate(feature["labels"]) if label != IGNORE_INDEX] == [8, 9, 10, 20, 21]


def test_truncation_keeps_labels_aligned_and_drops_conversations_with_nothing_to_train(chat_tokenizer):
    tokenizer = chat_tokenizer
    long = Example.from_messages(check_messages([
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello there"}, {"role": "user", "content": "thanks"},
        {"role": "assistant", "content": "you are welcome"}]), source="chat.jsonl", line=1)
    short = Example.from_messages(check_messages([{"role": "user", "content": "hi"},
                                                  {"role": "assistant", "content": "hello"}]), "chat.jsonl", 2)
    full = encode_examples([long], tokenizer, Task("causal-lm"))[0]
    assert len(full["input_ids"]) == 19  # turns of 4, 3, 1 + 3, 3, 1 + 4 words
    for limit, kept in [(12, 3), (9, 1)]:  # positions 8, 9, 10 hold "hello there </turn>"
        cut = encode_examples([long], tokenizer, Task("causal-lm", max_length=limit))[0]
        assert cut["input_ids"] == full["input_ids"][:limit] and cut["labels"] == full["labels"][:limit]
        assert len(trained(cut)) == kept
    with pytest.warns(DroppedExamplesWarning, match="1 of 2 conversations have no assistant token within the "
                                                    r"first 8 tokens \(first: chat.jsonl:1\)"):
        encoded = encode_examples([long, short], tokenizer, Task("causal-lm", max_length=8))
    assert len(encoded) == 1 and encoded.examples == [short] and encoded.dropped == [long]
    with pytest.raises(LoraLabError, match="1 of 1 conversations have no assistant token"):
        encode_examples([long], tokenizer, Task("causal-lm", max_length=8))
    no_reply = Example.from_messages(check_messages([{"role": "user", "content": "hi"}]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing dropped, nothing said
        assert len(encode_examples([short], tokenizer, Task("causal-lm"))) == 1
    assert len(encode_examples([no_reply], tokenizer, Task("causal-lm"), include_labels=False)) == 1  # a prompt


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}],
])
def test_a_conversation_with_no_assistant_turn_says_so_not_max_length(chat_tokenizer, messages):
    good = Example.from_messages(check_messages([{"role": "user", "content": "hi"},
                                                 {"role": "assistant", "content": "hello"}]), "chat.jsonl", 1)
    silent = Example.from_messages(check_messages(messages), "chat.jsonl", 3)
    with pytest.raises(LoraLabError) as caught:
        encode_examples([good, silent], chat_tokenizer, Task("causal-lm"))
    assert str(caught.value) == ("chat.jsonl:3: the conversation has no assistant turn (or only empty ones), so "
                                 "nothing would be learned from it; add an assistant message, or remove the row")


def test_inconsistent_prefix_rendering_and_straddling_tokens_are_errors(chat_tokenizer_for):
    messages = check_messages([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    # marks the last message, so a prefix renders differently from the start of the whole conversation
    marks_last = ("{% for m in messages %}{% if loop.last %}<last> {% endif %}<{{ m['role'] }}> {{ m['content'] }} "
                  "</turn> {% endfor %}{% if add_generation_prompt %}<assistant> {% endif %}")
    with pytest.raises(LoraLabError, match="chat.jsonl:3: the chat template renders conversation prefixes "
                                           "inconsistently at message 1"):
        assistant_spans(chat_tokenizer_for(marks_last), messages, "chat.jsonl:3")
    # the generation prompt has no space before the answer: "<assistant>hello" is one word, one token
    glued = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }} </turn> {% endfor %}"
             "{% if add_generation_prompt %}<assistant>{% endif %}")
    with pytest.raises(LoraLabError, match="across the edge of an assistant turn"):
        encode_examples([Example.from_messages(messages)], chat_tokenizer_for(glued), Task("causal-lm"))
    strict = "{{ raise_exception('roles must alternate') }}"
    with pytest.raises(LoraLabError, match="the chat template refused the conversation \\(roles must alternate\\)"):
        encode_examples([Example.from_messages(messages)], chat_tokenizer_for(strict), Task("causal-lm"))


def test_render_chat_prompt_is_the_one_prompt_renderer(chat_tokenizer):
    messages = [{"role": "user", "content": "hi"}]
    assert render_chat_prompt(chat_tokenizer, messages) == "<user> hi </turn> <assistant> "
    vocab = chat_tokenizer.get_vocab()
    assert chat_prompt_ids(chat_tokenizer, messages) == [vocab[w] for w in "<user> hi </turn> <assistant>".split()]
    # single-turn prompts of Task(chat_template=True) go through it too
    assert format_prompt("hi", chat_tokenizer, Task("causal-lm", chat_template=True)) == render_chat_prompt(
        chat_tokenizer, messages)
    with pytest.raises(LoraLabError, match="already ends with an assistant message"):
        render_chat_prompt(chat_tokenizer, messages + [{"role": "assistant", "content": "hello"}])
    chat_tokenizer.chat_template = None
    with pytest.raises(LoraLabError, match="the tokenizer has no chat template"):
        render_chat_prompt(chat_tokenizer, messages)


def test_message_checks():
    assert check_messages([{"role": "user", "content": "hi", "name": "x"}]) == ({"role": "user", "content": "hi"},)
    for bad, message in [([], "non-empty list"), ("hi", "non-empty list"), ([{"role": "user"}], "message 0 must be"),
                         ([{"role": "tool", "content": "x"}], "message 0 has role 'tool'; use one of system, user, "
                                                              "assistant"),
                         ([{"role": "user", "content": ["x"]}], "message 0 content must be text, got list"),
                         ([{"role": "user", "content": "x"}, {"role": "system", "content": "y"}],
                          "a system message may only come first")]:
        with pytest.raises(LoraLabError, match=message):
            check_messages(bad, "f.jsonl:2")


def test_chat_files_read_three_row_shapes(write_file):
    rows = [
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                      {"role": "assistant", "content": "hello"}]},
        {"prompt": "name the colour of the sky", "completion": "blue"},
        {"prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "assistant", "content": "hello"}]},
        {"instruction": "name the colour of the sky", "input": "the sky", "output": "blue"},
        {"instruction": "hi", "input": "", "output": "hello"},
    ]
    path = write_file("chat.jsonl", "\n".join(json.dumps(row) for row in rows) + "\n\n")
    examples = read_examples(path, ReadOptions(format="chat"))
    assert [len(e.messages) for e in examples] == [3, 2, 2, 2, 2]
    assert examples[1].messages == ({"role": "user", "content": "name the colour of the sky"},
                                    {"role": "assistant", "content": "blue"})
    assert examples[3].messages[0]["content"] == "name the colour of the sky\n\nthe sky"
    assert examples[4].messages[0]["content"] == "hi"
    assert (examples[0].text, examples[0].target, examples[0].where) == ("hi", "hello", f"{path}:1")
    bad = write_file("bad.jsonl", json.dumps({"text": "hi"}) + "\n")
    with pytest.raises(LoraLabError, match="bad.jsonl:1: a chat row needs one of .*fields present: text"):
        read_examples(bad, ReadOptions(format="chat"))
    columns = write_file("lm.jsonl", json.dumps({"prompt": "name : X", "target": "X is a pub."}) + "\n")
    with pytest.raises(LoraLabError) as caught:   # prompt/target columns read as chat: the flags that read them
        read_examples(columns, ReadOptions(format="chat"))
    assert str(caught.value).endswith("fields present: prompt, target (for prompt/target columns use --format "
                                      "jsonl --task causal-lm --text-column C --target-column C)")
    assert conversation_from_row({"prompt": "a", "completion": "b", "messages": [{"role": "user", "content": "m"}]},
                                 "x")[0]["content"] == "m"  # messages win


def test_chat_examples_need_the_causal_lm_task_and_one_kind_of_example(chat_tokenizer):
    chat = Example.from_messages(check_messages([{"role": "user", "content": "hi"},
                                                 {"role": "assistant", "content": "hello"}]), "c.jsonl", 4)
    expected = ("c.jsonl:4: chat data (messages) trains a causal LM, but the task is {task}; use --task causal-lm, "
                "or for {task} give a TSV/CSV/JSONL file with --text-column and --label-column")
    with pytest.raises(LoraLabError) as caught:
        encode_examples([chat], chat_tokenizer, Task("classification"))
    assert str(caught.value) == expected.format(task="classification")
    # the label map is built first in a run: it says the same, not "example has no label"
    for regression, task in ((False, "classification"), (True, "regression")):
        with pytest.raises(LoraLabError) as caught:
            LabelMap.from_examples([chat], regression=regression)
        assert str(caught.value) == expected.format(task=task)
    with pytest.raises(LoraLabError, match="prompt/target examples mixed with chat examples"):
        encode_examples([chat, Example("hi", target="hello")], chat_tokenizer, Task("causal-lm"))


def test_chat_rows_from_a_saved_datasets_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    conversations = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
                     [{"role": "system", "content": "be brief"}, {"role": "user", "content": "thanks"},
                      {"role": "assistant", "content": "you are welcome"}]]
    datasets.Dataset.from_dict({"messages": conversations}).save_to_disk(str(tmp_path / "hf"))
    examples = read_examples(tmp_path / "hf", ReadOptions(format="chat"))
    assert [list(e.messages) for e in examples] == conversations
    assert [e.where for e in examples] == [f"{tmp_path / 'hf'}:1", f"{tmp_path / 'hf'}:2"]
