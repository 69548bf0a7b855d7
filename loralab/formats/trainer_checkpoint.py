"""transformers' Trainer checkpoints of a model loralab adapted.

Trainer saves a checkpoint through `model.save_pretrained` (loralab's bound one: the adapters in PEFT layout),
but it reloads one (`resume_from_checkpoint`, `load_best_model_at_end`) through `model.load_adapter` only for
`peft.PeftModel` instances; any other model is reloaded from `model.safetensors` with
`model.load_state_dict(tensors, strict=False)`. So a checkpoint folder (`checkpoint-<step>`) of an adapted model
also gets `model.safetensors` holding only the tensors that train (the adapter's factors, its copies of
modules_to_save, the biases its bias mode trains), named as `model.state_dict()` names them: a few kB, not the
base. A plain `Trainer(model=loralab.inject(...))` then resumes and restores its best checkpoint unchanged.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from torch import nn

from loralab.files import write_safetensors

# transformers.trainer_utils.PREFIX_CHECKPOINT_DIR ("checkpoint") + "-" + the global step: the folders
# Trainer._save_checkpoint creates (and get_last_checkpoint finds).
CHECKPOINT_FOLDER = re.compile(r"checkpoint-\d+")
TRAINABLE_NAME = "model.safetensors"     # transformers' SAFE_WEIGHTS_NAME: what Trainer reloads a non-PEFT model from


def is_trainer_checkpoint(folder: str | os.PathLike) -> bool:
    """True for a folder named as transformers' Trainer names its checkpoints (checkpoint-<step>)."""
    return CHECKPOINT_FOLDER.fullmatch(Path(folder).name) is not None


def trainable_state(model: nn.Module) -> dict:
    """{state_dict key: tensor} of every parameter that trains now (requires_grad), detached."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def write_trainable_state(model: nn.Module, folder: str | os.PathLike) -> Path:
    """Write `folder/model.safetensors` with the model's trainable tensors (atomically)."""
    return write_safetensors(Path(folder) / TRAINABLE_NAME, trainable_state(model), {"format": "pt"})
