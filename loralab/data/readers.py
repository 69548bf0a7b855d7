"""Reading data files: `read_examples(path, ReadOptions(...))` turns a TSV, CSV, JSONL, E2E (`mr||text`)
or chat (JSONL conversations) file, optionally compressed (.gz/.bz2/.xz), or a folder saved with
`datasets.Dataset.save_to_disk` into a list of `Example`s (raw strings, no tokenizer).

Every user-facing error is one line naming the file, the line and the column. The file formats and the
reading rules are documented in docs/data.md.
"""
from __future__ import annotations

import bz2
import codecs
import contextlib
import csv
import gzip
import io
import json
import lzma
import math
import os
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loralab.data.chat import conversation_from_row, row_shape
from loralab.data.examples import Column, Example
from loralab.data.tasks import task_kind
from loralab.errors import LoraLabError, choose
from loralab.metrics.e2e import parse_e2e_line

FORMATS = ("tsv", "csv", "jsonl", "e2e", "hf", "chat")

_COMPRESSED = {".bz2": bz2.open, ".gz": gzip.open, ".xz": lzma.open}
_SUFFIX_FORMATS = {".tsv": "tsv", ".tab": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
# Review texts run to tens of kilobytes, past csv's default 128 KiB cap per field. The cap is process-wide,
# so it is raised only while a file is read (`_csv_field_limit`), never at import.
CSV_FIELD_LIMIT = 1 << 30


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

    format: "tsv", "csv", "jsonl", "e2e" (`mr||text` per line), "hf" (a `save_to_disk` folder) or "chat"
        (conversations, one JSON object per line or one row of a `save_to_disk` folder; see
        loralab.data.chat.conversation_from_row; the column options are not used);
        None infers it from the name (.tsv/.tab, .csv, .jsonl/.ndjson, optionally + .gz/.bz2/.xz; a folder
        is "hf") and, for JSONL, from the first row (`data_format`): rows holding a conversation (`messages`,
        `prompt` + `completion`, `instruction` + `output`) and not the columns asked for are "chat". E2E
        files end in .txt, so "e2e" is given explicitly.
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
        if self.format is not None:
            choose(self.format, FORMATS, "data format")
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


def options_for_task(task: str, given: Mapping[str, Any] | None = None) -> ReadOptions:
    """ReadOptions for the data of `task`, from the fields a user gave (flags, a config's read_options).

    A causal LM's example is a prompt (--text-column) and the completion it learns (--target-column), so
    no label column is read unless one is given; --target-column with a classifier task is refused (the
    user meant causal-lm, or the column would be read and never used).
    """
    given = dict(given or {})
    if task_kind(task).is_generative:
        return ReadOptions(**{"label_column": None, **given})
    if given.get("target_column") is not None:
        raise LoraLabError(f"--target-column names the completion a causal LM learns, but the task is {task}; "
                           "add --task causal-lm, or drop --target-column and name the label with --label-column")
    return ReadOptions(**given)


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


class DataFormatWarning(UserWarning):
    """A data file that fits two formats: which one it is read as, and the flag that picks the other."""


def data_format(path: str | os.PathLike[str], options: ReadOptions) -> str:
    """The format `read_examples` reads `path` in: `options.format`, else from the name, and a JSONL file's
    first row decides between "jsonl" (columns) and "chat" (a conversation). A row that holds both the
    columns asked for and a conversation is read as columns, with a DataFormatWarning saying so."""
    path = Path(path)
    fmt = options.format or _infer_format(path)
    if options.format is not None or fmt != "jsonl":
        return fmt
    row = next((row for _, row in _jsonl_rows(path, options)), None)
    shape = row_shape(row) if isinstance(row, dict) else None
    if shape is None:
        return "jsonl"
    columns = list(options.columns().values())
    if not all(col in row for col in columns):
        return "chat"
    warnings.warn(f"{path}: read as columns {', '.join(map(repr, columns))}; its rows also hold a conversation "
                  f"({shape}): pass --format chat to train on the conversation", DataFormatWarning, stacklevel=2)
    return "jsonl"


def _open_text(path: Path, encoding: str) -> io.TextIOBase:
    opener = _COMPRESSED.get(path.suffix.lower())
    if opener is not None:
        return opener(path, "rt", encoding=encoding, newline="")
    return open(path, encoding=encoding, newline="")


def _decode_error(path: Path, encoding: str, exc: UnicodeError) -> LoraLabError:
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
    reason = getattr(exc, "reason", None) or str(exc)
    return LoraLabError(f"{path}: not valid {encoding} ({reason}); pass the file's encoding with --encoding")


def _read_error(path: Path, exc: BaseException) -> LoraLabError:
    """One line for a file that cannot be read: an OS error, or a corrupt or mislabelled compressed file."""
    suffix = path.suffix.lower()
    if suffix in _COMPRESSED and not isinstance(exc, PermissionError):
        return LoraLabError(f"{path}: not a readable {suffix[1:]} file ({exc}); if it is not compressed, "
                            f"rename it without the {suffix} suffix")
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return LoraLabError(f"{path}: cannot read the file ({reason})")


@contextlib.contextmanager
def _csv_field_limit(limit: int) -> Iterator[None]:
    """Raise csv's per-field size cap to at least `limit` bytes while a file is read, then restore it.

    The cap is global to the process: restoring it keeps other csv users (and later reads) unaffected.
    """
    previous = csv.field_size_limit()
    csv.field_size_limit(max(previous, limit))
    try:
        yield
    finally:
        csv.field_size_limit(previous)


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


def _flag(key: str) -> str:
    """The command-line flag that names the column of Example field `key` ("text_pair" -> --text-pair-column)."""
    return f"--{key.replace('_', '-')}-column"


def _cell(path: Path, line: int, row: list[Any] | dict[str, Any], key: str, column: Column,
          position: int | None) -> Any:
    """Field `key` of a row, read from `column`; a missing field is an error naming file, line, column and
    the flag that chooses another column."""
    if isinstance(row, dict):
        if isinstance(column, int):
            names = list(row.keys())
            if column >= len(names):
                raise LoraLabError(f"{path}:{line}: row has {len(names)} fields, no {_describe(column)}; "
                                   f"name the {key.replace('_', ' ')} column with {_flag(key)}")
            column = names[column]
        if column not in row:
            raise LoraLabError(f"{path}:{line}: {_describe(column)} is missing; fields present: "
                               f"{', '.join(map(str, row.keys()))}; name the {key.replace('_', ' ')} column with "
                               f"{_flag(key)}")
        if row[column] is None:
            raise LoraLabError(f"{path}:{line}: {_describe(column)} is empty (null)")
        return row[column]
    if position is None:
        raise LoraLabError(f"{path}:{line}: the line is a JSON array, so {_describe(column)} must be given "
                           f"as a 0-based index ({_flag(key)} N)")
    if position >= len(row):
        raise LoraLabError(
            f"{path}:{line}: row has {len(row)} fields, {_describe(column)} (position {position}) is missing; "
            "check the format/delimiter, and --no-quoting for files with literal quotes"
        )
    if row[position] is None:
        raise LoraLabError(f"{path}:{line}: {_describe(column)} is empty (null)")
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
    if isinstance(value, float) and not math.isfinite(value):   # JSON's NaN, Infinity: no class, no target
        raise LoraLabError(f"{path}:{line}: {_describe(column)} (the label) is {value}, not a finite number; "
                           "fix or remove this row")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    raise LoraLabError(f"{path}:{line}: {_describe(column)} (the label) should be text or a number, "
                       f"got {type(value).__name__}")


def _e2e_examples(path: Path, options: ReadOptions) -> list[Example]:
    examples = []
    with _open_text(path, options.encoding) as fh:
        for line, text in enumerate(fh, start=1):
            pair = parse_e2e_line(text, f"{path}:{line}")
            if pair is None:
                continue
            prompt, target = pair
            examples.append(Example(text=prompt, target=target, source=str(path), line=line))
    if not examples:
        raise LoraLabError(f"{path}: the file holds no examples")
    return examples


def _chat_examples(path: Path, options: ReadOptions) -> list[Example]:
    rows = _hf_rows(path, options) if path.is_dir() else _jsonl_rows(path, options)
    examples = []
    for line, row in rows:
        if not isinstance(row, dict):
            raise LoraLabError(f"{path}:{line}: a chat row must be a JSON object, got an array")
        examples.append(Example.from_messages(conversation_from_row(row, f"{path}:{line}"), str(path), line))
    if not examples:
        raise LoraLabError(f"{path}: the file holds no conversations")
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
            value = _cell(path, line, row, key, column, positions.get(key))
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
    bytes that are not valid in `options.encoding`, or a corrupt compressed file.
    """
    options = options or ReadOptions()
    path = Path(path)
    if not path.exists():
        raise LoraLabError(f"{path}: no such data file or folder")
    try:
        fmt = data_format(path, options)
        if fmt not in ("hf", "chat") and path.is_dir():
            raise LoraLabError(f"{path} is a folder; a {fmt} data set is one file (folders are read as --format hf)")
        with _csv_field_limit(CSV_FIELD_LIMIT):
            if fmt == "e2e":
                return _e2e_examples(path, options)
            if fmt == "chat":
                return _chat_examples(path, options)
            return _table_examples(path, fmt, options)
    except UnicodeError as exc:
        raise _decode_error(path, options.encoding, exc) from None
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise _read_error(path, exc) from None
