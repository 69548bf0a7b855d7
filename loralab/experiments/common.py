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

from loralab.data.builtin import builtin_dataset, load_builtin
from loralab.data.tasks import DEFAULT_TASK, task_kind
from loralab.errors import LoraLabError, choose
from loralab.experiments.report import Table
from loralab.files import write_text
from loralab.formats.peft import is_adapter_tensor
from loralab.models.builtin import builtin_model_dir
from loralab.training.config import TrainConfig, train_field_default
from loralab.training.inputs import load_splits
from loralab.training.run import run_training

RESOURCES_FILE = "resources.json"
DEFAULT_MODEL = "all-minilm-l6-v2"


@dataclass
class DataFiles:
    """A user's own data for an experiment, read as `loralab train --train-file F --dev-file F --task T` reads
    it (the same TrainConfig fields, so the same readers): `--data` of the experiments is a builtin name or this.

    train_file / dev_file: paths of the files (the dev file scores every run, so it is required);
    task: classification (the default, as for train), pair-classification or regression (a loralab.data.tasks
    name; causal LM files have their own experiment, e2e); read_options: loralab.data.readers.ReadOptions
    fields (the data flags).
    """

    train_file: str
    dev_file: str | None
    task: str = DEFAULT_TASK
    read_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for flag, path in (("--train-file", self.train_file), ("--dev-file", self.dev_file)):
            if path and not Path(path).exists():
                raise LoraLabError(f"{flag} {path}: no such file")
        if not self.dev_file:
            raise LoraLabError(f"--train-file {self.train_file} needs a --dev-file: every run of an experiment "
                               "is scored on dev data")
        if task_kind(self.task).is_generative:
            raise LoraLabError(f"--task {self.task}: the experiments on files train classifiers and regressors "
                               "(classification, pair-classification, regression); use e2e for causal LM data")

    @property
    def name(self) -> str:
        """How reports name the data: the training file's name."""
        return Path(self.train_file).name


def data_label(config: Any) -> str:
    """How a report names a TrainConfig's data: the builtin name, or "train.tsv (dev dev.tsv; regression)"."""
    if config.train_file:
        return f"{config.train_file} (dev {config.dev_file}; {config.task})"
    return str(config.data)


def data_fields(data: str | DataFiles) -> dict[str, Any]:
    """The TrainConfig fields that choose an experiment's data: {"data": name} for a builtin set, the file,
    task and read_options fields for DataFiles. Every grid experiment builds its configs through this."""
    if isinstance(data, DataFiles):
        return {"train_file": data.train_file, "dev_file": data.dev_file, "task": data.task,
                "read_options": dict(data.read_options)}
    return {"data": data}


@dataclass
class RunSpec:
    """One training run of an experiment.

    name: folder name under the runs directory (letters, digits, '-', '_', '.'); config: the TrainConfig
    (a loralab.training.config.TrainConfig); info: the experiment's own columns for this run (e.g. r).
    """

    name: str
    config: Any
    info: dict[str, Any] = field(default_factory=dict)
    train_defaults: bool = False
    """True: the run keeps `loralab train`'s own precision and warm-up defaults (lr-sweep's default-run check on a
    user's files); False: settings left at those defaults take the experiments' recipe (EXPERIMENT_RECIPE)."""

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
    cpu_seconds: CPU time (user + system) of the training process (None: in-process run, or an older run).
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
    cpu_seconds: float | None = None

    def metric(self, name: str, split: str = "dev") -> float:
        """One metric of one split; NaN when missing."""
        return float(getattr(self, split).get(name, math.nan))

    def row(self, metric: str) -> dict[str, Any]:
        """A flat table row: the info columns, then the measurements."""
        return {"run": self.name, **self.info, f"dev_{metric}": self.metric(metric, "dev"),
                f"test_{metric}": self.metric(metric, "test"), "dev_loss": self.metric("loss", "dev"),
                "trainable_params": self.trainable_params, "adapter_params": self.adapter_params,
                "steps": self.steps, "train_seconds": self.train_seconds,
                "seconds_per_step": self.seconds_per_step, "peak_rss_mb": self.peak_rss_mb,
                "cpu_seconds": self.cpu_seconds}


