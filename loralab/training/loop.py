"""The training loop: AdamW + warmup/decay, gradient accumulation and clipping, dev evaluation, best-adapter
keeping, atomic resumable checkpoints, NaN/Inf guard, data parallelism, and the run's output folder.

    from loralab.training.config import TrainConfig
    from loralab.training.loop import run_training
    result = run_training(TrainConfig(), "runs/default")     # what `loralab train` does with no arguments

Output folder (rank 0 writes everything):

    config.json        the TrainConfig the run used
    adapter/           the best adapter on dev (PEFT layout) + labels.json + loralab-task.json
    metrics.json       final dev and test metrics, best step, wall time, and the full history
    metrics.csv        one row per logged step / evaluation
    training.png       train and dev loss, and the dev metric, against the optimizer step
    checkpoints/       resumable checkpoints (see loralab.training.checkpoint)

Determinism: the seed fixes the classifier head's and LoRA's initialisation, dropout, and the batch order
(a pure function of seed and epoch). On CPU two runs with the same config give bitwise equal adapters, and
a run resumed from a checkpoint continues exactly where the killed one was.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from loralab.data.batching import LengthGroupedBatchSampler, PadCollator, eval_batches, pad_token_id_for
from loralab.data.encoding import IGNORE_INDEX, EncodedDataset, Task
from loralab.data.examples import Example
from loralab.data.labels import LabelMap
from loralab.data.splits import fixed_subset
from loralab.errors import LoraLabError
from loralab.training import distributed
from loralab.training.checkpoint import (atomic_torch_save, atomic_write_text, latest_checkpoint, load_checkpoint,
                                         save_checkpoint)
from loralab.training.config import TrainConfig
from loralab.training.metrics import classification_metrics, regression_metrics

TASK_FILENAME = "loralab-task.json"
# Test hook only: seconds to sleep after each optimizer step, so a test can kill a run part way.
_STEP_SLEEP_ENV = "LORALAB_TEST_STEP_SLEEP"


class TrainingDiverged(LoraLabError):
    """The loss or gradient norm became NaN/Inf; the run stopped without writing a checkpoint."""


# --------------------------------------------------------------------------------------------------
# Set-up helpers
# --------------------------------------------------------------------------------------------------


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask), not the machine's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def set_threads(threads: int | None, local_world_size: int = 1) -> int:
    """torch intra-op threads: `threads`, else the available cores shared among the processes on this
    machine (oversubscribing cores makes every process slower). Returns the count set."""
    count = threads or max(1, available_cores() // max(1, local_world_size))
    torch.set_num_threads(count)
    return count


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def no_decay(name: str, param: nn.Parameter) -> bool:
    """Parameters kept out of weight decay: biases, normalisation weights, DoRA magnitudes (all 1-D)."""
    lowered = name.lower()
    return param.ndim < 2 or lowered.endswith("bias") or "norm" in lowered or "magnitude" in lowered


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the parameters that require grad; weight decay only on the matrices."""
    decay, skip = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (skip if no_decay(name, param) else decay).append(param)
    if not decay and not skip:
        raise LoraLabError("the model has no trainable parameters; inject an adapter first")
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": skip, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr, betas=config.betas, eps=config.eps)


