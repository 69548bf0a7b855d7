"""A progress bar over the examples a model's forward calls see, for loops that take no progress callback."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from torch import nn


@contextlib.contextmanager
def forward_progress(model: nn.Module, total: int, enabled: bool = True, desc: str = "evaluating") -> Iterator[Any]:
    """A tqdm bar (stderr) of `total` examples, advanced by the batch size of each forward of `model`
    (its `input_ids` or first positional input) while the block runs; the hook is removed afterwards."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="example", disable=not enabled, dynamic_ncols=True)

    def advance(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        inputs = kwargs.get("input_ids", args[0] if args else None)
        if inputs is not None and hasattr(inputs, "shape"):
            bar.update(int(inputs.shape[0]))

    handle = model.register_forward_hook(advance, with_kwargs=True)
    try:
        yield bar
    finally:
        handle.remove()
        bar.close()
