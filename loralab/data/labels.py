"""Labels: `LabelMap` maps label strings to class ids (or marks a regression task).

The map is built from the training split and saved next to the adapter as JSON (`labels.json`), so
eval/predict decode ids exactly as training encoded them. A regression map also carries the target scaling
(`target_mean`, `target_std`): training learns (y - mean) / std, and every reader of the model's output turns
it back into the labels' units with `LabelMap.value` (eval, predict, serve); a map without them (loralab 0.1,
PEFT folders) is the identity. Building it also looks for label sets that
seem to spell the same classes two ways (`0, 1, neg, pos`; `Positive, positive`): those are still
trained as separate classes, never merged silently, but a warning says so (`LabelMap.warnings`).
"""
from __future__ import annotations

import json
import math
import os
import statistics
import warnings as pywarnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loralab.data.chat import chat_needs_causal_lm
from loralab.data.examples import Example
from loralab.errors import LoraLabError
from loralab.files import write_json

LABELS_FILENAME = "labels.json"


class LabelSpellingWarning(UserWarning):
    """The training labels look like two spellings of the same classes (they stay separate classes)."""


def _label_name(label: str | int | float) -> str:
    # JSON may hold 1 and 1.0 for the same class; TSV holds "1". All three name class "1".
    if isinstance(label, float) and label.is_integer():
        return str(int(label))
    return str(label)


def _is_number(name: str) -> bool:
    try:
        return math.isfinite(float(name))  # "nan" and "inf" read as words here
    except ValueError:
        return False


def _sorted_names(names: set[str]) -> tuple[str, ...]:
    try:
        return tuple(sorted(names, key=lambda n: (float(n), n)))  # numeric labels in numeric order
    except ValueError:
        return tuple(sorted(names))


def _counted(names: Sequence[str], counts: Mapping[str, int]) -> str:
    return ", ".join(f"{name!r} ({counts[name]:,})" for name in names)


def spelling_warnings(counts: Mapping[str, int]) -> list[str]:
    """Warnings for class names that look like two spellings of the same classes, each listing the
    names involved with their example counts: numeric ids mixed with names (`0`, `1`, `neg`, `pos`),
    and names equal up to case and spaces (`Positive`, `positive `). [] when the names look consistent.

    counts: class name -> number of examples with that label.
    """
    names = _sorted_names(set(counts))
    found = []
    numeric = [n for n in names if _is_number(n)]
    if numeric and len(numeric) < len(names):
        words = [n for n in names if not _is_number(n)]
        found.append(f"labels mix numeric ids {_counted(numeric, counts)} with names {_counted(words, counts)}; "
                     f"they are trained as {len(names)} separate classes: if they are two spellings of the "
                     "same classes, rewrite the labels with one spelling")
    variants: dict[str, list[str]] = {}
    for name in names:
        variants.setdefault(" ".join(name.split()).casefold(), []).append(name)
    for spellings in variants.values():
        if len(spellings) > 1:
            found.append(f"labels {_counted(spellings, counts)} differ only in case or spaces; they are trained "
                         "as separate classes: if they are one class, rewrite the labels with one spelling")
    return found


def label_warnings(examples: Sequence[Example]) -> list[str]:
    """`spelling_warnings` for the labels of `examples` (examples without a label are not counted)."""
    return spelling_warnings(Counter(_label_name(e.label) for e in examples if e.label is not None))


def _regression_target(label: str | int | float, source: str, line: int) -> float:
    """A regression label as a float; text that is no number, NaN and ±Inf are one-line errors (a NaN
    target would only show up later as a NaN loss)."""
    try:
        value = float(label)
    except (TypeError, ValueError):
        raise LoraLabError(f"{source}:{line}: label {label!r} is not a number, but the task is regression; check "
                           "--label-column, or use --task classification for class names") from None
    if not math.isfinite(value):
        raise LoraLabError(f"{source}:{line}: label {label!r} is not a finite number, which a regression target "
                           "must be; fix or remove this row")
    return value


