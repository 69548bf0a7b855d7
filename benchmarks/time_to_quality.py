"""Time to 90 % of the best dev accuracy: loralab's `train` defaults for a user's file against PEFT + the
transformers Trainer, on all-MiniLM-L6-v2 (GLUE SST-2 and MRPC from ../shared/data/glue). Three rows a task:

  loralab      `loralab train --train-file … --dev-file …` as a user runs it: the config is resolved by the
               CLI itself (loralab.cli.train_cmd.config_from_args), so its defaults are read, never copied,
               and it trains through loralab.training.run.run_training.
  PEFT docs    PEFT + transformers Trainer at the settings of PEFT's quicktour
               (https://huggingface.co/docs/peft/quicktour: LoraConfig r=8, lora_alpha=32, lora_dropout=0.1;
               TrainingArguments learning_rate=1e-3, batch 32, 2 epochs, weight_decay=0.01), target modules
               PEFT's own default for the family, plus length grouping, in fp32 or bf16, whichever steps faster
               here (measured first).
  PEFT+loralab PEFT + Trainer given every loralab default PEFT can express (r, alpha, dropout, targets, init,
               lr, batch, epochs, warm-up, schedule, clipping, AdamW constants, weight decay, length grouping,
               dtype, LoRA+ through peft's create_loraplus_optimizer when loralab's default uses it): what is
               left between this row and loralab is the library, between it and PEFT docs the recipe.

Every run keeps its recipe's own schedule (epochs, warm-up) and stops after --steps optimizer steps, so its
first steps are exactly those of the full run. Dev accuracy is recorded every --eval-every-examples training
examples (400: 25 steps of 16, 12 of 32), the same resolution for every batch size; the clock
counts training steps only (evaluation excluded): loralab's Trainer's own train_seconds (collation, forward,
backward, optimizer), the Trainer's on_step_begin → on_step_end for PEFT (forward, backward, optimizer;
fetching and collating its batch are not counted, in PEFT's favour). The threshold of a task is 90 % of the
best dev accuracy any of its runs reaches; medians over seeds.

    python benchmarks/time_to_quality.py --quick                 # smoke run (332 s on 2 busy shared cores)
    python benchmarks/time_to_quality.py                         # SST-2 and MRPC, 3 seeds: 18 runs of 1,000 steps
    python benchmarks/time_to_quality.py --tasks mrpc --seeds 0 1 2 --steps 500
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):           # run as a script: make `benchmarks` and `loralab` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import suites  # noqa: E402
from benchmarks.run import write_json  # noqa: E402

# The GLUE tasks this benchmark knows: the folder under glue/, loralab's task name, and the builtin data set
# whose column settings a user would give as format flags for these files.
TASKS: dict[str, tuple[str, str, str]] = {
    "sst2": ("SST-2", "classification", "sst2"),
    "mrpc": ("MRPC", "pair-classification", "mrpc"),
}
ROWS = ("loralab", "peft_docs", "peft_loralab")
ROW_NAMES = {"loralab": "loralab defaults", "peft_docs": "PEFT + Trainer, PEFT docs' settings",
             "peft_loralab": "PEFT + Trainer, loralab's defaults"}
THRESHOLD_FRACTION = 0.9
DOCS_URL = "https://huggingface.co/docs/peft/quicktour"


# ----------------------------------------------------------------------------------------------
# Pure helpers: curves, thresholds, medians (tests/benchmarks/test_time_to_quality.py)
# ----------------------------------------------------------------------------------------------
Point = tuple[int, float, float]         # (optimizer step, training seconds so far, dev accuracy)


def best_accuracy(curve: list[Point]) -> float:
    return max(acc for _, _, acc in curve)


def reach(curve: list[Point], threshold: float) -> tuple[int, float] | None:
    """(step, training seconds) of the first evaluation at or above `threshold`; None if none reaches it."""
    return next(((step, seconds) for step, seconds, acc in curve if acc >= threshold), None)


def median_or_none(values: list[float | None]) -> float | None:
    """The median, a run that never got there (None) counting as infinitely slow; None when the median is."""
    median = statistics.median(math.inf if v is None else v for v in values)
    return None if math.isinf(median) else median


def summarize(curves: dict[str, list[dict[str, Any]]], fraction: float = THRESHOLD_FRACTION,
              anchor: str = "peft_docs") -> dict[str, Any]:
    """One task's table from its runs: curves[row] is a list of runs (one per seed), each a dict with
    "curve" (Points) and "steps", "seconds" (what it trained). The threshold is `fraction` of the best dev
    accuracy any run reaches; each row gets medians over its seeds, and the ratio of the anchor row's median
    time to threshold to its own (> 1: faster than the anchor)."""
    best = max(best_accuracy(run["curve"]) for runs in curves.values() for run in runs)
    threshold = fraction * best
    rows: dict[str, dict[str, Any]] = {}
    for name, runs in curves.items():
        reached = [reach(run["curve"], threshold) for run in runs]
        rows[name] = {
            "best_accuracy": statistics.median(best_accuracy(run["curve"]) for run in runs),
            "time_to_threshold_s": median_or_none([r and r[1] for r in reached]),
            "steps_to_threshold": median_or_none([r and r[0] for r in reached]),
            "seconds_per_step": statistics.median(run["seconds"] / run["steps"] for run in runs),
            "reached": sum(r is not None for r in reached), "runs": len(runs)}
    anchor_time = rows.get(anchor, {}).get("time_to_threshold_s")
    for row in rows.values():
        own = row["time_to_threshold_s"]
        row["ratio_vs_anchor"] = anchor_time / own if anchor_time and own else None
    return {"best_accuracy": best, "threshold": threshold, "fraction": fraction, "anchor": anchor, "rows": rows}


def _fmt(value, digits: int = 1, unit: str = "") -> str:
    return "—" if value is None else f"{value:,.{digits}f}{unit}"


def markdown_table(task: str, summary: dict[str, Any], majority: float | None = None) -> str:
    """The task's table; `majority` (the dev accuracy of always answering the commonest label) is stated
    next to the threshold, since a threshold below it says little."""
    head = ("Row", "Best dev acc", "Time to threshold (s)", "Steps to threshold", "s/step",
            f"Ratio vs {ROW_NAMES[summary['anchor']]}", "Reached")
    baseline = "" if majority is None else f"; the commonest label alone scores {100 * majority:.1f} %"
    lines = [f"**{task}**: threshold {100 * summary['threshold']:.1f} % = {100 * summary['fraction']:.0f} % of the "
             f"best dev accuracy of any run ({100 * summary['best_accuracy']:.1f} %){baseline}; medians over seeds", "",
             "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for name, row in summary["rows"].items():
        ratio = _fmt(row["ratio_vs_anchor"], 2, "×")
        lines.append(f"| {ROW_NAMES.get(name, name)} | {100 * row['best_accuracy']:.1f} % | "
                     f"{_fmt(row['time_to_threshold_s'])} | {_fmt(row['steps_to_threshold'], 0)} | "
                     f"{_fmt(row['seconds_per_step'], 3)} | {ratio} | {row['reached']}/{row['runs']} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Row (a): loralab's defaults for a user's file, through run_training
# ----------------------------------------------------------------------------------------------
@dataclass
class Bench:
    """What every run of the benchmark shares."""
    data_root: Path
    steps: int
    eval_examples: int
    threads: int
    train_limit: int | None = None
    dev_limit: int | None = None
    probe_steps: int = 12
    probe_rounds: int = 2
    model_dir: str = field(default_factory=suites.default_model_dir)


def eval_interval(bench: Bench, batch_size: int, grad_accum: int = 1) -> int:
    """Optimizer steps between evaluations for a row of this batch: every bench.eval_examples examples (at
    least every step), so that rows with larger batches are not timed at a coarser resolution in examples."""
    return max(1, bench.eval_examples // (batch_size * grad_accum))


def user_argv(bench: Bench, task: str, seed: int) -> list[str]:
    """`loralab train` arguments of a user training on the task's files: the files, the task, the format
    flags the files need (as KEY=VALUE overrides), and the benchmark's own settings (seed, evaluation
    cadence, threads, limits); nothing that changes what is learned."""
    from loralab.data.builtin import builtin_dataset
    from loralab.data.readers import ReadOptions
    from loralab.training.config import train_field_default

    folder, task_name, builtin = TASKS[task]
    options = builtin_dataset(builtin).files["train"][1]
    defaults = ReadOptions()
    given = {f.name: getattr(options, f.name) for f in dataclasses.fields(ReadOptions)
             if getattr(options, f.name) != getattr(defaults, f.name)}
    formats = [f"read_options.{name}={str(value).lower() if isinstance(value, bool) else value}"
               for name, value in given.items()]          # values read as YAML: false, 3, tsv
    argv = ["--train-file", str(bench.data_root / folder / "train.tsv"),
            "--dev-file", str(bench.data_root / folder / "dev.tsv"), "--task", task_name, *formats,
            f"seed={seed}", f"eval_every={eval_interval(bench, train_field_default('batch_size'))}",
            f"threads={bench.threads}", "progress=false"]
    if bench.train_limit:
        argv.append(f"train_limit={bench.train_limit}")
    if bench.dev_limit:
        argv.append(f"dev_limit={bench.dev_limit}")
    return argv


def loralab_config(bench: Bench, task: str, seed: int):
    """The TrainConfig `loralab train` resolves for these arguments (its defaults, read from loralab)."""
    from loralab.cli import train_cmd

    parser = argparse.ArgumentParser()
    train_cmd.add_arguments(parser)
    return train_cmd.config_from_args(parser.parse_args(user_argv(bench, task, seed)))


def run_loralab(bench: Bench, task: str, seed: int) -> dict[str, Any]:
    """One run of loralab's defaults through run_training (into a temporary folder), stopped after
    bench.steps optimizer steps by the trainer's own stop request."""
    from loralab.training.run import run_training
    from loralab.training.trainer import TrainerCallback, TrainingInterrupted

    config = loralab_config(bench, task, seed)

    class Curve(TrainerCallback):
        def __init__(self) -> None:
            self.points: list[Point] = []
            self.steps, self.seconds = 0, 0.0

        def on_evaluate(self, trainer, step, metrics) -> None:
            self.points.append((step, trainer.state["train_seconds"], metrics["accuracy"]))

        def on_step_end(self, trainer, step, loss) -> None:
            self.steps, self.seconds = step, trainer.state["train_seconds"]
            if step >= bench.steps:
                trainer.request_stop()

    curve = Curve()
    with tempfile.TemporaryDirectory(prefix="ttq-loralab-") as tmp:
        with contextlib.suppress(TrainingInterrupted), contextlib.redirect_stdout(sys.stderr):
            run_training(config, Path(tmp) / "run", log=lambda message: None, callbacks=[curve])
    return {"curve": curve.points, "steps": curve.steps, "seconds": curve.seconds,
            "settings": _loralab_settings(config)}


