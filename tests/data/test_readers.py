"""Reading data files: TSV, CSV, JSONL, E2E, saved datasets folders, compressed files; one-line errors."""
from __future__ import annotations

import bz2
import csv
import gzip
import json
import lzma

import pytest

from loralab.data import readers
from loralab.data.readers import DataFormatWarning, ReadOptions, data_format, read_examples
from loralab.errors import LoraLabError


def test_tsv_csv_jsonl_and_compressed_read_the_same_examples(write_file, tmp_path):
    expected = [("a good film", "1"), ('said "fine", then left', "0")]
    tsv = write_file("d.tsv", "label\tsentence\n1\ta good film \n\n0\t\"said \"\"fine\"\", then left\"\n")
    csv_path = write_file("d.csv", "sentence,label\r\na good film,1\r\n\"said \"\"fine\"\", then left\",0\r\n")
    jsonl = write_file("d.jsonl", "\n".join(json.dumps({"sentence": t, "label": int(l)}) for t, l in expected))
    gz = tmp_path / "d.tsv.gz"
    gz.write_bytes(gzip.compress(tsv.read_bytes()))
    for path in (tsv, csv_path, jsonl, gz):
        got = [(e.text, str(e.label)) for e in read_examples(path)]
        assert got == expected, path
    assert [e.line for e in read_examples(tsv)] == [2, 4]  # the blank line 3 is skipped, not counted away


def test_columns_by_index_without_header_and_latin1(write_file):
    path = write_file("t.csv", "positive,0.9,caf\u00e9 au lait\nnegative,0.4,na\u00efve\n", encoding="latin-1")
    options = ReadOptions(text_column=2, label_column=0, header=False, encoding="latin-1")
    assert [(e.text, e.label) for e in read_examples(path, options)] == [("caf\u00e9 au lait", "positive"),
                                                                       ("na\u00efve", "negative")]
    with pytest.raises(LoraLabError, match=r"t.csv:1: byte 0xe9 .* not valid utf-8-sig.*--encoding"):
        read_examples(path, ReadOptions(text_column=2, label_column=0, header=False))


def test_quoting_off_keeps_quotes_literal(write_file):
    path = write_file("q.tsv", 'sentence\tlabel\n"quoted" start\t1\n')
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
    # Added with the split into loralab.data: more bad files, each one line.
    ("null.jsonl", '{"sentence": "a", "label": null}\n', ReadOptions(), r"null.jsonl:1: column 'label' is empty \(null\)$"),
    ("nullarray.jsonl", '["a", null]\n', ReadOptions(text_column=0, label_column=1),
     r"nullarray.jsonl:1: column 1 is empty \(null\)$"),
    ("blank.tsv", "\n \n", ReadOptions(), r"blank.tsv: the file is empty"),
    ("empty.jsonl", "", ReadOptions(), r"empty.jsonl: the file holds no examples"),
    ("empty.txt", "\n", ReadOptions(format="e2e"), r"empty.txt: the file holds no examples"),
    ("nobom.tsv", "sentence\tlabel\n", ReadOptions(encoding="utf-16"), r"nobom.tsv:1: .* not valid utf-16; pass"),
])
def test_read_errors_name_file_line_and_column(write_file, name, text, options, message):
    path = write_file(name, text)
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


