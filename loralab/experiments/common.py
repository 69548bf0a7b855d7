"""Running a grid of training runs for an experiment, resumably, and reading back what each run measured.

    specs = [RunSpec("r8", TrainConfig(...), {"r": 8}), ...]
    results = run_grid(specs, "out/rank/runs")            # skips every run whose folder has metrics.json

Each run gets its own folder `<runs_dir>/<name>/` holding what loralab.training.run.run_training writes
(config.json, adapter/, metrics.json, checkpoints/ ...). A run counts as finished when metrics.json
exists, so re-running an experiment after a kill continues where it stopped: finished runs are read
back, and an unfinished one resumes from its last checkpoint.

isolate=True runs each training in a child process (`python -m loralab.experiments.common CONFIG DIR`)
and records that child's peak resident memory (ru_maxrss from os.wait4, which covers that child only),
written to `resources.json` in the run folder. In-process runs (isolate=False, faster to start) record
no memory, because a process's peak RSS only ever grows.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loralab.errors import LoraLabError

RESOURCES_FILE = "resources.json"
DEFAULT_MODEL = "all-minilm-l6-v2"


@dataclass
class RunSpec:
    """One training run of an experiment.

    name: folder name under the runs directory (letters, digits, '-', '_', '.'); config: the TrainConfig
    (a loralab.training.config.TrainConfig); info: the experiment's own columns for this run (e.g. r).
    """

    name: str
    config: Any
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            raise LoraLabError(f"run name {self.name!r} must be letters, digits, '-', '_' or '.'")


@dataclass
class RunResult:
    """What one finished run measured.

    dev / test: the metrics dicts of metrics.json ({} when the split is missing).
    trainable_params: values saved in the adapter folder (the trained parameters, head included);
    adapter_params: those of them that belong to LoRA factors (and a variant's extra tensors), 0 for others.
    seconds_per_step: train_seconds / optimizer steps (wall clock, evaluation excluded).
    peak_rss_mb: the training process's peak resident set size in MiB (None: not measured, in-process run).
    skipped: True when the run was already finished before this call.
    """

    name: str
    folder: Path
    info: dict[str, Any]
    dev: dict[str, float]
    test: dict[str, float]
    steps: int
    train_seconds: float
    seconds_per_step: float
    trainable_params: int
    adapter_params: int
    peak_rss_mb: float | None
    skipped: bool

    def metric(self, name: str, split: str = "dev") -> float:
        """One metric of one split; NaN when missing."""
        return float(getattr(self, split).get(name, math.nan))

    def row(self, metric: str) -> dict[str, Any]:
        """A flat table row: the info columns, then the measurements."""
        return {"run": self.name, **self.info, f"dev_{metric}": self.metric(metric, "dev"),
                f"test_{metric}": self.metric(metric, "test"), "dev_loss": self.metric("loss", "dev"),
                "trainable_params": self.trainable_params, "adapter_params": self.adapter_params,
                "steps": self.steps, "train_seconds": self.train_seconds,
                "seconds_per_step": self.seconds_per_step, "peak_rss_mb": self.peak_rss_mb}


def is_finished(folder: str | os.PathLike) -> bool:
    """A run is finished once run_training has written metrics.json (it does so after the final evaluation)."""
    return (Path(folder) / "metrics.json").is_file()


def saved_parameter_counts(adapter_dir: str | os.PathLike) -> tuple[int, int]:
    """(all values, LoRA-factor values) in the .safetensors files of an adapter folder, read from the
    headers only. The trainer saves exactly the trained tensors, so this is the trainable-parameter count."""
    from safetensors import safe_open

    from loralab.formats.peft import is_adapter_tensor

    files = sorted(Path(adapter_dir).glob("*.safetensors"))
    if not files:
        raise LoraLabError(f"{adapter_dir}: no .safetensors file; the run did not save its parameters")
    total = lora = 0
    for path in files:
        with safe_open(str(path), framework="pt") as fh:
            for key in fh.keys():
                count = math.prod(fh.get_slice(key).get_shape())
                total += count
                if is_adapter_tensor(key):
                    lora += count
    return total, lora


def read_result(spec: RunSpec, folder: Path, skipped: bool) -> RunResult:
    """The RunResult of a finished run folder."""
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    total, lora = saved_parameter_counts(folder / "adapter")
    rss = None
    if (folder / RESOURCES_FILE).is_file():
        rss = json.loads((folder / RESOURCES_FILE).read_text(encoding="utf-8")).get("peak_rss_mb")
    steps = int(metrics.get("steps") or 0)
    seconds = float(metrics.get("train_seconds") or 0.0)
    return RunResult(spec.name, folder, dict(spec.info), metrics.get("dev") or {}, metrics.get("test") or {}, steps,
                     seconds, seconds / steps if steps else math.nan, total, lora, rss, skipped)


def _run_in_child(config_path: Path, folder: Path, log: Callable[[str], None]) -> float:
    """Train in a child process; returns its peak RSS in MiB. The child's output goes to train.log."""
    env = dict(os.environ)
    # The child must import this checkout of loralab even when it was not installed.
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with open(folder / "train.log", "ab") as log_file:
        command = [sys.executable, "-m", "loralab.experiments.common", str(config_path), str(folder)]
        child = subprocess.Popen(command,
                                 stdout=log_file, stderr=subprocess.STDOUT, env=env)
        # os.wait4 gives this child's own rusage (RUSAGE_CHILDREN would be the max over all children so far).
        try:
            _, status, usage = os.wait4(child.pid, 0)
        except BaseException:
            child.kill()
            child.wait()
            raise
        child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        tail = (folder / "train.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
        raise LoraLabError(f"training run {folder.name} failed (exit {child.returncode}); see {folder / 'train.log'}: "
                           + " | ".join(tail))
    return usage.ru_maxrss / 1024.0  # Linux reports KiB


# TrainConfig fields the command gives every run of a grid (`loralab experiment --device/--dtype/--quantize`),
# set for the duration of one experiment by `grid_runtime`.
_GRID_RUNTIME: dict[str, Any] = {}


@contextlib.contextmanager
def grid_runtime(**fields: Any) -> Iterator[None]:
    """Within the block, every run_grid run takes these TrainConfig fields (device, dtype, quantize)."""
    before = dict(_GRID_RUNTIME)
    _GRID_RUNTIME.update(fields)
    try:
        yield
    finally:
        _GRID_RUNTIME.clear()
        _GRID_RUNTIME.update(before)


def run_grid(specs: Sequence[RunSpec], runs_dir: str | os.PathLike, isolate: bool = False,
             log: Callable[[str], None] = print) -> list[RunResult]:
    """Train every spec not yet finished (in order), then return all results in spec order.

    A folder with checkpoints but no metrics.json is an interrupted run: it is resumed from the checkpoint.
    Runs take the fields of an enclosing `grid_runtime` block.
    """
    specs = [dataclasses.replace(s, config=dataclasses.replace(s.config, **_GRID_RUNTIME)) for s in specs]
    from loralab.files import write_text

    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise LoraLabError(f"run names must be unique, got {names}")
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for n, spec in enumerate(specs):
        folder = runs_dir / spec.name
        if is_finished(folder):
            log(f"[{n + 1}/{len(specs)}] {spec.name}: finished before, reading {folder / 'metrics.json'}")
            results.append(read_result(spec, folder, skipped=True))
            continue
        resume = (folder / "checkpoints" / "LATEST").exists()
        log(f"[{n + 1}/{len(specs)}] {spec.name}: {'resuming' if resume else 'training'} in {folder}")
        folder.mkdir(parents=True, exist_ok=True)
        if isolate:
            config_path = folder / "experiment-config.json"
            spec.config.save(config_path)
            rss = _run_in_child(config_path, folder, log)
            write_text(folder / RESOURCES_FILE, json.dumps({"peak_rss_mb": round(rss, 1), "measured": "ru_maxrss "
                                                               "of the training process (os.wait4)"}) + "\n")
        else:
            from loralab.training.run import run_training

            run_training(spec.config, folder, resume=resume, log=lambda message: None)
        results.append(read_result(spec, folder, skipped=False))
        r = results[-1]
        log(f"    dev {', '.join(f'{k} {v:.4f}' for k, v in r.dev.items())}; {r.trainable_params:,} trainable; "
            f"{r.seconds_per_step:.3f} s/step" + (f"; peak RSS {r.peak_rss_mb:.0f} MiB" if r.peak_rss_mb else ""))
    return results


# --------------------------------------------------------------------------------------------------
# The tiny model of the --quick modes
# --------------------------------------------------------------------------------------------------


def quick_model_dir(folder: str | os.PathLike) -> Path:
    """A 2-layer random BERT (hidden 32, 4 heads) with all-MiniLM-L6-v2's tokenizer, saved once into
    `folder` (reused when already there). No download: the tokenizer comes from the installed package."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from loralab.models.builtin import builtin_model_dir

    folder = Path(folder)
    if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
        return folder
    tokenizer = AutoTokenizer.from_pretrained(builtin_model_dir(DEFAULT_MODEL))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=128, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    scratch = folder.parent / f".{folder.name}.{os.getpid()}.tmp"
    BertModel(config).save_pretrained(scratch)
    tokenizer.save_pretrained(scratch)
    try:
        os.replace(scratch, folder)  # atomic: a concurrent builder's folder wins, ours is dropped
    except OSError:
        import shutil

        shutil.rmtree(scratch, ignore_errors=True)
    return folder


class one_thread:
    """Context manager: torch on one intra-op thread (restored after). On a machine whose few cores are
    shared, two threads wait for the busy core at every parallel op; one is many times faster there."""

    def __enter__(self) -> "one_thread":
        import torch

        self.before = torch.get_num_threads()
        torch.set_num_threads(1)
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        torch.set_num_threads(self.before)


def _child_main(argv: Sequence[str]) -> int:
    """Entry of an isolated run: train the config at argv[0] into the folder argv[1]."""
    from loralab.training.config import TrainConfig

    config_path, folder = Path(argv[0]), Path(argv[1])
    config = TrainConfig.load(config_path)
    resume = (folder / "checkpoints" / "LATEST").exists()
    from loralab.training.run import run_training

    run_training(config, folder, resume=resume)
    return 0


if __name__ == "__main__":
    raise SystemExit(_child_main(sys.argv[1:]))