def train_run(config: Any, folder: str | os.PathLike, resume: bool = False,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train one TrainConfig into `folder` (what `loralab train` does); returns its metrics dict.
    The experiments reach the trainer only through this function."""
    return run_training(config, folder, resume=resume, log=log)


def train_set_size(data: str) -> int:
    """Number of training examples of a builtin data set (its train split, before any train_limit)."""
    spec = builtin_dataset(data)
    return len(load_builtin(data, splits=[spec.train_split])[spec.train_split])


def majority_fraction(config: Any) -> float:
    """Accuracy of always answering the dev split's most common label (the config's data and dev_limit)."""
    from collections import Counter

    dev = load_splits(config).get("dev") or []
    counts = Counter(example.label for example in dev)
    return max(counts.values()) / len(dev) if dev else math.nan


def is_finished(folder: str | os.PathLike) -> bool:
    """A run is finished once run_training has written metrics.json (it does so after the final evaluation)."""
    return (Path(folder) / "metrics.json").is_file()


def saved_parameter_counts(adapter_dir: str | os.PathLike) -> tuple[int, int]:
    """(all values, LoRA-factor values) in the .safetensors files of an adapter folder, read from the
    headers only. The trainer saves exactly the trained tensors, so this is the trainable-parameter count."""
    from safetensors import safe_open

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
    resources = {}
    if (folder / RESOURCES_FILE).is_file():
        resources = json.loads((folder / RESOURCES_FILE).read_text(encoding="utf-8"))
    steps = int(metrics.get("steps") or 0)
    seconds = float(metrics.get("train_seconds") or 0.0)
    return RunResult(spec.name, folder, dict(spec.info), metrics.get("dev") or {}, metrics.get("test") or {}, steps,
                     seconds, seconds / steps if steps else math.nan, total, lora, resources.get("peak_rss_mb"),
                     skipped, resources.get("cpu_seconds"))


def _run_in_child(config_path: Path, folder: Path, log: Callable[[str], None]) -> tuple[float, float]:
    """Train in a child process; returns (its peak RSS in MiB, its CPU seconds, user + system).
    The child's output goes to train.log."""
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
    return usage.ru_maxrss / 1024.0, usage.ru_utime + usage.ru_stime  # Linux reports ru_maxrss in KiB


# TrainConfig fields the command gives every run of a grid (`loralab experiment --device/--dtype/--quantize`),
# set for the duration of one experiment by `grid_runtime`.
_GRID_RUNTIME: dict[str, Any] = {}
# The experiments measure with the recipe every table of docs/experiments.md was measured with: fp32 (not
# TrainConfig's dtype "auto", bf16 on a bf16-native machine) and the warm-up by ratio alone (not capped at
# TrainConfig's max_warmup_steps). A setting left at TrainConfig's default takes this value; one the
# experiment or its command (--dtype) sets is kept.
EXPERIMENT_RECIPE: dict[str, Any] = {"dtype": "fp32", "max_warmup_steps": None}


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


def _grid_fields(spec: RunSpec) -> dict[str, Any]:
    """The fields a grid run's config takes: EXPERIMENT_RECIPE's for those left at TrainConfig's defaults
    (unless the spec keeps train's defaults), then grid_runtime's."""
    pinned = {} if spec.train_defaults else {
        name: value for name, value in EXPERIMENT_RECIPE.items()
        if getattr(spec.config, name) == train_field_default(name)}
    return {**pinned, **_GRID_RUNTIME}


def run_grid(specs: Sequence[RunSpec], runs_dir: str | os.PathLike, isolate: bool = False,
             log: Callable[[str], None] = print) -> list[RunResult]:
    """Train every spec not yet finished (in order), then return all results in spec order.

    A folder with checkpoints but no metrics.json is an interrupted run: it is resumed from the checkpoint.
    Runs take the fields of an enclosing `grid_runtime` block.
    """
    specs = [dataclasses.replace(s, config=dataclasses.replace(s.config, **_grid_fields(s))) for s in specs]

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
            rss, cpu = _run_in_child(config_path, folder, log)
            write_text(folder / RESOURCES_FILE, json.dumps({
                "peak_rss_mb": round(rss, 1), "cpu_seconds": round(cpu, 1),
                "measured": "ru_maxrss and ru_utime + ru_stime of the training process (os.wait4)"}) + "\n")
        else:
            train_run(spec.config, folder, resume=resume, log=lambda message: None)
        results.append(read_result(spec, folder, skipped=False))
        r = results[-1]
        log(f"    dev {', '.join(f'{k} {v:.4f}' for k, v in r.dev.items())}; {r.trainable_params:,} trainable; "
            f"{r.seconds_per_step:.3f} s/step" + (f"; peak RSS {r.peak_rss_mb:.0f} MiB" if r.peak_rss_mb else ""))
    return results


# --------------------------------------------------------------------------------------------------
# Several seeds per run, and a subset of an experiment's runs
# --------------------------------------------------------------------------------------------------

SEED_SUFFIX = "-seed"


def grid_meta(quick: bool, specs: Sequence[RunSpec], results: Sequence[RunResult], settings: Sequence[str] = (),
              **extra: Any) -> dict[str, Any]:
    """The `meta` of a grid experiment's results.json: quick, the first run's model and data and its TrainConfig
    fields named in `settings` (e.g. "train_limit", "epochs", "lr"), the experiment's own `extra` values (its
    metric, seeds, ...), then the runs an earlier call had finished (`skipped_runs`)."""
    first = specs[0].config
    files = {"train_file": first.train_file, "dev_file": first.dev_file, "task": first.task} if first.train_file else {}
    return {"quick": quick, "model": first.model, "data": first.data, **files,
            **{name: getattr(first, name) for name in settings}, **extra,
            "skipped_runs": [result.name for result in results if result.skipped]}


