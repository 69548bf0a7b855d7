"""The trainer: AdamW + warm-up/decay, gradient accumulation and clipping, dev evaluation, best-adapter
keeping, resumable checkpoints, a NaN/Inf guard, stopping at a step boundary, and data parallelism.

    trainer = Trainer(model, config, train_set, dev_set, collator, "runs/x", label_map, callbacks=[...])
    state = trainer.fit()            # or fit(resume=True) to continue from runs/x/checkpoints

Callbacks (`TrainerCallback`) see every optimizer step, evaluation and checkpoint; `request_stop` (what
the SIGINT/SIGTERM handlers of loralab.training.stopping call) makes the run save a checkpoint at the next
step boundary and raise TrainingInterrupted.

Sanity: every checkpoint records the largest |w| of the trainable tensors. It is *sane* when all trainable
values are finite and max |w| <= SANE_GROWTH x max(1, max |w| at the run's start) — LoRA factors and heads
start below 1 and a healthy run stays within a few units, while a diverging one can reach 1e8 and more
with a still finite loss. The losses of every checkpoint are finite (a non-finite loss stops the run before the
update). When the loss or gradient becomes NaN/Inf, the run stops naming the newest sane checkpoint as
the last good one; if later checkpoints were not sane, LATEST is pointed back at it and they are deleted,
so `--resume` continues from good weights. Resuming never starts from a checkpoint that was not sane,
however it got there (loralab.training.checkpoint.usable_checkpoint): the last sane one is used, and
the log line names it and the ones skipped; with none, one line says to start over with a lower --lr.

Determinism: the seed fixes the classifier head's and LoRA's initialisation, dropout, and the batch order
(a pure function of seed and epoch). On CPU two runs with the same config give bitwise equal adapters, and
a run resumed from a checkpoint continues exactly where the killed one was.
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from loralab import files
from loralab.data.batching import LengthGroupedBatchSampler, PadCollator
from loralab.data.encoding import EncodedDataset
from loralab.data.labels import LabelMap
from loralab.errors import LoraLabError, choose
from loralab.precision import Precision, resolve_dtype
from loralab.training import distributed
from loralab.training.checkpoint import (LATEST, Checkpoint, NoSaneCheckpoint, apply_checkpoint, load_best,
                                         load_trainable_state, rewind, save_checkpoint, step_name, trainable_state,
                                         usable_checkpoint)
from loralab.training.evaluation import evaluate, move_batch
from loralab.training.fsdp import describe, sync_gradients
from loralab.training.optimization import build_optimizer, build_scheduler, set_peak_lr, warmup_steps

SANE_GROWTH = 1e3


class TrainingDiverged(LoraLabError):
    """The loss or gradient norm became NaN/Inf; the run stopped before that update."""


class TrainingInterrupted(LoraLabError):
    """SIGINT/SIGTERM: the run stopped at a step boundary after saving a checkpoint. exit_status follows
    the shell's convention, 128 + the signal number (130 for Ctrl-C, 143 for SIGTERM)."""

    def __init__(self, message: str, exit_status: int):
        super().__init__(message)
        self.exit_status = exit_status