def lr_factor(step: int, total_steps: int, warmup_steps: int, kind: str) -> float:
    """Learning-rate multiplier for the update at `step` (0-based): linear warm-up from 1/(warmup+1) to
    1 over `warmup_steps`, then linear or cosine decay to 0 at total_steps, or constant."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if kind == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(1.0, progress)
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, kind: str):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, warmup_steps, kind))


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------


@dataclass
class EvalResult:
    """metrics: name -> value (loss always; accuracy/f1/mcc or pearson/spearman/mse; perplexity for LM).
    predictions: per example in dataset order (class ids, floats), empty for causal LM."""

    metrics: dict[str, float]
    predictions: list[Any] = field(default_factory=list)


def _move(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def evaluate(model: nn.Module, dataset: EncodedDataset, task_kind: str, collator: PadCollator,
             batch_size: int = 64, label_map: LabelMap | None = None,
             dist: distributed.DistInfo | None = None, device: torch.device | None = None) -> EvalResult:
    """Score `dataset` (features with labels) under torch.inference_mode, model in eval mode.

    Batches are sorted by length (eval_batches); with several ranks, rank r scores batches r, r+N, ...
    and the results are gathered, so every rank returns the same metrics. Loss: mean cross-entropy per
    example (classification), mean squared error (regression), mean cross-entropy per target token
    (causal LM, whose metrics add perplexity = exp(loss)).
    """
    dist = dist or distributed.DistInfo()
    device = device or dist.device
    inner = distributed.unwrap(model)
    was_training = inner.training
    inner.eval()
    batches = eval_batches(dataset.lengths, batch_size)
    mine = list(range(dist.rank, len(batches), dist.world_size))
    outputs: dict[int, list[Any]] = {}
    loss_sum, count = 0.0, 0
    with torch.inference_mode():
        for b in mine:
            batch = _move(collator([dataset[i] for i in batches[b]]), device)
            labels = batch.pop("labels")
            logits = inner(**batch).logits.float()
            if task_kind == "causal-lm":
                shifted, targets = logits[:, :-1], labels[:, 1:]
                mask = targets != IGNORE_INDEX
                loss_sum += float(nn.functional.cross_entropy(shifted[mask], targets[mask], reduction="sum"))
                count += int(mask.sum())
                outputs[b] = [None] * len(batches[b])
            elif task_kind == "regression":
                values = logits.view(-1)
                loss_sum += float(((values - labels.float()) ** 2).sum())
                count += len(values)
                outputs[b] = values.cpu().tolist()
            else:
                loss_sum += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
                count += len(labels)
                outputs[b] = logits.argmax(-1).cpu().tolist()
    if was_training:
        inner.train()
    gathered = distributed.all_gather_objects((outputs, loss_sum, count), dist)
    merged: dict[int, list[Any]] = {}
    loss_sum = count = 0
    for part, part_loss, part_count in gathered:
        merged.update(part)
        loss_sum += part_loss
        count += part_count
    if count == 0:
        raise LoraLabError("evaluation data has no scored tokens or examples")
    loss = loss_sum / count
    metrics: dict[str, float] = {"loss": loss}
    if task_kind == "causal-lm":
        metrics["perplexity"] = math.exp(min(loss, 50.0))
        return EvalResult(metrics)
    predictions: list[Any] = [None] * len(dataset)
    for b, batch_indices in enumerate(batches):
        for i, value in zip(batch_indices, merged[b]):
            predictions[i] = value
    labels = [dataset[i]["labels"] for i in range(len(dataset))]
    if task_kind == "regression":
        metrics.update(regression_metrics(predictions, labels))
    else:
        num_classes = label_map.num_labels if label_map else max(max(predictions), max(labels)) + 1
        metrics.update(classification_metrics(predictions, labels, num_classes))
    return EvalResult(metrics, predictions)


# --------------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------------


class Trainer:
    """Trains an injected model on an encoded data set; see the module docstring for what it guarantees.

    model: a model already carrying the adapter (loralab.inject), on CPU or the rank's device; it is
    wrapped in DDP here when `dist` says there are several processes. output_dir: where checkpoints and
    the best adapter go (rank 0 writes). on_best: called (rank 0) with the unwrapped model when the dev
    metric improves, to write the best adapter; by default the trainable tensors are kept for `best_state`.
    """

    def __init__(self, model: nn.Module, config: TrainConfig, train_set: EncodedDataset,
                 dev_set: EncodedDataset | None, collator: PadCollator, output_dir: str | os.PathLike,
                 label_map: LabelMap | None = None, dist: distributed.DistInfo | None = None,
                 on_best: Callable[[nn.Module], None] | None = None, log: Callable[[str], None] = print) -> None:
        self.config = config
        self.dist = dist or distributed.DistInfo()
        self.model = model  # unwrapped
        if config.compile:
            # dynamic=True: batches have many lengths (dynamic padding); avoids a recompile per length.
            self.forward_model = torch.compile(model, dynamic=True)
        else:
            self.forward_model = model
        self.forward_model = distributed.wrap(self.forward_model, self.dist)
        if self.dist.enabled:
            self._check_synchronised(log if self.dist.is_main else (lambda message: None))
        self.train_set, self.dev_set = train_set, dev_set
        self.collator, self.label_map = collator, label_map
        self.output_dir = Path(output_dir)
        self.checkpoint_dir = self.output_dir / "checkpoints"
        self.on_best = on_best
        self.log = log if self.dist.is_main else (lambda message: None)
        self.sampler = LengthGroupedBatchSampler(train_set.lengths, config.batch_size, seed=config.seed,
                                                 num_replicas=self.dist.world_size, rank=self.dist.rank)
        self.micro_per_epoch = self.sampler.batches_per_epoch
        self.steps_per_epoch = -(-self.micro_per_epoch // config.grad_accum)
        self.total_steps = config.max_steps or max(1, math.ceil(config.epochs * self.steps_per_epoch))
        self.warmup_steps = int(round(config.warmup_ratio * self.total_steps))
        if config.eval_every is None:
            self.eval_every = max(1, -(-self.total_steps // 4))  # ceil: the 4th evaluation is the final one
        elif config.eval_every == 0:
            self.eval_every = self.steps_per_epoch
        else:
            self.eval_every = config.eval_every
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(model, config)
        self.scheduler = build_scheduler(self.optimizer, self.total_steps, self.warmup_steps, config.scheduler)
        self.state: dict[str, Any] = {"step": 0, "epoch": 0, "batch": 0, "best": None, "best_step": None,
                                      "evals_without_improvement": 0, "history": [], "examples": 0,
                                      "train_seconds": 0.0}
        self.best_state: dict[str, torch.Tensor] | None = None

    def _check_synchronised(self, log: Callable[[str], None]) -> None:
        """DDP must all-reduce exactly the trainable parameters: frozen base weights never cross the wire."""
        synced = set(distributed.synchronised_parameters(self.forward_model))
        params = dict(self.model.named_parameters())
        trainable = {n for n, p in params.items() if p.requires_grad}
        if synced != trainable:
            raise LoraLabError(f"DDP would synchronise {len(synced)} tensors but {len(trainable)} are trainable; "
                               "wrap the model after loralab.inject")
        frozen = sum(p.numel() for n, p in params.items() if n not in synced)
        log(f"DDP ({self.dist.backend}, {self.dist.world_size} processes) all-reduces {len(synced)} tensors "
            f"({sum(params[n].numel() for n in synced):,} parameters), exactly the trainable ones; "
            f"{frozen:,} frozen parameters are not synchronised")

    # -- bookkeeping -------------------------------------------------------------------------------

    @property
    def global_batch(self) -> int:
        return self.config.batch_size * self.config.grad_accum * self.dist.world_size

    def _better(self, value: float) -> bool:
        best = self.state["best"]
        if best is None:
            return True
        return value < best if self.config.best_is_lower else value > best

    def _save_checkpoint(self) -> None:
        if self.dist.is_main:
            save_checkpoint(self.checkpoint_dir, self.model, self.optimizer, self.scheduler, self.state,
                            write_adapter=self.config.method == "lora")
        distributed.barrier(self.dist)

    def resume(self) -> bool:
        """Restore the newest checkpoint in output_dir/checkpoints; False when there is none."""
        path = latest_checkpoint(self.checkpoint_dir)
        if path is None:
            return False
        state = load_checkpoint(path, self.model, self.optimizer, self.scheduler)
        if state.get("total_steps") not in (None, self.total_steps):
            raise LoraLabError(f"{path}: the checkpoint's run has {state['total_steps']} steps, this one "
                               f"{self.total_steps}; resume with the same data and settings")
        self.state.update(state)
        best = self.checkpoint_dir / "best.pt"
        if best.is_file():
            self.best_state = torch.load(best, weights_only=True)
        self.log(f"resumed from {path} (step {self.state['step']} of {self.total_steps})")
        return True

    # -- one optimizer step ------------------------------------------------------------------------

    def _step(self, group: Sequence[Sequence[int]]) -> tuple[float, float]:
        """Forward/backward over the micro-batches of one optimizer step, then clip and update.
        Returns (mean loss over the global batch's micro-batches, gradient norm before clipping)."""
        model = self.forward_model
        model.train()
        device = self.dist.device
        losses = torch.zeros(1, dtype=torch.float64)
        for i, indices in enumerate(group):
            batch = _move(self.collator([self.train_set[j] for j in indices]), device)
            last = i == len(group) - 1
            # Inside an accumulation window DDP must not all-reduce; it does so on the window's last backward.
            sync = contextlib.nullcontext() if (last or not self.dist.enabled) else model.no_sync()
            with sync:
                loss = model(**batch).loss
                (loss / len(group)).backward()
            losses += loss.detach().double().cpu()
        mean_loss = distributed.all_reduce_sum(losses / len(group), self.dist) / self.dist.world_size
        value = float(mean_loss)
        if self.config.max_grad_norm is not None:
            norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.config.max_grad_norm))
        else:
            norm = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in self.params
                                                               if p.grad is not None])))
        if not (math.isfinite(value) and math.isfinite(norm)):
            self.optimizer.zero_grad(set_to_none=True)
            latest = latest_checkpoint(self.checkpoint_dir)
            kept = f"the last good checkpoint is {latest}" if latest else "no checkpoint was written yet"
            what = "loss" if not math.isfinite(value) else "gradient norm"
            raise TrainingDiverged(
                f"the {what} became {value if what == 'loss' else norm} at step {self.state['step'] + 1}; "
                f"training stopped and {kept}. Lower the learning rate (--lr) or raise --warmup-ratio, "
                "then start again (or --resume from that checkpoint)")
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return value, norm

    # -- evaluation --------------------------------------------------------------------------------

    def evaluate_dev(self) -> dict[str, float] | None:
        if self.dev_set is None:
            return None
        return evaluate(self.forward_model, self.dev_set, self.config.task, self.collator,
                        self.config.eval_batch_size, self.label_map, self.dist).metrics

    def _after_eval(self, metrics: dict[str, float]) -> None:
        value = metrics[self.config.best_metric] if self.config.best_metric in metrics else None
        if value is None:
            raise LoraLabError(f"best metric {self.config.best_metric!r} is not among the dev metrics "
                               f"({', '.join(metrics)}); choose one of those with --best-metric")
        if self._better(value):
            self.state.update(best=value, best_step=self.state["step"], evals_without_improvement=0)
            self.best_state = {n: p.detach().cpu().clone() for n, p in self.model.named_parameters()
                               if p.requires_grad}
            if self.dist.is_main:
                self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
                atomic_torch_save(self.best_state, self.checkpoint_dir / "best.pt")
                if self.on_best is not None:
                    self.on_best(self.model)
        else:
            self.state["evals_without_improvement"] += 1

    # -- the loop ----------------------------------------------------------------------------------

    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train to total_steps (or early stop). Returns the trainer state (history, best, step)."""
        from tqdm.auto import tqdm

        config = self.config
        if resume:
            self.resume()
        self.state["total_steps"] = self.total_steps
        step_sleep = float(os.environ.get(_STEP_SLEEP_ENV, "0") or 0)
        bar = tqdm(total=self.total_steps, initial=self.state["step"], desc="train", unit="step",
                   disable=not (config.progress and self.dist.is_main), dynamic_ncols=True)
        window_loss, window_steps = 0.0, 0
        window_start, window_examples = time.perf_counter(), 0
        stop = self.state["step"] >= self.total_steps
        while not stop:
            epoch = self.state["epoch"]
            batches = self.sampler.rank_batches(epoch)
            for start in range(self.state["batch"], len(batches), config.grad_accum):
                group = batches[start:start + config.grad_accum]
                t0 = time.perf_counter()
                loss, grad_norm = self._step(group)
                self.state["train_seconds"] += time.perf_counter() - t0
                examples = sum(len(b) for b in group) * self.dist.world_size
                self.state["step"] += 1
                self.state["examples"] += examples
                self.state["batch"] = start + len(group)
                if self.state["batch"] >= len(batches):
                    self.state["epoch"], self.state["batch"] = epoch + 1, 0
                step = self.state["step"]
                window_loss += loss
                window_steps += 1
                window_examples += examples
                elapsed = time.perf_counter() - window_start
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}",
                                ex_s=f"{window_examples / max(elapsed, 1e-9):.1f}")
                if step % max(1, config.log_every) == 0 or step == self.total_steps:
                    self.state["history"].append({
                        "step": step, "epoch": round(step / self.steps_per_epoch, 4), "split": "train",
                        "loss": window_loss / window_steps, "lr": self.scheduler.get_last_lr()[0],
                        "grad_norm": grad_norm, "examples_per_s": window_examples / max(elapsed, 1e-9)})
                    window_loss, window_steps = 0.0, 0
                    window_start, window_examples = time.perf_counter(), 0
                evaluated = False
                if step % self.eval_every == 0 or step == self.total_steps:
                    metrics = self.evaluate_dev()
                    if metrics is not None:
                        evaluated = True
                        self.state["history"].append({"step": step, "epoch": round(step / self.steps_per_epoch, 4),
                                                      "split": "dev", **metrics})
                        self._after_eval(metrics)
                        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
                        bar.write(f"step {step}/{self.total_steps} dev: {shown}") if self.dist.is_main else None
                patience = config.early_stopping_patience
                early = bool(patience and self.state["evals_without_improvement"] >= patience)
                done = step >= self.total_steps or early
                if evaluated or done or (config.checkpoint_every and step % config.checkpoint_every == 0):
                    self._save_checkpoint()
                if early:
                    self.log(f"early stop: no dev improvement in {patience} evaluations")
                    self.state["early_stopped"] = True
                if step_sleep:
                    time.sleep(step_sleep)
                if done:
                    stop = True
                    break
        bar.close()
        if self.dev_set is None or self.best_state is None:
            # No dev data: the final adapter is the one that counts.
            self.best_state = {n: p.detach().cpu().clone() for n, p in self.model.named_parameters()
                               if p.requires_grad}
            self.state["best_step"] = self.state["step"]
            if self.on_best is not None and self.dist.is_main:
                self.on_best(self.model)
        return self.state

    def load_best(self) -> None:
        """Put the best dev-metric trainable tensors into the model (for test evaluation)."""
        from loralab.training.checkpoint import load_trainable_state

        if self.best_state is not None:
            load_trainable_state(self.model, self.best_state, "best adapter")


# --------------------------------------------------------------------------------------------------
# A whole run, as `loralab train` does it
# --------------------------------------------------------------------------------------------------


def load_splits(config: TrainConfig) -> dict[str, list[Example]]:
    """train / dev / test examples (dev and test may be missing), with the config's limits applied."""
    from loralab.data.builtin import builtin_dataset, load_builtin
    from loralab.data.readers import ReadOptions, read_examples

    if config.data is not None:
        spec = builtin_dataset(config.data)
        raw = load_builtin(config.data)
        splits = {"train": raw[spec.train_split]}
        if spec.eval_split in raw and spec.eval_split != spec.train_split:
            splits["dev"] = raw[spec.eval_split]
        if "test" in raw and spec.eval_split != "test":
            splits["test"] = raw["test"]
    else:
        options = ReadOptions(**config.read_options) if config.read_options else ReadOptions()
        splits = {"train": read_examples(config.train_file, options)}
        for name, path in (("dev", config.dev_file), ("test", config.test_file)):
            if path:
                splits[name] = read_examples(path, options)
    limits = {"train": config.train_limit, "dev": config.dev_limit, "test": config.test_limit}
    return {name: fixed_subset(examples, limits[name]) for name, examples in splits.items()}


