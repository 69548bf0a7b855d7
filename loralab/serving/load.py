"""Import alias, kept for one release: loading a base with its adapters moved to loralab.runtime (issue 19).
The old signatures (dtype= / precision= and quantize= instead of a Runtime) still work here; new code calls
loralab.runtime.load_base / load_with_adapters with a loralab.runtime.Runtime."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from loralab.precision import Precision
from loralab.runtime import Runtime, check_quantize
from loralab.runtime import load_base as _load_base
from loralab.runtime import load_with_adapters as _load_with_adapters
from loralab.runtime.folder import read_task_info
from loralab.runtime.load import Loaded, parse_adapter_specs


def load_base(model_spec: str, task_kind: str, label_map: Any = None, dtype: str = "fp32",
              quantize: str = "none") -> tuple[nn.Module, Any]:
    """loralab.runtime.load_base with the runtime spelled as dtype and quantize (the model on the CPU)."""
    runtime = Runtime(Precision.resolve("cpu", dtype), check_quantize(quantize))
    return _load_base(model_spec, task_kind, runtime, label_map)


def load_with_adapters(adapters: dict[str, Path], model: str | os.PathLike | None = None, task: str | None = None,
                       use: str | None = None, max_length: int | None = None, precision: Precision | None = None,
                       quantize: str = "none") -> Loaded:
    """loralab.runtime.load_with_adapters with the runtime spelled as precision and quantize."""
    runtime = Runtime(precision, check_quantize(quantize)) if precision is not None else \
        Runtime(quantize=check_quantize(quantize))
    return _load_with_adapters(adapters, model, task, use, max_length, runtime)


__all__ = ["Loaded", "load_base", "load_with_adapters", "parse_adapter_specs", "read_task_info"]
