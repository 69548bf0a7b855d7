"""Experiment tracking: a training run's scalars and resolved config, sent to TensorBoard, W&B or MLflow.

    loralab train --report-to tensorboard            # then: tensorboard --logdir runs/
    TrainConfig(..., report_to=["tensorboard"])      # the same from Python (run_training reads it)

What is logged, against the optimizer step:
    train/loss, train/lr, train/grad_norm, train/examples_per_s   every log_every steps (the metrics.csv rows)
    dev/<metric>                                                  at each evaluation
    test/<metric>                                                 once, at the end
and the resolved TrainConfig: as YAML text (tag "config") and as flat hyperparameters (`lora.r`, `lr`, ...).

Where: each reporter writes under <run>/logs/<name>/, inside the run folder (so `tensorboard --logdir runs`
shows every run). The run folder only exists once its first checkpoint is complete (loralab.training.
run_output): until then the records wait in memory, and a run that fails before that leaves no logs. A
resumed run continues the same logs from the checkpoint's step (TensorBoard drops the killed run's later
points). Only rank 0 reports under DDP. W&B and MLflow run offline, on local files, and are used only when
installed: asking for one that is not is one error line before the run starts.

A new backend is one class: subclass `Reporter`, decorate it with `@register_reporter("name")`; nothing
else changes (`--report-to name` then works).
"""
from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from loralab import files
from loralab.core.registry import Registry
from loralab.errors import LoraLabError
from loralab.training.config_files import config_yaml
from loralab.training.run_folder import LOGS_DIR
from loralab.training.trainer import Trainer, TrainerCallback

TRAIN_SCALARS = ("loss", "lr", "grad_norm", "examples_per_s")  # of each logged train row (Trainer history)
REPORTERS = Registry("tracker")


class Reporter:
    """One tracking backend, opened on its own folder. `requires`: the package it imports (checked before
    the run starts). The constructor keeps what `open` needs: folder, config (TrainConfig.to_dict()),
    config_text (it as YAML), run_name, start_step (the first step this process logs: after a resume, the
    checkpoint's + 1)."""

    name = ""
    requires: str | None = None

    def __init__(self, folder: Path, config: dict[str, Any], config_text: str, run_name: str, start_step: int):
        self.folder, self.config, self.config_text = folder, config, config_text
        self.run_name, self.start_step = run_name, start_step
        self.open()

    def open(self) -> None:
        """Start the run's log and record the config."""

    def log_scalars(self, step: int, values: dict[str, float], walltime: float) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        """Make what was logged so far durable (called at each checkpoint)."""

    def close(self) -> None:
        """End the run's log (called once, at the end or on failure)."""


def register_reporter(name: str) -> Callable[[type[Reporter]], type[Reporter]]:
    """Class decorator: make a Reporter subclass available as `--report-to name` / `report_to=[name]`."""
    def add(cls: type[Reporter]) -> type[Reporter]:
        cls.name = name
        REPORTERS.add(name, cls)
        return cls
    return add


def check_available(names: Sequence[str]) -> None:
    """Every named reporter is registered and its package importable; else one error line with the fix."""
    for name in names:
        required = REPORTERS.lookup(name).requires
        if required and importlib.util.find_spec(required) is None:
            raise LoraLabError(f"--report-to {name} needs the {required} package, which is not installed: "
                               f"pip install {required} (or use --report-to tensorboard, or none)")