def task_of(config: TrainConfig) -> Task:
    return Task(config.task, max_length=config.max_length, prompt_template=config.prompt_template,
                chat_template=config.chat_template)


def head_modules(model: nn.Module) -> tuple[str, ...]:
    """The family's fresh task-head module names (loralab.models.architectures), () when unknown."""
    from loralab.models.architectures import task_head_modules

    return task_head_modules(model)


def load_model_for(spec: str, task_kind: str, label_map: LabelMap | None, tokenizer: Any) -> nn.Module:
    """The model with the head the task needs; classifier heads get `label_map.num_labels` outputs and a
    pad token id (GPT-2/LLaMA classifiers find each row's last real token through it)."""
    from loralab.models import load_model

    if task_kind == "causal-lm":
        model = load_model(spec, task="causal-lm")
    else:
        model = load_model(spec, task="sequence-classification", num_labels=label_map.num_labels)
        if label_map.regression:
            model.config.problem_type = "regression"
        else:
            model.config.problem_type = "single_label_classification"
            model.config.id2label = dict(enumerate(label_map.names))
            model.config.label2id = {n: i for i, n in enumerate(label_map.names)}
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = pad_token_id_for(tokenizer)
    return model


TRAINABLE_FILE = "trainable.safetensors"


def save_trainable_tensors(model: nn.Module, path: Path) -> None:
    """Every parameter that requires grad, by name, as safetensors (written to a temp name, then renamed)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}, str(scratch))
    os.replace(scratch, path)


def write_task_file(folder: Path, config: TrainConfig) -> None:
    """What eval/predict need to use the adapter: base model, task and tokenization settings."""
    info = {"model": config.model, "task": config.task, "max_length": config.max_length,
            "prompt_template": config.prompt_template, "chat_template": config.chat_template}
    atomic_write_text(folder / TASK_FILENAME, json.dumps(info, indent=2) + "\n")


def _write_metrics(output_dir: Path, result: dict[str, Any]) -> None:
    atomic_write_text(output_dir / "metrics.json", json.dumps(result, indent=2) + "\n")
    rows = result["history"] + [{"step": result["best_step"], "split": split, **metrics}
                                for split, metrics in (("best-dev", result.get("dev")), ("test", result.get("test")))
                                if metrics]
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(output_dir / "metrics.csv", buffer.getvalue())


def run_training(config: TrainConfig, output_dir: str | os.PathLike, resume: bool = False,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Load model and data, inject LoRA, train, evaluate on dev and test, write the output folder.
    Returns the metrics dict written to metrics.json. Works under torchrun (data parallel)."""
    import loralab
    from loralab.data.encoding import encode_examples
    from loralab.models import load_tokenizer

    started = time.perf_counter()
    output_dir = Path(output_dir)
    dist = distributed.setup()
    say = log if dist.is_main else (lambda message: None)
    try:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", dist.world_size))
        threads = set_threads(config.threads, local_world)
        if (output_dir / "checkpoints" / "LATEST").exists() and not resume:
            raise LoraLabError(f"{output_dir} already holds a run's checkpoints; pass --resume to continue "
                               "it, or choose another --output folder")
        if dist.is_main:
            output_dir.mkdir(parents=True, exist_ok=True)
            config.save(output_dir / "config.json")
        splits = load_splits(config)
        tokenizer = load_tokenizer(config.model)
        task = task_of(config)
        label_map = None
        if task.kind != "causal-lm":
            label_map = LabelMap.from_examples(splits["train"], regression=task.kind == "regression")
        encoded = {name: encode_examples(examples, tokenizer, task, label_map) for name, examples in splits.items()}
        say(f"data: {', '.join(f'{n} {len(e):,}' for n, e in encoded.items())} examples; task {task.kind}"
            + (f", labels {', '.join(label_map.names)}" if label_map and label_map.names else "")
            + f"; {threads} thread(s) x {dist.world_size} process(es)")

        seed_everything(config.seed)  # before the head and LoRA initialisation
        model = load_model_for(config.model, task.kind, label_map, tokenizer)
        if config.method == "lora":
            loralab.inject(model, config.lora_config(head_modules(model)))
        else:
            from loralab.baselines import METHODS

            METHODS[config.method](model, **config.method_options)
        model.to(dist.device)
        say(loralab.trainable_summary(model))
        collator = PadCollator(pad_token_id_for(tokenizer))
        adapter_dir = output_dir / "adapter"

        def save_best(trained: nn.Module) -> None:
            if config.method == "lora":
                loralab.save_adapter(trained, adapter_dir, base_model_name_or_path=config.model,
                                     task_type="CAUSAL_LM" if task.kind == "causal-lm" else "SEQ_CLS")
            else:   # a baseline has no LoRA factors: keep exactly the tensors it trained
                save_trainable_tensors(trained, adapter_dir / TRAINABLE_FILE)
            if label_map is not None:
                label_map.save(adapter_dir / "labels.json")
            write_task_file(adapter_dir, config)

        trainer = Trainer(model, config, encoded["train"], encoded.get("dev"), collator, output_dir, label_map,
                          dist, on_best=save_best, log=say)
        say(f"{trainer.total_steps} optimizer steps of {trainer.global_batch} examples "
            f"({trainer.steps_per_epoch} per epoch), warm-up {trainer.warmup_steps}, evaluation every "
            f"{trainer.eval_every}")
        state = trainer.fit(resume=resume)
        trainer.load_best()
        result: dict[str, Any] = {"best_step": state["best_step"], "steps": state["step"],
                                  "best_metric": config.best_metric}
        if "dev" in encoded:
            # The best adapter's dev metrics were computed when it was chosen; no need to score dev again.
            best_rows = [r for r in state["history"] if r["split"] == "dev" and r["step"] == state["best_step"]]
            result["dev"] = {k: v for k, v in best_rows[-1].items() if k not in ("step", "epoch", "split")}
        if "test" in encoded:
            result["test"] = evaluate(model, encoded["test"], task.kind, collator, config.eval_batch_size,
                                      label_map, dist).metrics
            say("test: " + ", ".join(f"{k} {v:.4f}" for k, v in result["test"].items()))
        result.update(train_examples=len(encoded["train"]), examples_seen=state["examples"],
                      train_seconds=round(state["train_seconds"], 2),
                      wall_seconds=round(time.perf_counter() - started, 2),
                      world_size=dist.world_size, threads_per_process=threads, history=state["history"])
        if dist.is_main:
            _write_metrics(output_dir, result)
            from loralab.training.plots import plot_history

            plot_history(state["history"], output_dir / "training.png", config.best_metric)
            say(f"wrote {output_dir}: adapter/, metrics.json, metrics.csv, training.png, config.json "
                f"({result['wall_seconds']:.0f} s)")
        distributed.barrier(dist)
        return result
    finally:
        distributed.cleanup(dist)
