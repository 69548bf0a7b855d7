"""Former home of the training loop, split in loralab 0.2 into (import from these):

    loralab.training.trainer        Trainer, TrainerCallback, TrainingDiverged, TrainingInterrupted
    loralab.training.evaluation     evaluate, EvalResult
    loralab.training.optimization   build_optimizer, build_scheduler, lr_factor, no_decay
    loralab.training.runtime        set_threads, seed_everything, available_cores
    loralab.training.inputs         load_splits, fixed_subset, task_of, head_modules, load_model_for
    loralab.training.run_folder     the run folder's names, writers and readers (TASK_FILENAME, ...)
    loralab.training.run            run_training

The names below keep code written against 0.1 working for one release.
"""
from loralab.training.evaluation import EvalResult, evaluate
from loralab.training.inputs import fixed_subset, head_modules, load_model_for, load_splits, task_of
from loralab.training.optimization import build_optimizer, build_scheduler, lr_factor
from loralab.training.run import run_training
from loralab.training.run_folder import TASK_FILENAME, TRAINABLE_FILE
from loralab.training.runtime import available_cores, seed_everything, set_threads
from loralab.training.trainer import Trainer, TrainingDiverged

__all__ = ["EvalResult", "evaluate", "fixed_subset", "head_modules", "load_model_for", "load_splits", "task_of",
           "build_optimizer", "build_scheduler", "lr_factor", "run_training", "TASK_FILENAME", "TRAINABLE_FILE",
           "available_cores", "seed_everything", "set_threads", "Trainer", "TrainingDiverged"]