def _loralab_settings(config) -> dict[str, Any]:
    keys = ("lr", "epochs", "batch_size", "grad_accum", "warmup_ratio", "max_warmup_steps", "scheduler",
            "weight_decay", "max_grad_norm", "lora_plus_ratio", "dtype", "max_length")
    return {**{k: getattr(config, k) for k in keys}, "lora": {k: config.lora[k] for k in
                                                              ("r", "alpha", "dropout", "targets", "init")}}


# ----------------------------------------------------------------------------------------------
# Rows (b) and (c): PEFT + transformers Trainer
# ----------------------------------------------------------------------------------------------
@dataclass
class PeftRecipe:
    """A PEFT run: peft.LoraConfig keywords, TrainingArguments keywords, and LoRA+'s ratio (None: off)."""
    lora: dict[str, Any]
    training: dict[str, Any]
    lora_plus_ratio: float | None = None
    notes: list[str] = field(default_factory=list)


def docs_recipe() -> PeftRecipe:
    """PEFT's quicktour (DOCS_URL): LoraConfig(r=8, lora_alpha=32, lora_dropout=0.1) and TrainingArguments(
    learning_rate=1e-3, per_device_train_batch_size=32, num_train_epochs=2, weight_decay=0.01); the quicktour's
    evaluation and saving each epoch are replaced by this benchmark's untimed evaluation. target_modules is
    left to PEFT (its default for the family: query, value for BERT)."""
    return PeftRecipe(lora={"r": 8, "lora_alpha": 32, "lora_dropout": 0.1},
                      training={"learning_rate": 1e-3, "per_device_train_batch_size": 32, "num_train_epochs": 2,
                                "weight_decay": 0.01},
                      notes=[f"settings of {DOCS_URL}", "length grouping on"])