@pytest.mark.parametrize("name, content", [
    ("plain.tsv.gz", b"sentence\tlabel\nx\t1\n"),                     # not compressed at all
    ("bad.tsv.bz2", b"BZh9 not really"),
    ("bad.tsv.xz", b"\xfd7zXZ\x00 broken"),
    ("cut.tsv.gz", gzip.compress(b"sentence\tlabel\n" + b"".join(b"%d\t1\n" % i for i in range(5000)))[:-20]),
])
def test_corrupt_or_mislabelled_compressed_files_are_one_line(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(LoraLabError, match=rf"{name}: not a readable (gz|bz2|xz) file .*rename it without the "):
        read_examples(path, ReadOptions(encoding="latin-1"))


def test_bz2_and_xz_files_read_like_the_plain_file(tmp_path):
    text = b"sentence\tlabel\na\t1\nb\t0\n"
    (tmp_path / "d.tsv.bz2").write_bytes(bz2.compress(text))
    (tmp_path / "d.tsv.xz").write_bytes(lzma.compress(text))
    for name in ("d.tsv.bz2", "d.tsv.xz"):
        assert [(e.text, e.label) for e in read_examples(tmp_path / name)] == [("a", "1"), ("b", "0")]


def test_unreadable_file_is_one_line(write_file, monkeypatch):
    """Root ignores permission bits, so the OSError is injected where the file is opened."""
    path = write_file("locked.tsv", "sentence\tlabel\nx\t1\n")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(readers, "open", refuse, raising=False)
    with pytest.raises(LoraLabError, match=r"locked.tsv: cannot read the file \(Permission denied\)$"):
        read_examples(path)


def test_csv_field_limit_is_raised_only_while_reading(write_file):
    default = csv.field_size_limit()
    assert default < 300_000  # importing loralab.data.readers left the process-wide limit alone
    long_text = "x" * 300_000  # past csv's default 128 KiB per field
    path = write_file("long.csv", f'sentence,label\n"{long_text}",1\n')
    assert read_examples(path)[0].text == long_text
    assert csv.field_size_limit() == default
    bad = write_file("bad.csv", f'sentence,label\n"{long_text}",1\n"open quote,0\n')
    with pytest.raises(LoraLabError, match="unreadable row"):
        read_examples(bad)
    assert csv.field_size_limit() == default  # restored after an error too


# -- issue 18: data errors name the flag; non-finite labels; causal-LM columns ---------------------------


@pytest.mark.parametrize("name, text, options, message", [
    ("key.jsonl", '{"sentence": "a", "label": 1}\n{"sentence": "b"}\n', ReadOptions(),
     "2: column 'label' is missing; fields present: sentence; name the label column with --label-column"),
    ("pair.jsonl", '{"sentence": "a", "label": 1}\n', ReadOptions(text_pair_column="second"),
     "1: column 'second' is missing; fields present: sentence, label; name the text pair column "
     "with --text-pair-column"),
    ("array.jsonl", '["a", 1]\n', ReadOptions(label_column=1),
     "1: the line is a JSON array, so column 'sentence' must be given as a 0-based index "
     "(--text-column N)"),
])
def test_a_missing_column_names_the_flag_that_chooses_it(write_file, name, text, options, message):
    path = write_file(name, text)
    with pytest.raises(LoraLabError) as caught:
        read_examples(path, options)
    assert str(caught.value) == f"{path}:{message}"


@pytest.mark.parametrize("literal, shown", [("NaN", "nan"), ("Infinity", "inf"), ("-Infinity", "-inf")])
def test_a_non_finite_json_label_is_refused_naming_file_line_and_value(write_file, literal, shown):
    path = write_file("reg.jsonl", '{"sentence": "a", "label": 1.5}\n\n{"sentence": "b", "label": %s}\n' % literal)
    with pytest.raises(LoraLabError) as caught:
        read_examples(path)
    assert str(caught.value) == (f"{path}:3: column 'label' (the label) is {shown}, not a finite number; "
                                 "fix or remove this row")


def test_causal_lm_reads_prompt_and_target_columns_and_no_label(write_file):
    path = write_file("lm.jsonl", '{"prompt": "name : X", "target": "X is a pub."}\n')
    options = readers.options_for_task("causal-lm", {"text_column": "prompt", "target_column": "target"})
    assert options.label_column is None
    [example] = read_examples(path, options)
    assert (example.text, example.target, example.label) == ("name : X", "X is a pub.", None)
    # a label column the user names is still read
    assert readers.options_for_task("causal-lm", {"label_column": "y"}).label_column == "y"
    assert readers.options_for_task("classification", {}) == ReadOptions()


def test_a_target_column_with_a_classifier_task_names_the_task_flag():
    with pytest.raises(LoraLabError) as caught:
        readers.options_for_task("classification", {"text_column": "prompt", "target_column": "target"})
    assert str(caught.value) == ("--target-column names the completion a causal LM learns, but the task is "
                                 "classification; add --task causal-lm, or drop --target-column and name the "
                                 "label with --label-column")


MESSAGES = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


@pytest.mark.parametrize("row", [{"messages": MESSAGES}, {"prompt": "hi", "completion": "hello"},
                                 {"instruction": "hi", "output": "hello"}])
def test_a_jsonl_of_conversations_is_read_as_chat_without_format(write_file, row, recwarn):
    path = write_file("trl.jsonl", json.dumps(row) + "\n")
    assert data_format(path, ReadOptions()) == "chat"
    (example,) = read_examples(path)
    assert [m["content"] for m in example.messages] == ["hi", "hello"]
    assert not recwarn.list            # unambiguous: nothing said


def test_a_row_with_both_columns_and_a_conversation_is_read_as_columns_and_said(write_file):
    path = write_file("both.jsonl", json.dumps({"sentence": "ok", "label": 1, "messages": MESSAGES}) + "\n")
    with pytest.warns(DataFormatWarning) as caught:
        (example,) = read_examples(path)
    assert (example.text, example.label, example.messages) == ("ok", 1, None)
    assert [str(w.message) for w in caught] == [
        f"{path}: read as columns 'sentence', 'label'; its rows also hold a conversation ('messages'): "
        "pass --format chat to train on the conversation"]
    assert data_format(path, ReadOptions(format="chat")) == "chat"


def test_a_jsonl_without_a_conversation_stays_columns(write_file):
    path = write_file("plain.jsonl", json.dumps({"text": "ok"}) + "\n")
    assert data_format(path, ReadOptions()) == "jsonl"
    with pytest.raises(LoraLabError, match="column 'sentence' is missing"):
        read_examples(path)
