"""A whole training run, as `loralab train` does it: claim the output folder, build data and model, train,
evaluate on dev and test, write the run folder (loralab.training.run_folder).

    from loralab.training.config import TrainConfig
    from loralab.training.run import run_training
    result = run_training(TrainConfig(), "runs/default")     # what `loralab train` does with no arguments

Order of work: the output folder is checked and locked first (loralab.training.run_output), then every
input is read and built — data files parsed, tokenizer and model loaded, the adapter injected — before the
run writes anything, so a typo in a path never costs an old run. Works under torchrun (rank 0 writes).
"""
from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

import loralab
from loralab.baselines import METHODS
from loralab.data.batching import PadCollator, pad_token_id_for
from loralab.data.encoding import EncodedDataset, Task, encode_examples, require_targets
from loralab.data.labels import LabelMap, LabelSpellingWarning
from loralab.data.packing import pack_examples
from loralab.errors import LoraLabError
from loralab.models import load_tokenizer
from loralab.precision import Precision, check_dtype, resolve_dtype
from loralab.runtime import load_model_for, quantize_base
from loralab.training import distributed
from loralab.training.config import TrainConfig, resume_changes
from loralab.training.evaluation import evaluate
from loralab.training.inputs import head_modules, input_paths, load_splits, task_of
from loralab.training.memory import enable_gradient_checkpointing
from loralab.training.reproducibility import seed_everything, set_threads
from loralab.training.run_folder import (ADAPTER_DIR, read_config, record_resume, write_best_adapter, write_config,
                                         write_metrics, write_plot)
from loralab.training.run_output import CommitAtFirstCheckpoint, RunOutput
from loralab.training.stopping import stop_on_signals
from loralab.training.tracking import Tracking
from loralab.training.trainer import Trainer, TrainerCallback


@dataclass
class RunInputs:
    """Everything a run reads, built before it writes: encoded splits, task, labels, tokenizer's collator."""

    encoded: dict[str, EncodedDataset]
    task: Task
    label_map: LabelMap | None
    collator: PadCollator
    tokenizer: Any


def run_training(config: TrainConfig, output_dir: str | os.PathLike, resume: bool = False, overwrite: bool = False,
                 log: Callable[[str], None] = print, callbacks: Sequence[TrainerCallback] = (),
                 inputs: Sequence[str | os.PathLike] = (), in_place_ok: bool = True) -> dict[str, Any]:
    """Train `config` into `output_dir`; returns the metrics dict written to metrics.json.

    resume: continue the run there (settings may differ only in config.RESUMABLE_FIELDS; changes are
    recorded). overwrite: replace a train run there, once the new run's first checkpoint is complete.
    inputs: more paths the command reads (e.g. its --config file), protected like the data and model.
    in_place_ok: allow writing into an existing folder of other files (see loralab.training.run_output).
    """
    started = time.perf_counter()
    dist = distributed.setup(device=config.device, fsdp=config.fsdp)
    say = log if dist.is_main else (lambda message: None)
    try:
        # a dtype the device cannot run: refused before any write
        check_dtype(dist.device, resolve_dtype(dist.device, config.dtype))
        threads = set_threads(config.threads, int(os.environ.get("LOCAL_WORLD_SIZE", dist.world_size)))
        protected = input_paths(config) + tuple(Path(p) for p in inputs)
        tracking = Tracking(config, run_name=Path(output_dir).name)  # a missing tracker package fails here
        output = _open_output(Path(output_dir), dist, resume, overwrite, protected, in_place_ok, say)
        tracking.ready = lambda: output.committed
        with output, tracking:
            changes = _resume_changes(output.target, config) if resume else {}
            prepared = prepare_inputs(config, dist, threads, say)
            model = build_model(config, prepared, dist, say)
            output.begin(config)
            trainer = Trainer(model, config, prepared.encoded["train"], prepared.encoded.get("dev"), prepared.collator,
                              output.path, prepared.label_map, dist, log=say,
                              on_best=lambda trained: write_best_adapter(trainer.output_dir / ADAPTER_DIR, trained,
                                                                         config, prepared.label_map),
                              callbacks=[CommitAtFirstCheckpoint(output), tracking, *callbacks])
            say(f"{trainer.total_steps} optimizer steps of {trainer.global_batch} examples "
                f"({trainer.steps_per_epoch} per epoch), warm-up {trainer.warmup_steps}, evaluation every "
                f"{trainer.eval_every}, {trainer.precision.name}" + (" (dtype auto)" if config.dtype == "auto" else ""))
            state = _train(trainer, output, config, resume, changes, say)
            result = _finish(trainer, state, prepared, dist, started, threads, say)
            tracking.finish(trainer, result)
        distributed.barrier(dist)
        return result
    finally:
        distributed.cleanup(dist)


def _open_output(target: Path, dist: distributed.DistInfo, resume: bool, overwrite: bool,
                 protected: tuple[Path, ...], in_place_ok: bool, say: Callable[[str], None]) -> RunOutput:
    """Rank 0 claims the folder; every rank gets rank 0's refusal, so none of them trains alone."""
    error, output = None, None
    if dist.is_main:
        try:
            output = RunOutput.open(target, resume, overwrite, protected, in_place_ok, say)
        except LoraLabError as exc:
            error = str(exc)
    error = distributed.broadcast_object(error, dist)
    if error is not None:
        if output is not None:
            output.close(failed=True)
        raise LoraLabError(error)
    return output or RunOutput.follower(target)


