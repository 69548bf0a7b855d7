"""An experiment's output folder: the output policy for it (claimed, so a grid resumes) and the layout of one
written before loralab marked its outputs. Free of torch: `loralab experiment --help` imports the package."""
from __future__ import annotations

import json
import os
from pathlib import Path

from loralab.files import check_output_folder, claim_output_folder, owned_kind

OUTPUT_KIND = "experiment-report"    # the .loralab-output marker of an experiment's folder


def claim_experiment_folder(out: str | os.PathLike, inputs: list[str | os.PathLike] | tuple = ()) -> Path:
    """The output policy for an experiment's folder (loralab.files.claim_output_folder): a folder this
    experiment (or an older loralab, by its layout) wrote is re-used, so the grid resumes; a folder of other
    files, a link or one of the `inputs` is refused with one line."""
    return claim_output_folder(out, OUTPUT_KIND, inputs, recognise=is_experiment_folder)


def check_experiment_folder(out: str | os.PathLike, inputs: list[str | os.PathLike] | tuple = ()) -> Path:
    """`claim_experiment_folder`'s checks without creating or marking anything."""
    return check_output_folder(out, OUTPUT_KIND, inputs, reuse=True, recognise=is_experiment_folder)


def is_experiment_folder(folder: Path) -> bool:
    """The layout of an experiment folder written before loralab marked its outputs: a results.json naming
    its experiment and tables, or a runs/ folder holding training runs and nothing else."""
    try:
        data = json.loads((folder / "results.json").read_text(encoding="utf-8"))
        if isinstance(data, dict) and {"experiment", "tables"} <= data.keys():
            return True
    except (OSError, ValueError):
        pass
    runs = folder / "runs"
    entries = [p for p in runs.iterdir() if not p.name.startswith(".")] if runs.is_dir() else []
    return bool(entries) and all(owned_kind(p) == "train-run" for p in entries)
