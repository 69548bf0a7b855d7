"""Base linears through oneDNN's packed-weight kernel while decoding on a CPU (`PackedLinears`).

    packed = PackedLinears(model)            # finds the plain nn.Linear layers; packs nothing yet
    with torch.inference_mode(), packed:     # inside: each nn.Linear runs mkldnn's _linear_pointwise
        logits = model(**batch).logits

Why: a decoding step multiplies a few rows (B ≤ 32 tokens) by every weight of the model, and on this
project's CPU (AMD EPYC, AVX-512, one thread) torch's default fp32 GEMM reaches 35-40 GFLOP/s on those
shapes while oneDNN's, given the weight once in its own blocked layout, reaches about 80 (SmolLM2-135M,
16 rows: the LM head 576→49,152 takes 24 ms against 11.6 ms; docs/serving.md has the whole-step numbers). The
weight is reordered once (`torch.ops.mkldnn._reorder_linear_weight`, about 0.1 s for the 113 MB LM head)
and kept beside the original: **the packed copy costs the layers' fp32 bytes again**.

Only while the block is entered, and only for layers of exactly `nn.Linear` (a LoRA-wrapped layer's base, a
task head, the LM head; never a QuantizedLinear or another subclass) with fp32 or bf16 weights on the CPU,
the layer's `forward` is replaced on the instance; leaving the block restores it (and an instance `forward`
someone else had set). A call that needs autograd (grad enabled and the input or the weight requiring it)
or whose input has another dtype or device takes torch's own path. LoRA factors, attention and everything
else run as before, so adapters, per-row plans and merges are untouched. A weight changed since it was
packed (another tensor, storage or in-place version: a merge, an optimizer step) is repacked on its next
call, so a packed forward always computes with the current weights.

Numbers: the same products summed in another order, so a logit differs from torch's default kernel by
float rounding only (≤ 1e-5 relative on the tests' models, `tests/generation/test_packed.py`); greedy
tokens were equal on every model the tests and the benchmark ran. Off: `PackedLinears(model, enabled=False)`
(BatchDecoder(packed=False), `loralab serve --no-packed-linears`).
"""
from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from loralab.precision import available_memory

PACKED_DTYPES = (torch.float32, torch.bfloat16)
# Left on by default (enabled=None) only while the packed copy takes at most this share of the memory still
# available: the copy doubles the linears' bytes, and a server must not trade its headroom for speed.
MAX_MEMORY_SHARE = 0.5


class PackingSkipped(UserWarning):
    """The default-on packed path stayed off: its copy would not fit the memory available."""


def packing_available() -> bool:
    """True where torch has oneDNN (mkldnn) on this CPU."""
    return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def packable(module: nn.Module) -> bool:
    """A plain nn.Linear (not a subclass) with an fp32/bf16 weight on the CPU."""
    weight = getattr(module, "weight", None)
    return (type(module) is nn.Linear and isinstance(weight, torch.Tensor) and weight.device.type == "cpu"
            and weight.dtype in PACKED_DTYPES and (module.bias is None or module.bias.dtype == weight.dtype))


class _Packed:
    """One layer's packed weight and what it was packed from (the weight's identity, storage and version)."""

    def __init__(self, layer: nn.Linear, rows_hint: int):
        self.layer = layer
        self.rows_hint = rows_hint
        self.key: tuple = ()
        self.weight: torch.Tensor | None = None

    def current(self) -> torch.Tensor:
        w = self.layer.weight
        key = (id(w), w.data_ptr(), w._version)
        if key != self.key:
            with torch.no_grad():
                self.weight = torch.ops.mkldnn._reorder_linear_weight(w.detach(), self.rows_hint)
            self.key = key
        return self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in_features) -> (..., out_features), the layer's dtype."""
        w = self.layer.weight
        if x.dtype != w.dtype or x.device.type != "cpu" or (torch.is_grad_enabled() and (x.requires_grad or
                                                                                         w.requires_grad)):
            return nn.Linear.forward(self.layer, x)      # the packed kernel has no autograd: torch's path
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.current(), self.layer.bias, "none", [], "")


class PackedLinears:
    """A reusable, re-entrant-safe block: inside it the model's packable linears run oneDNN's packed kernel.

    model: any nn.Module. enabled: False makes the block a no-op (so callers need no branch); None: on where
    `packing_available()`. rows_hint: the batch rows oneDNN picks its weight layout for (any row count
    works; decoding steps have about this many). Layers are found once, at construction; weights are packed
    on first use and repacked when they change. `layers`: how many layers it covers (0 when off).
    With enabled=None the block also stays off, with a PackingSkipped warning (its text in `skipped`), when
    the copy would take more than MAX_MEMORY_SHARE of the memory available now (precision.available_memory);
    enabled=True packs regardless.
    """

    def __init__(self, model: nn.Module, enabled: bool | None = None, rows_hint: int = 16):
        self.enabled = packing_available() if enabled is None else bool(enabled and packing_available())
        layers = [m for m in model.modules() if packable(m)] if self.enabled else []
        self.skipped: str | None = None
        if enabled is None and layers:
            self.skipped = _no_room(sum(m.weight.numel() * m.weight.element_size() for m in layers))
            if self.skipped:
                warnings.warn(self.skipped, PackingSkipped, stacklevel=2)
                self.enabled, layers = False, []
        self._packed = [_Packed(m, rows_hint) for m in layers]
        self._depth = 0
        self._before: list[Any] = []

    @property
    def layers(self) -> int:
        return len(self._packed)

    def packed_bytes(self) -> int:
        """Bytes of the packed copies made so far (the weights' own size; oneDNN may pad a little)."""
        return sum(p.weight.numel() * p.weight.element_size() for p in self._packed if p.weight is not None)

    def __enter__(self) -> "PackedLinears":
        self._depth += 1
        if self._depth == 1:
            self._before = [p.layer.__dict__.get("forward") for p in self._packed]
            for p in self._packed:
                p.layer.forward = p.forward
        return self

    def __exit__(self, *exc: Any) -> None:
        self._depth -= 1
        if self._depth == 0:
            for p, before in zip(self._packed, self._before):    # an instance forward set by others comes back
                if before is None:
                    p.layer.__dict__.pop("forward", None)
                else:
                    p.layer.forward = before
            self._before = []


def _no_room(copy_bytes: int) -> str | None:
    """Why a packed copy of `copy_bytes` should not be made now (None: it fits)."""
    room = available_memory("cpu")
    if room is None or copy_bytes <= MAX_MEMORY_SHARE * room:
        return None
    return (f"packed linears off: their copy would take {copy_bytes / 2**20:.0f} MiB of the {room / 2**20:.0f} MiB "
            f"available (more than {MAX_MEMORY_SHARE:.0%}); decoding uses torch's kernel instead (free memory and "
            "restart, or force it from Python with PackedLinears(model, enabled=True))")