def _resume_changes(folder: Path, config: TrainConfig) -> dict[str, tuple[Any, Any]]:
    return resume_changes(read_config(folder), config)


def prepare_inputs(config: TrainConfig, dist: distributed.DistInfo, threads: int,
                   say: Callable[[str], None]) -> RunInputs:
    """Read and encode the data; the label map comes from the training split."""
    splits = load_splits(config)
    task = task_of(config)
    for examples in splits.values():
        require_targets(examples, task)
    tokenizer = load_tokenizer(config.model)
    label_map = None
    if not task.spec.is_generative:
        with warnings.catch_warnings():      # said once below, in the run summary
            warnings.simplefilter("ignore", LabelSpellingWarning)
            label_map = LabelMap.from_examples(splits["train"], regression=task.kind == "regression",
                                               standardize=config.standardize_targets)
    encoded = {name: encode_examples(examples, tokenizer, task, label_map) for name, examples in splits.items()}
    say(f"data: {', '.join(f'{n} {len(e):,}' for n, e in encoded.items())} examples; task {task.kind}"
        + (f", labels {', '.join(label_map.names)}" if label_map and label_map.names else "")
        + f"; {threads} thread(s) x {dist.world_size} process(es)")
    if label_map is not None and not label_map.identity:
        say(f"regression targets standardised: (label - {label_map.target_mean:.6g}) / {label_map.target_std:.6g}; "
            "predictions are in the labels' units")
    for warning in (label_map.warnings if label_map else ()):
        say(f"warning: {warning}")
    if config.packing:
        packed = pack_examples(encoded["train"], task.token_limit)
        say(f"packed {len(packed.source):,} training examples into {len(packed):,} rows of at most "
            f"{task.token_limit} tokens ({packed.fill:.0%} full)")
        encoded["train"] = packed
    return RunInputs(encoded, task, label_map, PadCollator(pad_token_id_for(tokenizer)), tokenizer)


def build_model(config: TrainConfig, prepared: RunInputs, dist: distributed.DistInfo,
                say: Callable[[str], None]) -> nn.Module:
    """The model with its task head and the adapter (or baseline method), seeded, on the rank's device: the
    base loaded in config.dtype and quantized as config.quantize asks, trainable tensors fp32."""
    seed_everything(config.seed)  # before the head and LoRA initialisation
    model = load_model_for(config.model, prepared.task.kind, prepared.label_map, prepared.tokenizer,
                           dtype=resolve_dtype(dist.device, config.dtype))
    quantize_base(model, config.quantize, say)
    if config.method == "lora":
        loralab.inject(model, config.lora_config(head_modules(model)))
    else:
        METHODS[config.method](model, **config.method_options)
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    Precision(dist.device, resolve_dtype(dist.device, config.dtype)).prepare(model)
    say(loralab.trainable_summary(model))
    return model


def _train(trainer: Trainer, output: RunOutput, config: TrainConfig, resume: bool,
           changes: dict[str, tuple[Any, Any]], say: Callable[[str], None]) -> dict[str, Any]:
    """Restore (on resume; recording changed settings), then fit under the stop-on-signal handlers."""
    if resume:
        if not trainer.resume():
            raise LoraLabError(f"{output.target} has no checkpoint to resume from; start the run again with "
                               "--overwrite")
        if changes and trainer.dist.is_main:
            record_resume(output.target, trainer.state["step"], changes)
            write_config(output.target, config)
        if changes:
            say("resume changes " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items())
                + " (recorded in resumes.json)")
    with stop_on_signals(trainer):
        return trainer.fit()


def _finish(trainer: Trainer, state: dict[str, Any], prepared: RunInputs, dist: distributed.DistInfo,
            started: float, threads: int, say: Callable[[str], None]) -> dict[str, Any]:
    """Score the best adapter on test, then write adapter/ (again, from the best tensors), metrics and plot."""
    config = trainer.config
    trainer.load_best()
    result: dict[str, Any] = {"best_step": state["best_step"], "steps": state["step"],
                              "best_metric": config.best_metric}
    if "dev" in prepared.encoded:
        # The best adapter's dev metrics were computed when it was chosen; no need to score dev again.
        best_rows = [r for r in state["history"] if r["split"] == "dev" and r["step"] == state["best_step"]]
        result["dev"] = {k: v for k, v in best_rows[-1].items() if k not in ("step", "epoch", "split")}
    if "test" in prepared.encoded:
        result["test"] = evaluate(trainer.model, prepared.encoded["test"], prepared.task.kind,
                                  prepared.collator, config.eval_batch_size, prepared.label_map, dist,
                                  precision=trainer.precision).metrics
        say("test: " + ", ".join(f"{k} {v:.4f}" for k, v in result["test"].items()))
    train = prepared.encoded["train"]
    result.update(train_examples=len(getattr(train, "source", train)), examples_seen=state["examples"],
                  train_seconds=round(state["train_seconds"], 2), wall_seconds=round(time.perf_counter() - started, 2),
                  world_size=dist.world_size, threads_per_process=threads, history=state["history"])
    if dist.is_main:
        folder = trainer.output_dir
        write_best_adapter(folder / ADAPTER_DIR, trainer.model, config, prepared.label_map)
        write_metrics(folder, result)
        write_plot(folder, state["history"], config.best_metric)
        say(f"wrote {folder}: adapter/, metrics.json, metrics.csv, training.png, config.json "
            f"({result['wall_seconds']:.0f} s)")
    return result