def flat_config(config: dict[str, Any]) -> dict[str, int | float | str | bool]:
    """The config as one level of scalar hyperparameters: sections become `lora.r`; lists and None as text."""
    flat: dict[str, int | float | str | bool] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in flat_config(value).items()})
        else:
            flat[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


# --------------------------------------------------------------------------------------------------
# The callback
# --------------------------------------------------------------------------------------------------
class Tracking(TrainerCallback):
    """Sends a run's scalars to the reporters `config.report_to` names (see the module docstring).

    ready: whether the run's folder is final (run_output: committed); records wait in memory until it is.
    Use as a context manager (or call close()) so the logs are closed even when the run fails."""

    def __init__(self, config, ready: Callable[[], bool] = lambda: True, run_name: str = "run"):
        check_available(config.report_to)
        self.names, self.ready, self.run_name = list(config.report_to), ready, run_name
        self.config, self.config_text = config.to_dict(), config_yaml(config)
        self.reporters: list[Reporter] = []
        self.pending: list[tuple[int, dict[str, float], float]] = []
        self.main, self.start_step = True, 1

    def on_train_begin(self, trainer: Trainer) -> None:
        self.main = trainer.dist.is_main
        self.start_step = trainer.state["step"] + 1

    def on_log(self, trainer: Trainer, row: dict[str, Any]) -> None:
        self.record(trainer, row["step"], {f"train/{k}": row[k] for k in TRAIN_SCALARS if k in row})

    def on_evaluate(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        self.record(trainer, step, {f"dev/{k}": v for k, v in metrics.items()})

    def on_checkpoint(self, trainer: Trainer, path: Path) -> None:
        self._send(trainer.output_dir)
        for reporter in self.reporters:
            reporter.flush()

    def finish(self, trainer: Trainer, result: dict[str, Any]) -> None:
        """Log the test metrics of the finished run, then close every reporter."""
        if "test" in result:
            self.record(trainer, trainer.state["step"], {f"test/{k}": v for k, v in result["test"].items()})
        self.close()

    def record(self, trainer: Trainer, step: int, values: dict[str, float]) -> None:
        if not (self.names and self.main):
            return
        self.pending.append((step, values, time.time()))
        self._send(trainer.output_dir)

    def _send(self, run_dir: Path) -> None:
        """Open the reporters once the run's folder is final, then pass on what waits."""
        if not (self.names and self.main) or not self.ready():
            return
        if not self.reporters:
            for name in self.names:
                folder = files.make_dirs(Path(run_dir) / LOGS_DIR / name)
                self.reporters.append(REPORTERS[name](folder, self.config, self.config_text, self.run_name,
                                                      self.start_step))
        for step, values, walltime in self.pending:
            for reporter in self.reporters:
                reporter.log_scalars(step, values, walltime)
        self.pending.clear()

    def close(self) -> None:
        reporters, self.reporters = self.reporters, []
        for reporter in reporters:
            reporter.close()

    def __enter__(self) -> "Tracking":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------------
# The reporters
# --------------------------------------------------------------------------------------------------
@register_reporter("tensorboard")
class TensorBoardReporter(Reporter):
    """torch.utils.tensorboard's SummaryWriter: scalars, the config as text and as HParams."""

    requires = "tensorboard"

    def open(self) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        # purge_step: TensorBoard hides what a killed run logged after the checkpoint this one resumed from.
        self.writer = SummaryWriter(str(self.folder), purge_step=self.start_step if self.start_step > 1 else None)
        self.writer.add_text("config", "    " + self.config_text.replace("\n", "\n    "), 0)
        metric = f"dev/{self.config['best_metric']}"
        for summary in hparams(flat_config(self.config), {metric: 0.0}):
            self.writer.file_writer.add_summary(summary)

    def log_scalars(self, step: int, values: dict[str, float], walltime: float) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step, walltime=walltime)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


@register_reporter("wandb")
class WandbReporter(Reporter):
    """Weights & Biases in offline mode (sync later with `wandb sync <run>/logs/wandb/...`)."""

    requires = "wandb"

    def open(self) -> None:
        import wandb

        self.run = wandb.init(project="loralab", name=self.run_name, dir=str(self.folder), mode="offline",
                              config=self.config)

    def log_scalars(self, step: int, values: dict[str, float], walltime: float) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


@register_reporter("mlflow")
class MlflowReporter(Reporter):
    """MLflow tracking into a local file store (view with `mlflow ui --backend-store-uri <run>/logs/mlflow`)."""

    requires = "mlflow"

    def open(self) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.folder.resolve().as_uri())
        experiment = self.client.get_experiment_by_name("loralab")
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment("loralab")
        self.run_id = self.client.create_run(experiment_id, run_name=self.run_name).info.run_id
        for key, value in flat_config(self.config).items():
            self.client.log_param(self.run_id, key, value)
        self.client.log_text(self.run_id, self.config_text, "config.yaml")

    def log_scalars(self, step: int, values: dict[str, float], walltime: float) -> None:
        for key, value in values.items():
            self.client.log_metric(self.run_id, key, value, timestamp=int(walltime * 1000), step=step)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)