@dataclass(frozen=True)
class LabelMap:
    """Label name <-> class id for classification, or the marker of a regression task.

    names: class names in id order (class i is names[i]); empty for regression. Saved with the adapter
    (`save`/`load`, JSON) so evaluation and prediction use the ids training used.
    target_mean, target_std: regression only, in the labels' units: the model is trained on
    (label - target_mean) / target_std (`encode`) and its output o means the value o * target_std +
    target_mean (`value`). 0 and 1 (the identity) unless `from_examples(standardize=True)` measured them.
    warnings: what `from_examples` found suspicious about the training labels (see `spelling_warnings`),
    for the run summary to print; not saved, not compared.
    """

    names: tuple[str, ...] = ()
    regression: bool = False
    target_mean: float = 0.0
    target_std: float = 1.0
    warnings: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(self.names))
        object.__setattr__(self, "warnings", tuple(self.warnings))
        if self.regression and self.names:
            raise LoraLabError("a regression label map has no class names")
        if not self.regression and not self.identity:
            raise LoraLabError("a classification label map has no target scaling (target_mean, target_std)")
        for name in ("target_mean", "target_std"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise LoraLabError(f"{name} must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.target_std <= 0:
            raise LoraLabError(f"target_std must be positive, got {self.target_std!r}")
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

    @property
    def identity(self) -> bool:
        """Whether the model's outputs are already in the labels' units (no target scaling)."""
        return self.target_mean == 0.0 and self.target_std == 1.0

    def value(self, output: float) -> float:
        """A regression model's output in the labels' units: output * target_std + target_mean."""
        return output * self.target_std + self.target_mean

    @classmethod
    def from_examples(cls, examples: Sequence[Example], regression: bool = False,
                      standardize: bool = False) -> "LabelMap":
        """Classes seen in `examples` (normally the training split), numeric names in numeric order,
        others alphabetically; regression=True checks that every label is a number, and standardize=True
        also measures the target scaling: the labels' mean and population standard deviation (statistics'
        fmean/pstdev, float64). Labels that are all equal have no spread to scale by: a one-line error.

        Label sets that look like two spellings of the same classes are kept as they are (one class per
        distinct name) and reported: a LabelSpellingWarning, and the map's `warnings`."""
        chat = next((e for e in examples if e.messages is not None), None)
        if chat is not None:
            raise chat_needs_causal_lm(chat.where, "regression" if regression else "classification")
        if regression:
            values = [cls(regression=True).encode(example.label, example.source, example.line)
                      for example in examples]
            if not standardize or not values:
                return cls(regression=True)
            mean, std = statistics.fmean(values), statistics.pstdev(values)
            if not std > 0:
                source = examples[0].source
                raise LoraLabError(f"{source}: every regression label is {values[0]:g} (standard deviation 0), so "
                                   "there is nothing to learn; check --label-column, or pass "
                                   "--no-standardize-targets to train on the labels as they are")
            return cls(regression=True, target_mean=mean, target_std=std)
        counts: Counter[str] = Counter()
        for example in examples:
            if example.label is None:
                raise LoraLabError(f"{example.where}: example has no label; check --label-column")
            counts[_label_name(example.label)] += 1
        source = examples[0].source if examples else "the data"
        if len(counts) < 2:
            raise LoraLabError(f"{source}: classification needs at least 2 distinct labels, found "
                               f"{sorted(counts)}; check --label-column")
        found = tuple(f"{source}: {message}" for message in spelling_warnings(counts))
        for message in found:
            pywarnings.warn(message, LabelSpellingWarning, stacklevel=2)
        return cls(_sorted_names(set(counts)), warnings=found)

    def encode(self, label: str | int | float | None, source: str = "<memory>", line: int = 0) -> int | float:
        """Class id (int) or regression target (float: (label - target_mean) / target_std, what the model
        learns) for a raw label; unknown labels are errors."""
        if label is None:
            raise LoraLabError(f"{source}:{line}: example has no label; check --label-column")
        if self.regression:
            return (_regression_target(label, source, line) - self.target_mean) / self.target_std
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
        """{"kind", "names"}, and for a scaled regression map "target_mean" and "target_std" (float64 values
        written exactly: JSON floats round-trip)."""
        data: dict[str, Any] = {"kind": "regression" if self.regression else "classification",
                                "names": list(self.names)}
        if not self.identity:
            data.update(target_mean=self.target_mean, target_std=self.target_std)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> "LabelMap":
        """The map of `to_dict`; a regression map without target_mean/target_std (loralab 0.1) is the identity."""
        kind = data.get("kind") if isinstance(data, dict) else None
        if kind not in ("classification", "regression") or not isinstance(data.get("names", []), list):
            raise LoraLabError(f"{source}: not a loralab label map (expected kind classification|regression "
                               "and a names list)")
        try:
            return cls(tuple(data.get("names", [])), regression=kind == "regression",
                       target_mean=data.get("target_mean", 0.0), target_std=data.get("target_std", 1.0))
        except LoraLabError as exc:
            raise LoraLabError(f"{source}: {exc}; retrain or restore the adapter folder") from None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the map as JSON, atomically (loralab.files.write_json)."""
        write_json(path, self.to_dict())

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


