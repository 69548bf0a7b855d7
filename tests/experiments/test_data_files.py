"""`loralab experiment ... --train-file F --dev-file F --task T`: an experiment on the user's own files
(loralab.experiments.common.DataFiles), read with train's readers and flags, scored by the task's metric;
a bad combination is one line, exit 2, with nothing written."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from loralab.cli.main import main
from loralab.errors import LoraLabError
from loralab.experiments.common import DataFiles, data_fields

WORDS = ("good", "bad", "fine", "awful", "great", "dull", "bright", "slow", "quick", "odd")
# Two runs of the quick grid (LoRA r=8 at its low rate, full fine-tuning at its high one): seconds on the tiny model.
RUNS = "lora-lr0.001,full-lr0.001"


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 7)))


def write_regression(path: Path, rows: int, seed: int) -> Path:
    """A TSV with a header `sentence<TAB>label`, labels from 0 to 5 (the STS-B range)."""
    rng = random.Random(seed)
    lines = ["sentence\tlabel"] + [f"{_sentence(rng)}\t{rng.uniform(0, 5):.2f}" for _ in range(rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_pairs(path: Path, rows: int, seed: int) -> Path:
    """A TSV with a header `first<TAB>second<TAB>same`, labels 0/1 (names that need train's column flags)."""
    rng = random.Random(seed)
    lines = ["first\tsecond\tsame"] + [f"{_sentence(rng)}\t{_sentence(rng)}\t{rng.randint(0, 1)}" for _ in range(rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def sweep(tmp_path: Path, *flags: str) -> tuple[int, Path]:
    out = tmp_path / "lr-sweep"
    return main(["experiment", "lr-sweep", "--quick", "--runs", RUNS, "--output", str(out), *flags]), out


def test_lr_sweep_on_a_regression_file_reports_pearson(tmp_path: Path, read_csv):
    train, dev = write_regression(tmp_path / "train.tsv", 40, 0), write_regression(tmp_path / "dev.tsv", 16, 1)
    code, out = sweep(tmp_path, "--train-file", str(train), "--dev-file", str(dev), "--task", "regression")
    assert code == 0
    rows = read_csv(out / "results.csv")
    assert [r["run"] for r in rows] == RUNS.split(",")
    assert "dev_pearson" in rows[0] and "dev_accuracy" not in rows[0]
    assert all(-1.0 <= float(r["dev_pearson"]) <= 1.0 for r in rows)
    best = read_csv(out / "best_lr.csv")
    assert [r["config"] for r in best] == ["lora", "full"]
    meta = json.loads((out / "results.json").read_text(encoding="utf-8"))["meta"]
    assert (meta["train_file"], meta["dev_file"], meta["task"], meta["metric"], meta["data"]) == \
        (str(train), str(dev), "regression", "pearson", None)
    note = f"Data: {train} (dev {dev}; regression); dev pearson."
    assert note in (out / "results.md").read_text(encoding="utf-8")
    config = json.loads((out / "runs" / "lora-lr0.001" / "config.json").read_text(encoding="utf-8"))
    assert (config["train_file"], config["dev_file"], config["task"]) == (str(train), str(dev), "regression")


def test_lr_sweep_on_a_pair_file_with_train_column_flags_reports_accuracy(tmp_path: Path, read_csv):
    train, dev = write_pairs(tmp_path / "pairs.tsv", 40, 2), write_pairs(tmp_path / "pairs-dev.tsv", 16, 3)
    code, out = sweep(tmp_path, "--train-file", str(train), "--dev-file", str(dev), "--task", "pair-classification",
                      "--text-column", "first", "--text-pair-column", "second", "--label-column", "same")
    assert code == 0
    rows = read_csv(out / "results.csv")
    assert "dev_accuracy" in rows[0] and "dev_pearson" not in rows[0]
    # accuracy on 16 dev pairs: a multiple of 1/16
    assert all(float(r["dev_accuracy"]) * 16 == pytest.approx(round(float(r["dev_accuracy"]) * 16)) for r in rows)
    meta = json.loads((out / "results.json").read_text(encoding="utf-8"))["meta"]
    assert (meta["train_file"], meta["task"], meta["metric"]) == (str(train), "pair-classification", "accuracy")
    assert f"Data: {train} (dev {dev}; pair-classification); dev accuracy." in \
        (out / "results.md").read_text(encoding="utf-8")
    config = json.loads((out / "runs" / "full-lr0.001" / "config.json").read_text(encoding="utf-8"))
    assert config["read_options"] == {"text_column": "first", "text_pair_column": "second", "label_column": "same"}


@pytest.mark.parametrize("flags, message", [
    (["--data", "sst2", "--train-file", "{train}", "--dev-file", "{dev}"], "not both"),
    (["--train-file", "{train}"], "needs a --dev-file"),
    (["--train-file", "{train}", "--dev-file", "{dev}", "--task", "regresion"], "regresion"),
    (["--train-file", "{train}", "--dev-file", "{dev}", "--task", "causal-lm"], "e2e"),
    (["--train-file", "{train}", "--dev-file", "{tmp}/missing.tsv"], "no such file"),
    (["--dev-file", "{dev}", "--task", "regression"], "add --train-file"),
    (["--text-column", "first"], "add --train-file"),
])
def test_bad_combinations_are_one_line_and_exit_2(tmp_path: Path, capsys, flags: list[str], message: str):
    train, dev = write_regression(tmp_path / "train.tsv", 4, 0), write_regression(tmp_path / "dev.tsv", 4, 1)
    flags = [f.format(train=train, dev=dev, tmp=tmp_path) for f in flags]
    code, out = sweep(tmp_path, *flags)
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_experiments_that_need_a_builtin_set_refuse_files(tmp_path: Path, capsys):
    train, dev = write_regression(tmp_path / "train.tsv", 4, 0), write_regression(tmp_path / "dev.tsv", 4, 1)
    out = tmp_path / "data-size"
    code = main(["experiment", "data-size", "--quick", "--output", str(out), "--train-file", str(train),
                 "--dev-file", str(dev), "--task", "regression"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "data-size takes a builtin --data name" in err and "lr-sweep" in err
    assert not out.exists()


def test_data_fields_are_trains_fields(tmp_path: Path):
    train, dev = write_regression(tmp_path / "t.tsv", 2, 0), write_regression(tmp_path / "d.tsv", 2, 1)
    assert data_fields("mrpc") == {"data": "mrpc"}
    files = DataFiles(str(train), str(dev), "regression", {"text_column": "sentence"})
    assert data_fields(files) == {"train_file": str(train), "dev_file": str(dev), "task": "regression",
                                  "read_options": {"text_column": "sentence"}}
    assert DataFiles(str(train), str(dev)).task == "classification"   # train's default for a file
    with pytest.raises(LoraLabError, match="needs a --dev-file"):
        DataFiles(str(train), None)


def test_lr_sweep_on_a_file_scores_train_with_no_flags_against_the_best_rate(tmp_path: Path, read_csv):
    from loralab.experiments.lr_sweep import default_config
    from loralab.training.config import train_field_default

    config = default_config()           # train's default adapter: all linear layers at r = 8
    assert config == "lora-all-r8"
    default, other = f"{config}-lr{train_field_default('lr'):g}", f"{config}-lr0.005"
    train, dev = write_regression(tmp_path / "train.tsv", 40, 4), write_regression(tmp_path / "dev.tsv", 16, 5)
    out = tmp_path / "lr-sweep"
    code = main(["experiment", "lr-sweep", "--quick", "--runs", f"{default},{other}", "--output", str(out),
                 "--train-file", str(train), "--dev-file", str(dev), "--task", "regression"])
    assert code == 0
    pearson = {r["run"]: float(r["dev_pearson"]) for r in read_csv(out / "results.csv")}
    assert set(pearson) == {default, other}
    (row,) = read_csv(out / "train_default.csv")
    best = max(pearson, key=pearson.get)
    assert (row["config"], float(row["default_lr"])) == (config, train_field_default("lr"))
    assert float(row["dev_pearson"]) == pytest.approx(pearson[default])
    assert float(row["best_same_config_dev_pearson"]) == pytest.approx(pearson[best])
    assert float(row["gap"]) == pytest.approx(pearson[best] - pearson[default])
    assert row["goal_met"] == str(pearson[best] - pearson[default] <= 0.01)


def test_lr_sweep_on_a_file_keeps_trains_schedule_and_holds_the_no_flag_run(tmp_path: Path):
    from loralab.experiments.lr_sweep import CONFIGS, LEARNING_RATES, default_config, sweep_specs
    from loralab.training.config import train_field_default as default

    train, dev = write_regression(tmp_path / "train.tsv", 4, 0), write_regression(tmp_path / "dev.tsv", 4, 1)
    specs = sweep_specs(False, DataFiles(str(train), str(dev), "regression"), "some-model", tmp_path / "out")
    for spec in specs:
        c = spec.config
        assert (c.epochs, c.train_limit, c.max_length, c.batch_size, c.threads) == \
            (default("epochs"), default("train_limit"), default("max_length"), default("batch_size"), 1)
    assert CONFIGS[default_config()][1] == default("lora")
    rates = sorted(s.config.lr for s in specs if s.info["config"] == default_config())
    assert rates == sorted(set(LEARNING_RATES["lora"][0]) | {default("lr")})
    assert len(specs) == sum(len(LEARNING_RATES[m][0]) for m, _, _ in CONFIGS.values()) + \
        (default("lr") not in LEARNING_RATES["lora"][0])


def test_lr_sweep_runs_on_a_file_keep_trains_precision_and_warm_up_through_the_seeds(tmp_path: Path):
    """with_seeds (every experiment's run path) must not drop RunSpec.train_defaults: a dropped flag pinned the
    sweep's runs on user files to the experiments' fp32, uncapped warm-up instead of train's defaults."""
    from loralab.experiments.common import _grid_fields, with_seeds
    from loralab.experiments.lr_sweep import sweep_specs

    train, dev = write_regression(tmp_path / "train.tsv", 4, 0), write_regression(tmp_path / "dev.tsv", 4, 1)
    specs = with_seeds(sweep_specs(False, DataFiles(str(train), str(dev), "regression"), "m", tmp_path / "o"), 2)
    assert specs and all(s.train_defaults and _grid_fields(s) == {} for s in specs)
    assert {(s.config.dtype, s.config.max_warmup_steps) for s in specs} == {("auto", 10)}
    builtin = with_seeds(sweep_specs(False, "sst2", "m", tmp_path / "b"), 1)
    assert all(not s.train_defaults and _grid_fields(s) == {"dtype": "fp32", "max_warmup_steps": None}
               for s in builtin)