def loralab_recipe(config, model, train_examples: int) -> PeftRecipe:
    """Every default of loralab's TrainConfig `config` that PEFT + Trainer can express. `model` is a base
    model of the family, to resolve loralab's preset targets when the config leaves them to the preset;
    `train_examples` sizes the run, whose length sets loralab's warm-up (a ratio, capped in steps)."""
    import torch

    from loralab.precision import resolve_device, resolve_dtype
    from loralab.surgery.peft_names import to_peft_config
    from loralab.surgery.presets import preset_for
    from loralab.training.optimization import TRANSFORMERS_NAMES, warmup_steps

    lora = config.lora_config()
    peft = to_peft_config(lora)
    peft.pop("peft_type", None)
    if peft.get("target_modules") is None:
        peft["target_modules"] = list(preset_for(model).targets)
    peft.pop("modules_to_save", None)         # task_type SEQ_CLS makes PEFT train and save the head
    dtype = resolve_dtype(resolve_device(config.device), config.dtype)     # "auto": what it becomes here
    batches = -(-train_examples // config.batch_size)
    total = config.max_steps or max(1, math.ceil(config.epochs * -(-batches // config.grad_accum)))
    training = {"learning_rate": config.lr, "per_device_train_batch_size": config.batch_size,
                "gradient_accumulation_steps": config.grad_accum, "num_train_epochs": config.epochs,
                "weight_decay": config.weight_decay, "adam_beta1": config.betas[0], "adam_beta2": config.betas[1],
                "adam_epsilon": config.eps, "warmup_steps": warmup_steps(config, total),
                "lr_scheduler_type": TRANSFORMERS_NAMES.get(config.scheduler, config.scheduler),
                "lr_scheduler_kwargs": dict(config.scheduler_options),
                "max_grad_norm": config.max_grad_norm or 0.0,
                "bf16": dtype == torch.bfloat16, "fp16": dtype == torch.float16}
    if config.max_steps:
        training["max_steps"] = config.max_steps
    notes = ["length grouping on (loralab always groups)",
             "not expressible: loralab's length grouping is its own sampler (PEFT gets the Trainer's)"]
    return PeftRecipe(lora=peft, training=training, lora_plus_ratio=config.lora_plus_ratio, notes=notes)


def length_grouping() -> dict[str, Any]:
    """TrainingArguments' length grouping in the installed transformers' spelling."""
    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return {"train_sampling_strategy": "group_by_length"} if "train_sampling_strategy" in names \
        else {"group_by_length": True}


@dataclass
class TaskData:
    """One task's examples, encoded once by loralab (the same tokens for every row) and in HF's form."""
    eval: suites.Sst2                     # dev set, collator and evaluation batches for suites.dev_accuracy
    hf_train: list[dict[str, Any]]
    tokenizer: Any
    num_labels: int


def load_task(bench: Bench, task: str) -> TaskData:
    """The same train and dev examples loralab's run reads (limits included), tokenized once."""
    from loralab.data.batching import PadCollator, eval_batches, pad_token_id_for
    from loralab.data.encoding import encode_examples
    from loralab.data.labels import LabelMap
    from loralab.models import load_tokenizer
    from loralab.training.inputs import load_splits, task_of

    config = loralab_config(bench, task, 0)
    splits = load_splits(config)
    tokenizer = load_tokenizer(config.model)
    labels = LabelMap.from_examples(splits["train"])
    encoded = {name: encode_examples(examples, tokenizer, task_of(config), labels)
               for name, examples in splits.items() if name in ("train", "dev")}
    hf_train = [{**f, "attention_mask": [1] * len(f["input_ids"])} for f in encoded["train"].features]
    data = suites.Sst2(encoded["train"], encoded["dev"], PadCollator(pad_token_id_for(tokenizer)),
                       eval_batches(encoded["dev"].lengths, 128))
    return TaskData(data, hf_train, tokenizer, len(labels.names))


def run_peft(bench: Bench, data: TaskData, recipe: PeftRecipe, seed: int, steps: int | None = None,
             evaluate: bool = True, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """One PEFT + Trainer run of `recipe`, stopped after `steps` (default bench.steps) optimizer steps; dev
    accuracy every bench.eval_examples training examples and at the end (untimed, suites.dev_accuracy); the
    clock runs from on_step_begin to on_step_end. Returns the curve and every step's seconds."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments, set_seed

    steps = steps or bench.steps
    torch.set_num_threads(bench.threads)
    set_seed(seed)
    setup = suites.Setup(model_dir=bench.model_dir, data_dir=bench.data_root, seed=seed)
    if data.num_labels != 2:
        raise SystemExit(f"the benchmark's models have 2 labels; this task has {data.num_labels}")
    model = get_peft_model(setup.base(), LoraConfig(**{**recipe.lora, "task_type": "SEQ_CLS"}))
    optimizers = (None, None)
    training = {**recipe.training, **(extra or {})}
    if recipe.lora_plus_ratio is not None:
        from peft.optimizers import create_loraplus_optimizer

        optimizers = (create_loraplus_optimizer(model, torch.optim.AdamW, lr=training["learning_rate"],
                                                loraplus_lr_ratio=recipe.lora_plus_ratio,
                                                weight_decay=training.get("weight_decay", 0.0),
                                                betas=(training.get("adam_beta1", 0.9),
                                                       training.get("adam_beta2", 0.999)),
                                                eps=training.get("adam_epsilon", 1e-8)), None)

    class Curve(TrainerCallback):
        def __init__(self) -> None:
            self.points: list[Point] = []
            self.step_seconds: list[float] = []
            self.start = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, model=None, **kwargs):
            self.step_seconds.append(time.perf_counter() - self.start)
            step = state.global_step
            last = step >= steps or step >= state.max_steps
            if evaluate and (step % every == 0 or last):
                self.points.append((step, sum(self.step_seconds), suites.dev_accuracy(model, data.eval)))
            if step >= steps:
                control.should_training_stop = True
            return control

    every = eval_interval(bench, training["per_device_train_batch_size"],
                          training.get("gradient_accumulation_steps", 1))
    curve = Curve()
    with tempfile.TemporaryDirectory(prefix="ttq-peft-") as tmp:
        args = TrainingArguments(output_dir=tmp, seed=seed, report_to="none", save_strategy="no",
                                 eval_strategy="no", logging_strategy="no", disable_tqdm=True,
                                 use_cpu=not torch.cuda.is_available(), **length_grouping(), **training)
        trainer = Trainer(model=model, args=args, train_dataset=data.hf_train, optimizers=optimizers,
                          data_collator=DataCollatorWithPadding(data.tokenizer), callbacks=[curve])
        with contextlib.redirect_stdout(sys.stderr):      # the Trainer's summary line; stdout is the table's
            trainer.train()
    return {"curve": curve.points, "steps": len(curve.step_seconds), "seconds": sum(curve.step_seconds),
            "step_seconds": curve.step_seconds}


def pick_precision(bench: Bench, data: TaskData, recipe: PeftRecipe) -> tuple[dict[str, Any], dict[str, float]]:
    """Time bench.probe_steps steps of `recipe` in fp32 and in bf16 (alternating, bench.probe_rounds runs each;
    the first two steps of each run are warm-up); the faster one's TrainingArguments and each one's median
    s/step."""
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(bench.probe_rounds):
        for name in times:
            run = run_peft(bench, data, recipe, seed=0, steps=bench.probe_steps, evaluate=False,
                           extra={"bf16": name == "bf16"})
            times[name] += run["step_seconds"][2:]
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {"bf16": min(medians, key=medians.get) == "bf16"}, medians


# ----------------------------------------------------------------------------------------------
# The benchmark
# ----------------------------------------------------------------------------------------------
def run_task(bench: Bench, task: str, seeds: list[int], log=print) -> dict[str, Any]:
    """All rows of one task, runs in turn (the row that starts rotates with the seed)."""
    data = load_task(bench, task)
    config = loralab_config(bench, task, seeds[0])
    docs = docs_recipe()
    precision, probe = pick_precision(bench, data, docs)
    docs.training.update(precision)
    docs.notes.append(f"{'bf16' if precision['bf16'] else 'fp32'} (probe, s/step: "
                      + ", ".join(f"{k} {v:.3f}" for k, v in probe.items()) + ")")
    log(f"[{task}] PEFT docs precision: {docs.notes[-1]}")
    base = suites.Setup(bench.model_dir, bench.data_root).base()
    recipes = {"peft_docs": docs, "peft_loralab": loralab_recipe(config, base, len(data.hf_train))}
    runs: dict[str, list[dict[str, Any]]] = {row: [] for row in ROWS}
    for i, seed in enumerate(seeds):
        order = ROWS[i % len(ROWS):] + ROWS[:i % len(ROWS)]
        for row in order:
            started = time.perf_counter()
            run = run_loralab(bench, task, seed) if row == "loralab" else run_peft(bench, data, recipes[row], seed)
            run["seed"] = seed
            runs[row].append(run)
            log(f"[{task}] {row} seed {seed}: best {100 * best_accuracy(run['curve']):.1f} %, {run['steps']} steps, "
                f"{run['seconds']:.0f} s training ({time.perf_counter() - started:.0f} s wall)")
    summary = summarize({row: runs[row] for row in ROWS})
    labels = [f["labels"] for f in data.eval.dev.features]
    majority = max(labels.count(label) for label in set(labels)) / len(labels)
    return {"summary": summary, "runs": runs, "precision_probe_s_per_step": probe, "majority_accuracy": majority,
            "recipes": {"loralab": runs["loralab"][0]["settings"],
                        **{k: dataclasses.asdict(v) for k, v in recipes.items()}},
            "table": markdown_table(task, summary, majority)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 20 steps, evaluation every 80 examples, 1,000 training and 100 dev examples, "
                        "1 seed")
    p.add_argument("--tasks", nargs="+", choices=list(TASKS), default=None, help="default: sst2 mrpc")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="default 0 1 2 (quick: 0)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 1000, quick 20)")
    p.add_argument("--eval-every-examples", type=int, default=None,
                   help="training examples between evaluations, the same for every row whatever its batch size "
                        "(default 400, quick 80)")
    p.add_argument("--train-limit", type=int, default=None, help="a fixed subset of N training examples")
    p.add_argument("--dev-limit", type=int, default=None, help="a fixed subset of N dev examples")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--data", default=None, help="folder holding SST-2/ and MRPC/ (default ../shared/data/glue)")
    p.add_argument("--json", default=str(Path(__file__).parent / "results" / "time_to_quality.json"),
                   help="where to write the raw results")
    return p.parse_args(argv)


def bench_from_args(args: argparse.Namespace) -> Bench:
    from loralab.data.builtin import shared_data_dir

    quick = args.quick
    return Bench(data_root=Path(args.data) if args.data else shared_data_dir() / "glue",
                 steps=args.steps or (20 if quick else 1000),
                 eval_examples=args.eval_every_examples or (80 if quick else 400),
                 threads=args.threads, train_limit=args.train_limit or (1000 if quick else None),
                 dev_limit=args.dev_limit or (100 if quick else None), probe_steps=5 if quick else 12,
                 probe_rounds=1 if quick else 2)


def main(argv: list[str] | None = None) -> int:
    import torch

    from benchmarks.run import versions

    args = parse_args(argv)
    bench = bench_from_args(args)
    torch.set_num_threads(bench.threads)
    tasks = args.tasks or list(TASKS)
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    started = time.perf_counter()
    say = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    results: dict[str, Any] = {"config": {**dataclasses.asdict(bench), "data_root": str(bench.data_root),
                                          "seeds": seeds, "tasks": tasks, "quick": args.quick},
                               "versions": versions(), "machine": platform.node(), "tasks": {}}
    for task in tasks:
        results["tasks"][task] = run_task(bench, task, seeds, log=say)
        write_json(Path(args.json), results)
    results["total_seconds"] = time.perf_counter() - started
    write_json(Path(args.json), results)
    print("\n\n".join(results["tasks"][t]["table"] for t in tasks))
    print(f"\n{results['total_seconds']:.0f} s; raw numbers in {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