def seed_run_name(name: str, seed: int) -> str:
    """Seed 0 keeps the plain name (so single-seed results are reused as seed 0); seed s adds "-seed<s>"."""
    return name if seed == 0 else f"{name}{SEED_SUFFIX}{seed}"


def with_seeds(specs: Sequence[RunSpec], seeds: int) -> list[RunSpec]:
    """Each spec once per seed 0 .. seeds-1, the seed set in its TrainConfig (initialisation, dropout and
    batch order; a train_limit subset stays the same draw). info gains "seed" and "base_run"."""
    import dataclasses

    if not isinstance(seeds, int) or seeds < 1:
        raise LoraLabError(f"seeds must be a positive number of seeds, got {seeds!r}")
    return [dataclasses.replace(spec, name=seed_run_name(spec.name, seed),
                                config=dataclasses.replace(spec.config, seed=seed),
                                info={**spec.info, "seed": seed, "base_run": spec.name})
            for spec in specs for seed in range(seeds)]


def select_runs(specs: Sequence[RunSpec], names: Sequence[str] | None) -> list[RunSpec]:
    """The specs named in `names` (all of them when None), in the experiment's order; unknown names are errors."""
    if names is None:
        return list(specs)
    for name in names:
        choose(name, [s.name for s in specs], "run of this experiment")
    return [s for s in specs if s.name in names]


def spread(values: Sequence[float]) -> dict[str, float]:
    """median, min, max and sample standard deviation (0 for one value) of the finite values; NaN if none."""
    import statistics

    finite = sorted(v for v in values if v is not None and math.isfinite(v))
    if not finite:
        return {"median": math.nan, "min": math.nan, "max": math.nan, "std": math.nan}
    return {"median": statistics.median(finite), "min": finite[0], "max": finite[-1],
            "std": statistics.stdev(finite) if len(finite) > 1 else 0.0}


def seed_summary(results: Sequence[RunResult], metric: str, split: str = "dev") -> list[dict[str, Any]]:
    """One row per base run (results of with_seeds grouped by info["base_run"], in first-seen order): its
    info columns (seed and base_run dropped), the number of seeds, the metric's median / min / max / std
    over seeds and each seed's value, trainable counts and the median seconds per step.
    The paper (Hu et al. 2021) reports the median over 5 seeds."""
    groups: dict[str, list[RunResult]] = {}
    for result in results:
        groups.setdefault(result.info.get("base_run", result.name), []).append(result)
    rows = []
    for base, members in groups.items():
        values = [m.metric(metric, split) for m in members]
        stats = spread(values)
        info = {k: v for k, v in members[0].info.items() if k not in ("seed", "base_run")}
        rows.append({"run": base, **info, "seeds": len(members),
                     **{f"{split}_{metric}_{k}": v for k, v in stats.items()},
                     f"{split}_{metric}_by_seed": " / ".join(f"{v:.4f}" for v in values),
                     "trainable_params": members[0].trainable_params, "adapter_params": members[0].adapter_params,
                     "steps": members[0].steps,
                     "seconds_per_step": spread([m.seconds_per_step for m in members])["median"]})
    return rows


def seed_table(results: Sequence[RunResult], metric: str, columns: Sequence[str], name: str = "seeds"):
    """A report Table of seed_summary rows (experiment columns first), or None when every run has one seed."""
    summary = seed_summary(results, metric)
    if all(row["seeds"] == 1 for row in summary):
        return None
    stats = [f"dev_{metric}_{k}" for k in ("median", "min", "max", "std", "by_seed")]
    return Table(name, f"dev {metric} over seeds (median, min, max, sample std)",
                 ["run", *columns, "seeds", *stats, "trainable_params", "seconds_per_step"], summary,
                 "Seeds change the initialisation, dropout and batch order; the data subset is the same draw. "
                 "The paper (Hu et al. 2021) reports the median over 5 seeds.")


def seed_medians(results: Sequence[RunResult], metric: str) -> dict[str, float]:
    """{base run name: median of the dev metric over its seeds}."""
    return {row["run"]: row[f"dev_{metric}_median"] for row in seed_summary(results, metric)}


# --------------------------------------------------------------------------------------------------
# The tiny model of the --quick modes
# --------------------------------------------------------------------------------------------------


def quick_model_dir(folder: str | os.PathLike) -> Path:
    """A 2-layer random BERT (hidden 32, 4 heads) with all-MiniLM-L6-v2's tokenizer, saved once into
    `folder` (reused when already there). No download: the tokenizer comes from the installed package."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

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
    config_path, folder = Path(argv[0]), Path(argv[1])
    config = TrainConfig.load(config_path)
    train_run(config, folder, resume=(folder / "checkpoints" / "LATEST").exists())
    return 0


if __name__ == "__main__":
    raise SystemExit(_child_main(sys.argv[1:]))
