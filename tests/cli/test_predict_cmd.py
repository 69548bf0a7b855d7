"""`loralab predict` with the decoding flags on a causal-LM adapter, and `loralab eval`'s progress flag."""
from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import pytest

from loralab.cli.main import build_parser, main
from loralab.cli.sampling_args import sampling_params_from_args
from loralab.generation import SamplingParams

_spec = importlib.util.spec_from_file_location("training_fixtures",
                                               Path(__file__).resolve().parents[1] / "training" / "conftest.py")
fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixtures)

PROMPTS = [line.split("||")[0] for line in fixtures.e2e_lines(4)]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A causal-LM adapter on the tiny LLaMA after a few training steps."""
    folder = tmp_path_factory.mktemp("predict")
    model = fixtures.write_tiny_causal(folder / "llama", "llama")
    train = folder / "train.txt"
    train.write_text("\n".join(fixtures.e2e_lines()) + "\n")
    assert main(["train", "--model", str(model), "--task", "causal-lm", "--train-file", str(train), "--format", "e2e",
                 "--max-length", "64", "--batch-size", "8", "--max-steps", "3", "--lr", "1e-2", "--threads", "1",
                 "--no-progress", "--output", str(folder / "run")]) == 0
    return folder / "run" / "adapter"


def predict(adapter: Path, flags: list[str], monkeypatch, capsys) -> list[str]:
    capsys.readouterr()
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(PROMPTS) + "\n"))
    assert main(["predict", "--adapter", str(adapter), "--threads", "1", "--no-progress", *flags]) == 0
    return capsys.readouterr().out.splitlines()


def test_flags_build_sampling_params():
    args = build_parser().parse_args(["predict", "--adapter", "x", "--temperature", "0.8", "--top-p", "0.9",
                                      "--top-k", "5", "--seed", "3", "--stop", "\\n", "--stop", "a\\tb",
                                      "--repetition-penalty", "1.1", "--max-new-tokens", "9",
                                      "--frequency-penalty", "0.5", "--presence-penalty", "-0.25"])
    assert sampling_params_from_args(args) == SamplingParams(
        temperature=0.8, top_p=0.9, top_k=5, seed=3, stop=("\n", "a\tb"), repetition_penalty=1.1, max_new_tokens=9,
        frequency_penalty=0.5, presence_penalty=-0.25)
    plain = build_parser().parse_args(["predict", "--adapter", "x"])
    assert sampling_params_from_args(plain, SamplingParams(max_new_tokens=48)) == SamplingParams(max_new_tokens=48)


def test_sampled_predictions_are_reproducible_and_independent_of_the_batch(adapter, monkeypatch, capsys):
    flags = ["--temperature", "1.2", "--top-k", "20", "--seed", "7", "--max-new-tokens", "6"]
    first = predict(adapter, flags + ["--batch-size", "4"], monkeypatch, capsys)
    again = predict(adapter, flags + ["--batch-size", "1"], monkeypatch, capsys)
    greedy = predict(adapter, ["--max-new-tokens", "6"], monkeypatch, capsys)
    assert first == again and len(first) == 4 and first != greedy
    # the greedy CLI output is what loralab.generation.generate gives for the loaded adapter
    from loralab.generation import generate
    from loralab.serving.load import load_with_adapters

    loaded = load_with_adapters({"default": adapter})
    expected = generate(loaded.model, loaded.tokenizer, PROMPTS, SamplingParams(max_new_tokens=6), task=loaded.task)
    assert greedy == [" ".join(t.split("\n")) for t in expected]
    stop = greedy[0].split()[1]
    stopped = predict(adapter, ["--max-new-tokens", "6", "--stop", stop], monkeypatch, capsys)
    assert stopped[0] == greedy[0][:greedy[0].index(stop)].strip()


def test_bad_decoding_flags_exit_2_with_one_line(adapter, capsys):
    assert main(["predict", "--adapter", str(adapter), "--temperature", "-1"]) == 2
    assert "temperature must be 0 (greedy) or a positive number" in capsys.readouterr().err
    assert main(["predict", "--adapter", str(adapter), "--num-beams", "2", "--temperature", "1"]) == 2
    assert "greedy only" in capsys.readouterr().err


def test_eval_shows_progress_unless_told_not_to(adapter, tmp_path, capsys):
    data = tmp_path / "dev.txt"
    data.write_text("\n".join(fixtures.e2e_lines(12)) + "\n")
    assert main(["eval", "--adapter", str(adapter), "--file", str(data), "--format", "e2e", "--threads", "1"]) == 0
    shown = capsys.readouterr()
    assert "12/12" in shown.err and "perplexity" in shown.out
    assert main(["eval", "--adapter", str(adapter), "--file", str(data), "--format", "e2e", "--threads", "1",
                 "--no-progress"]) == 0
    assert "12/12" not in capsys.readouterr().err
