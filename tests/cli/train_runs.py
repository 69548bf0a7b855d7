"""What the `loralab train` CLI tests share: the training tests' fixture helpers (tests/training/conftest.py,
loaded once), a tiny BERT with SST-2 slices, and the argv of a short run on them
(6 steps, checkpoints and evaluations every 3)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("training_fixtures", REPO / "tests" / "training" / "conftest.py")
fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixtures)


def write_inputs(folder: Path) -> dict[str, Path]:
    """A tiny BERT and SST-2 train/dev slices in `folder` (tests/cli/conftest.py's `inputs`, once per module)."""
    return {"model": fixtures.write_tiny_bert(folder / "bert"),
            "train": fixtures.write_sst2_slice(folder, 0, 48, "train.tsv"),
            "dev": fixtures.write_sst2_slice(folder, 1000, 24, "dev.tsv")}


def train_argv(inputs: dict[str, Path], output: Path, *extra: str) -> list[str]:
    return ["train", "--model", str(inputs["model"]), "--train-file", str(inputs["train"]), "--dev-file",
            str(inputs["dev"]), "--max-length", "32", "--batch-size", "8", "--max-steps", "6", "--eval-every", "3",
            "--checkpoint-every", "3", "--lr", "5e-3", "--threads", "1", "--no-progress", "--output", str(output),
            *extra]