def _names(names: Sequence[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _rewound(checkpoint: Checkpoint, removed: Sequence[str]) -> str:
    """The line said when a resume starts from an older checkpoint than LATEST's: which, and why."""
    name, insane = checkpoint.path.name, sorted(checkpoint.skipped_insane)
    unusable = [n for n in removed if n not in insane]
    if insane:
        verb = "was not and is" if len(insane) == 1 else "were not and are"
        said = f"resuming from {name}, the last checkpoint whose weights were sane; {_names(insane)} {verb} removed"
    else:
        said = f"resuming from the older checkpoint {name}"
    return said + (f"; removed the unusable {', '.join(unusable)}" if unusable else "")


class TrainerCallback:
    """Hooks the trainer calls on every rank; override what you need. `trainer.state` holds the step,
    epoch and history; `trainer.request_stop(...)` stops the run at the next step boundary."""

    def on_train_begin(self, trainer: "Trainer") -> None:
        """When fit() starts, after a resume restored the state (trainer.state["step"] is where it goes on)."""

    def on_log(self, trainer: "Trainer", row: dict[str, Any]) -> None:
        """After a train row (step, epoch, loss, lr, grad_norm, examples_per_s) joined the history."""

    def on_step_end(self, trainer: "Trainer", step: int, loss: float) -> None:
        """After optimizer step `step` (1-based) and its logging, evaluation and checkpoint."""

    def on_evaluate(self, trainer: "Trainer", step: int, metrics: dict[str, float]) -> None:
        """After a dev evaluation at `step`."""

    def on_checkpoint(self, trainer: "Trainer", path: Path) -> None:
        """After the checkpoint `path` is complete and LATEST names it (rank 0 wrote it)."""


@dataclass
class _Window:
    """Train-loss and throughput accumulators between two logged rows."""

    loss: float = 0.0
    steps: int = 0
    examples: int = 0
    start: float = field(default_factory=time.perf_counter)


class Trainer:
    """Trains an injected model on an encoded data set; see the module docstring for what it guarantees.

    model: a model already carrying the adapter (loralab.inject), on CPU or the rank's device; it is
    wrapped in DDP here when `dist` says there are several processes. output_dir: where checkpoints and
    the best adapter go (rank 0 writes); a caller may move it (the attribute is read at every write).
    on_best: called (rank 0) with the unwrapped model when the dev metric improves, to write the best
    adapter; the trainable tensors are kept in `best_state` either way.
    """

    def __init__(self, model: nn.Module, config, train_set: EncodedDataset, dev_set: EncodedDataset | None,
                 collator: PadCollator, output_dir: str | os.PathLike, label_map: LabelMap | None = None,
                 dist: distributed.DistInfo | None = None, on_best: Callable[[nn.Module], None] | None = None,
                 log: Callable[[str], None] = print, callbacks: Sequence[TrainerCallback] = ()) -> None:
        self.config = config
        self.dist = dist or distributed.DistInfo()
        dtype = resolve_dtype(self.dist.device, getattr(config, "dtype", "fp32"))
        self.precision = Precision(self.dist.device, dtype)
        self.scaler = self.precision.grad_scaler()     # fp16 only; a pass-through otherwise
        self.model = model  # unwrapped
        # dynamic=True: batches have many lengths (dynamic padding); avoids a recompile per length.
        self.forward_model = torch.compile(model, dynamic=True) if config.compile else model
        self.forward_model = distributed.wrap(self.forward_model, self.dist)
        if self.dist.enabled and not self.dist.sharded:
            self._check_synchronised(log if self.dist.is_main else (lambda message: None))
        elif self.dist.sharded and self.dist.is_main:
            log(describe(model, self.dist))
        self.train_set, self.dev_set = train_set, dev_set
        self.collator, self.label_map = collator, label_map
        self.output_dir = Path(output_dir)
        self.on_best = on_best
        self.callbacks = list(callbacks)
        self.log = log if self.dist.is_main else (lambda message: None)
        self.sampler = LengthGroupedBatchSampler(train_set.lengths, config.batch_size, seed=config.seed,
                                                 num_replicas=self.dist.world_size, rank=self.dist.rank)
        self.micro_per_epoch = self.sampler.batches_per_epoch
        self.steps_per_epoch = -(-self.micro_per_epoch // config.grad_accum)
        self.total_steps = config.max_steps or max(1, math.ceil(config.epochs * self.steps_per_epoch))
        self.warmup_steps = warmup_steps(config, self.total_steps)
        if config.eval_every is None:
            self.eval_every = max(1, -(-self.total_steps // 4))  # ceil: the 4th evaluation is the final one
        else:
            self.eval_every = config.eval_every or self.steps_per_epoch  # 0: once per epoch
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(model, config)
        self.scheduler = self._new_scheduler()
        self.state: dict[str, Any] = {"step": 0, "epoch": 0, "batch": 0, "best": None, "best_step": None,
                                      "evals_without_improvement": 0, "history": [], "examples": 0,
                                      "train_seconds": 0.0}
        self.best_state: dict[str, torch.Tensor] | None = None
        self.stop_signal: int | None = None

    def _new_scheduler(self) -> torch.optim.lr_scheduler.LambdaLR:
        """The schedule over this run's length; rebuilt on resume, whose length or warm-up may differ."""
        return build_scheduler(self.optimizer, self.total_steps, self.warmup_steps, self.config.scheduler,
                               self.config.scheduler_options)

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
    def checkpoint_dir(self) -> Path:
        return self.output_dir / "checkpoints"

    @property
    def global_batch(self) -> int:
        return self.config.batch_size * self.config.grad_accum * self.dist.world_size

    def request_stop(self, signum: int = signal.SIGINT) -> None:
        """Stop at the next step boundary, after a checkpoint (safe to call from a signal handler)."""
        self.stop_signal = signum

    def _better(self, value: float) -> bool:
        best = self.state["best"]
        if best is None:
            return True
        return value < best if self.config.best_is_lower else value > best

    def weights_record(self) -> tuple[bool, float]:
        """(sane, max |w|) of the trainable tensors now; see the module docstring."""
        if not self.params:
            return True, 0.0
        finite = all(bool(torch.isfinite(p).all()) for p in self.params)
        max_abs = max(float(p.detach().abs().max()) for p in self.params) if finite else math.inf
        bound = SANE_GROWTH * max(1.0, self.state.get("start_max_abs") or 0.0)
        return finite and max_abs <= bound, max_abs

    @contextlib.contextmanager
    def _writing(self, what: str) -> Iterator[None]:
        """Turn a failed write (read-only or full disk) into one line saying what stays usable."""
        try:
            yield
        except Exception as exc:
            raw = files.os_error(exc)           # an OSError, or safetensors' error carrying one
            error = files.unwritable(getattr(raw, "filename", None) or self.output_dir, raw) if raw else exc
            if not isinstance(error, LoraLabError):
                raise
            pointer = self.checkpoint_dir / LATEST
            full = isinstance(error, files.Unwritable) and error.disk_full
            remedy = "Free some space" if full else f"Make {self.output_dir} writable"
            if pointer.is_file():
                after = (f"its last complete checkpoint {self.checkpoint_dir / pointer.read_text().strip()} is "
                         f"intact. {remedy}, then continue with `loralab train --output {self.output_dir} --resume`")
            else:   # before the first checkpoint the run's folder is not committed: nothing was kept
                after = (f"no checkpoint was complete, so nothing was kept; "
                         f"{'free some space' if full else 'choose a writable output'} and start again")
            if full:
                raise LoraLabError(f"{files.DISK_FULL[error.errno]} while writing the {what} at step "
                                   f"{self.state['step']}; training stopped and {after}") from None
            raise LoraLabError(f"could not write the {what} at step {self.state['step']} ({error}); training "
                               f"stopped and {after}") from None

    def _save_checkpoint(self) -> Path:
        sane, max_abs = self.weights_record()
        name = step_name(self.state["step"])
        self.state.update(sane=sane, max_abs_weight=max_abs if math.isfinite(max_abs) else None)
        if sane:
            self.state["last_good"] = name
        if self.scaler.is_enabled():
            self.state["grad_scaler"] = self.scaler.state_dict()     # plain numbers: the scale and its tracker
        if self.dist.is_main:
            also_keep = {self.state.get("last_good"), step_name(self.state["best_step"] or 0)}
            with self._writing(f"checkpoint {name}"):
                save_checkpoint(self.checkpoint_dir, self.model, self.optimizer, self.scheduler, self.state,
                                write_adapter=self.config.method == "lora", also_keep=also_keep - {None})
        distributed.barrier(self.dist)
        path = self.checkpoint_dir / name
        for callback in self.callbacks:
            callback.on_checkpoint(self, path)
        return self.checkpoint_dir / name

    def resume(self) -> bool:
        """Restore the newest usable checkpoint whose weights were sane in output_dir/checkpoints; False when
        there is none; LoraLabError when every readable one holds diverged weights."""
        try:
            checkpoint = usable_checkpoint(self.checkpoint_dir, self.log)
        except NoSaneCheckpoint as exc:
            names = sorted(exc.names)
            raise LoraLabError(f"no checkpoint in {self.checkpoint_dir} has sane weights: {_names(names)} "
                               f"{'was' if len(names) == 1 else 'were'} not (weights not finite or above "
                               f"{SANE_GROWTH:g}x their start), so there is nothing to resume from. Start over "
                               f"with a lower learning rate: `loralab train --output {self.output_dir} --overwrite "
                               f"--lr {self.config.lr / 10:g}`") from None
        if checkpoint is None:
            return False
        self._adopt_length(checkpoint.state, checkpoint.path)
        self.scheduler = self._new_scheduler()
        state = apply_checkpoint(checkpoint, self.model, self.optimizer, self.scheduler)
        self.state.update(state)
        if self.scaler.is_enabled() and state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])
        set_peak_lr(self.optimizer, self.scheduler, self.config.lr)  # a new --lr applies from here on
        distributed.barrier(self.dist)  # every rank has read before rank 0 tidies up
        pointer = self.checkpoint_dir / LATEST
        if self.dist.is_main and (not pointer.is_file() or pointer.read_text().strip() != checkpoint.path.name):
            removed = rewind(self.checkpoint_dir, checkpoint.path.name)
            self.log(_rewound(checkpoint, removed))
        if "last_good" not in self.state and self.weights_record()[0]:
            self.state["last_good"] = checkpoint.path.name  # a loralab 0.1 checkpoint
        self.best_state = load_best(self.checkpoint_dir, self.state.get("best_step"))
        self.log(f"resumed from {checkpoint.path} (step {self.state['step']} of {self.total_steps})")
        return True

    def _adopt_length(self, state: dict[str, Any], path: Path) -> None:
        """Check the checkpoint fits this run's data, and allow a changed run length (--epochs, --max-steps)."""
        saved_epoch = state.get("steps_per_epoch")
        if saved_epoch is not None and saved_epoch != self.steps_per_epoch:
            raise LoraLabError(f"{path}: the checkpoint's run has {saved_epoch} steps per epoch, this one "
                               f"{self.steps_per_epoch}; resume with the same data and batch settings")
        saved_total = state.get("total_steps")
        if saved_total not in (None, self.total_steps):
            if saved_epoch is None:   # loralab 0.1 checkpoints cannot tell a new length from new data
                raise LoraLabError(f"{path}: the checkpoint's run has {saved_total} steps, this one "
                                   f"{self.total_steps}; resume with the same data and settings")
            if self.total_steps < state["step"]:
                raise LoraLabError(f"{path}: the run is at step {state['step']}; --max-steps/--epochs must "
                                   f"allow at least that many steps (they give {self.total_steps})")
            self.log(f"run length changed from {saved_total} to {self.total_steps} optimizer steps")
        self.warmup_steps = state.get("warmup_steps", self.warmup_steps)

    # -- one optimizer step ------------------------------------------------------------------------

    def _step(self, group: Sequence[Sequence[int]]) -> tuple[float, float]:
        """Forward/backward over the micro-batches of one optimizer step, then clip and update.
        Returns (mean loss over the global batch's micro-batches, gradient norm before clipping).
        Forward runs under the precision's autocast; with fp16 the loss is scaled for backward and the
        gradients unscaled before clipping, and a step whose gradients overflowed is skipped (the scaler
        lowers its scale) instead of stopping the run."""
        model = self.forward_model
        model.train()
        losses = torch.zeros(1, dtype=torch.float64)
        for i, indices in enumerate(group):
            batch = move_batch(self.collator([self.train_set[j] for j in indices]), self.dist.device)
            last = i == len(group) - 1
            # Inside an accumulation window DDP must not all-reduce; it does so on the window's last backward.
            ddp = self.dist.enabled and not self.dist.sharded
            sync = model.no_sync() if (ddp and not last) else contextlib.nullcontext()
            with sync:
                with self.precision.autocast():
                    loss = model(**batch).loss
                self.scaler.scale(loss / len(group)).backward()
            losses += loss.detach().double().cpu()
        if self.dist.sharded:
            sync_gradients(self.params, self.dist)
        value = float(distributed.all_reduce_sum(losses / len(group), self.dist) / self.dist.world_size)
        self.scaler.unscale_(self.optimizer)
        norm = self._clip()
        overflow = self.scaler.is_enabled() and math.isfinite(value) and not math.isfinite(norm)
        if not overflow and not (math.isfinite(value) and math.isfinite(norm)):
            self.optimizer.zero_grad(set_to_none=True)
            raise self._diverged("loss" if not math.isfinite(value) else "gradient norm",
                                 value if not math.isfinite(value) else norm)
        self.scaler.step(self.optimizer)        # skipped by the scaler when fp16 gradients overflowed
        self.scaler.update()
        if overflow:
            self.state["skipped_steps"] = self.state.get("skipped_steps", 0) + 1
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return value, norm

    def _clip(self) -> float:
        """The global gradient norm before clipping (clipped to max_grad_norm when set)."""
        if self.config.max_grad_norm is not None:
            return float(torch.nn.utils.clip_grad_norm_(self.params, self.config.max_grad_norm))
        return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in self.params
                                                           if p.grad is not None])))

    def _diverged(self, what: str, value: float) -> TrainingDiverged:
        """The error for a NaN/Inf stop, naming the last sane checkpoint (and pointing LATEST back at it)."""
        good = self.state.get("last_good")
        where = f"at step {self.state['step'] + 1}"
        advice = (f"Lower the learning rate (--lr, e.g. `loralab train --output {self.output_dir} --resume "
                  f"--lr {self.config.lr / 10:g}`) or lengthen the warm-up (--warmup-ratio, --max-warmup-steps) "
                  "and start again with --overwrite")
        if good is None or not (self.checkpoint_dir / good).is_dir():
            again = (f"start again with `loralab train --output {self.output_dir} --overwrite --lr "
                     f"{self.config.lr / 10:g}`" if (self.checkpoint_dir / LATEST).is_file() else "start again")
            return TrainingDiverged(f"the {what} became {value} {where}; training stopped and no sane "
                                    f"checkpoint was written yet. Lower the learning rate (--lr, e.g. --lr "
                                    f"{self.config.lr / 10:g}) or lengthen the warm-up (--warmup-ratio, "
                                    f"--max-warmup-steps), and {again}")
        removed = rewind(self.checkpoint_dir, good) if self.dist.is_main else []
        note = (f"; LATEST points there again and the later {', '.join(removed)} (weights not finite or above "
                f"{SANE_GROWTH:g}x their start) were removed" if removed else "")
        return TrainingDiverged(f"the {what} became {value} {where}; training stopped and the last good "
                                f"checkpoint is {self.checkpoint_dir / good}{note}. {advice}")

    # -- evaluation --------------------------------------------------------------------------------

    def evaluate_dev(self) -> dict[str, float] | None:
        if self.dev_set is None:
            return None
        return evaluate(self.forward_model, self.dev_set, self.config.task, self.collator,
                        self.config.eval_batch_size, self.label_map, self.dist, precision=self.precision).metrics

    def _after_eval(self, metrics: dict[str, float]) -> None:
        value = metrics[choose(self.config.best_metric, metrics, "best metric", " (the dev metrics) with --best-metric")]
        if self._better(value):
            self.state.update(best=value, best_step=self.state["step"], evals_without_improvement=0)
            self.best_state = trainable_state(self.model)
            if self.dist.is_main and self.on_best is not None:
                with self._writing("best adapter"):
                    self.on_best(self.model)
        else:
            self.state["evals_without_improvement"] += 1

    # -- the loop ----------------------------------------------------------------------------------

    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train to total_steps (or early stop). Returns the trainer state (history, best, step)."""
        from tqdm.auto import tqdm

        if resume:
            self.resume()
        self.state.update(total_steps=self.total_steps, warmup_steps=self.warmup_steps,
                          steps_per_epoch=self.steps_per_epoch)
        self.state.setdefault("start_max_abs", self.weights_record()[1])
        for callback in self.callbacks:
            callback.on_train_begin(self)
        bar = tqdm(total=self.total_steps, initial=self.state["step"], desc="train", unit="step",
                   disable=not (self.config.progress and self.dist.is_main), dynamic_ncols=True)
        window, done = _Window(), self.state["step"] >= self.total_steps
        while not done:
            batches = self.sampler.rank_batches(self.state["epoch"])
            for start in range(self.state["batch"], len(batches), self.config.grad_accum):
                done = self._train_step(batches, start, window, bar)
                if done:
                    break
        bar.close()
        if self.dev_set is None or self.best_state is None:
            # No dev data: the final adapter is the one that counts.
            self.best_state = trainable_state(self.model)
            self.state["best_step"] = self.state["step"]
            if self.on_best is not None and self.dist.is_main:
                with self._writing("best adapter"):
                    self.on_best(self.model)
        return self.state

    def _train_step(self, batches: list[list[int]], start: int, window: _Window, bar: Any) -> bool:
        """One optimizer step with its logging, evaluation, checkpoint and stop checks; True when done."""
        group = batches[start:start + self.config.grad_accum]
        t0 = time.perf_counter()
        loss, grad_norm = self._step(group)
        self.state["train_seconds"] += time.perf_counter() - t0
        examples = sum(len(b) for b in group) * self.dist.world_size
        self.state["step"] += 1
        self.state["examples"] += examples
        self.state["batch"] = start + len(group)
        if self.state["batch"] >= len(batches):
            self.state["epoch"], self.state["batch"] = self.state["epoch"] + 1, 0
        step = self.state["step"]
        window.loss, window.steps, window.examples = window.loss + loss, window.steps + 1, window.examples + examples
        speed = window.examples / max(time.perf_counter() - window.start, 1e-9)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}", ex_s=f"{speed:.1f}")
        if step % max(1, self.config.log_every) == 0 or step == self.total_steps:
            self._log_window(step, window, grad_norm, speed)
        evaluated = self._maybe_evaluate(step, bar)
        patience = self.config.early_stopping_patience
        early = bool(patience and self.state["evals_without_improvement"] >= patience)
        done = step >= self.total_steps or early
        checkpointed = evaluated or done or bool(self.config.checkpoint_every and step % self.config.checkpoint_every == 0)
        if checkpointed:
            self._save_checkpoint()
        if early:
            self.log(f"early stop: no dev improvement in {patience} evaluations")
            self.state["early_stopped"] = True
        for callback in self.callbacks:
            callback.on_step_end(self, step, loss)
        if not done and self._stop_requested():
            self._stop(checkpointed)
        return done

    def _log_window(self, step: int, window: _Window, grad_norm: float, speed: float) -> None:
        row = {"step": step, "epoch": round(step / self.steps_per_epoch, 4), "split": "train",
               "loss": window.loss / window.steps, "lr": self.scheduler.get_last_lr()[0],
               "grad_norm": grad_norm, "examples_per_s": speed}
        self.state["history"].append(row)
        window.loss, window.steps, window.examples, window.start = 0.0, 0, 0, time.perf_counter()
        for callback in self.callbacks:
            callback.on_log(self, row)

    def _maybe_evaluate(self, step: int, bar: Any) -> bool:
        if not (step % self.eval_every == 0 or step == self.total_steps):
            return False
        metrics = self.evaluate_dev()
        if metrics is None:
            return False
        self.state["history"].append({"step": step, "epoch": round(step / self.steps_per_epoch, 4),
                                      "split": "dev", **metrics})
        self._after_eval(metrics)
        if self.dist.is_main:
            bar.write(f"step {step}/{self.total_steps} dev: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        for callback in self.callbacks:
            callback.on_evaluate(self, step, metrics)
        return True

    def _stop_requested(self) -> bool:
        """Whether any rank was asked to stop (all ranks must stop at the same step)."""
        flag = torch.tensor([float(self.stop_signal or 0)], dtype=torch.float64)
        return bool(distributed.all_reduce_sum(flag, self.dist) > 0) if self.dist.enabled else bool(self.stop_signal)

    def _stop(self, checkpointed: bool) -> None:
        path = self.checkpoint_dir / step_name(self.state["step"]) if checkpointed else self._save_checkpoint()
        signum = self.stop_signal or signal.SIGINT
        name = signal.Signals(signum).name
        raise TrainingInterrupted(f"stopped by {name} at step {self.state['step']} of {self.total_steps}; the "
                                  f"checkpoint {path} is saved. Continue with `loralab train --output "
                                  f"{self.output_dir} --resume`", 128 + signum)

    def load_best(self) -> None:
        """Put the best dev-metric trainable tensors into the model (for test evaluation)."""
        if self.best_state is not None:
            load_trainable_state(self.model, self.best_state, "best adapter")
