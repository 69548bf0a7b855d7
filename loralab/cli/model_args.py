"""The one reading of a MODEL argument on the command line: a builtin name, a model folder, a .gguf file
(or a folder holding one) or a cached hub id, as `loralab train --model` takes (loralab.models.resolve_model_spec)."""
from __future__ import annotations

import os
from pathlib import Path

from loralab.models.loading import resolve_model_spec


def resolve_model_arg(spec: str | os.PathLike) -> tuple[Path, tuple[Path, ...]]:
    """(the plain transformers folder `spec` names, the paths the command reads for it). The paths are the
    output policy's inputs (files.check_output_*): the argument as given and, where it differs, the folder it
    resolved to (a builtin model's folder, a de-quantized GGUF's cache folder, a hub snapshot)."""
    folder = resolve_model_spec(spec)
    given = Path(spec)
    return folder, (given,) if folder == given else (given, folder)


def resolve_config_arg(spec: str | os.PathLike) -> Path:
    """A config.json file, or a folder holding config.json, as given (nothing else of it is read); anything
    else through resolve_model_spec. For commands that only build a model's skeleton from its config."""
    path = Path(spec)
    if (path.is_file() and path.suffix == ".json") or (path / "config.json").is_file():
        return path
    return resolve_model_spec(spec)
