"""Bytes: dtype sizes, adapter file sizes (safetensors), and printing sizes in both unit systems.

A safetensors file is an 8-byte little-endian header length, a JSON header (padded with spaces to
a multiple of 8 bytes) naming each tensor's dtype, shape and byte range, then the raw tensor bytes.
So an adapter file is (trainable values × bytes per value) plus a header of roughly 100 bytes per
tensor, which is negligible next to the data for any real model.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from loralab.errors import choose

DTYPE_BYTES: dict[str, int] = {"fp32": 4, "fp16": 2, "bf16": 2}
_SAFETENSORS_DTYPE = {"fp32": "F32", "fp16": "F16", "bf16": "BF16"}


def dtype_bytes(dtype: str) -> int:
    return DTYPE_BYTES[choose(dtype, DTYPE_BYTES, "dtype")]


@dataclass(frozen=True)
class FileSize:
    """Estimated size of one adapter file in one dtype, in bytes."""
    dtype: str
    tensor_bytes: int           # values × bytes per value: exact
    header_bytes: int           # 8-byte length + JSON header: an estimate (tensor names may differ)

    @property
    def total_bytes(self) -> int:
        return self.tensor_bytes + self.header_bytes

    def to_dict(self) -> dict:
        return dict(dtype=self.dtype, tensor_bytes=self.tensor_bytes, header_bytes=self.header_bytes,
                    total_bytes=self.total_bytes, MB=self.total_bytes / 1e6, MiB=self.total_bytes / 2**20)


def safetensors_header_bytes(tensors: list[tuple[str, tuple[int, ...]]], dtype: str,
                             metadata: dict[str, str] | None = None) -> int:
    """Bytes before the tensor data of a safetensors file holding `tensors` (name, shape) in `dtype`:
    the 8-byte length plus the compact JSON header padded to a multiple of 8, as safetensors writes it."""
    itemsize = dtype_bytes(dtype)
    header: dict = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    # safetensors lays tensors out sorted by dtype alignment, then name; for one dtype that is by name.
    for name, shape in sorted(tensors):
        size = itemsize
        for dim in shape:
            size *= dim
        header[name] = {"dtype": _SAFETENSORS_DTYPE[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return 8 + len(text) + (-len(text)) % 8


def format_count(n: int) -> str:
    """4718592 -> '4,718,592 (4.72M)'."""
    for scale, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n:,} ({_three_digits(n / scale)}{unit})"
    return f"{n:,}"


def format_bytes(n: float) -> str:
    """Decimal and binary units side by side, e.g. 37748736 -> '37.7 MB = 36.0 MiB'.

    Papers and disks mostly use MB = 10^6 bytes, memory tools MiB = 2^20; showing both avoids
    mixing them up (the LoRA paper's "35 MB" checkpoint is 37.7 MB = 36.0 MiB by our count)."""
    if n < 1000:
        return f"{int(n)} B"
    dec = next((s, u) for s, u in ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB"), (1, "B")) if n >= s)
    binary = next((s, u) for s, u in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB"), (1, "B"))
                  if n >= s)
    return f"{_three_digits(n / dec[0])} {dec[1]} = {_three_digits(n / binary[0])} {binary[1]}"


def _three_digits(x: float) -> str:
    """About three significant digits, trailing zeros kept: 36.0, 349, 4.72."""
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"
