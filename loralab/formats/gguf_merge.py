"""A LoRA adapter merged into a GGUF base model, written as a GGUF model llama.cpp and Ollama load alone.

    loralab merge smollm2-135m-instruct ADAPTER --to gguf -o merged.gguf     # then: llama-server -m merged.gguf

The new file is the base file with the adapted matrices replaced: every metadata key-value (hyperparameters,
tokenizer, chat template, general.file_type …) is copied as it is, every other tensor is copied byte for byte
in its original quantization (Q4_1, Q8_0, …) and order, and each adapted matrix becomes
W = dequantize(W0) + ΔW stored as F32 or F16 (llama.cpp mixes tensor types freely). ΔW is the adapter's
update in llama.cpp's layout, computed by `loralab.formats.gguf_adapter` (one source of truth for the
tensor names, the alpha/r scaling and the q/k row permutation of LLaMA-family bases), so merging here and
`llama-server -m base.gguf --lora adapter.gguf` add the same ΔW to the same dequantized W0.

Only GGUF bases merge here: a transformers folder's GGUF form (tensor names, tokenizer metadata, the
converter's per-family choices) is llama.cpp's convert_hf_to_gguf.py's business.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import gguf

from loralab.errors import LoraLabError, choose
from loralab.files import atomic_write
from loralab.formats.gguf_adapter import GGUF_DTYPES, GgufLoraTensor, lora_tensors_for_layout
from loralab.formats.peft import AdapterFile
from loralab.models.architectures import GgufLayout, architectures
from loralab.models.gguf import gguf_fingerprint

NOT_GGUF = ("merge --to gguf needs a GGUF base (a .gguf file or a builtin GGUF model such as "
            "smollm2-135m-instruct); for a transformers folder merge to a folder (loralab merge BASE ADAPTER -o DIR) "
            "and convert that with llama.cpp's convert_hf_to_gguf.py")
_INSTEAD = ("merge it to a folder instead (loralab merge BASE ADAPTER -o DIR) and convert that with llama.cpp's "
            "convert_hf_to_gguf.py")


@dataclass(frozen=True)
class GgufMergeReport:
    """What `merge_into_gguf` wrote: `merged` tensors replaced (fp32/fp16), `copied` tensors kept byte for
    byte, `kv` metadata key-values copied, the GGUF architecture `arch`; `note`: one line when the adapter
    records a GGUF base with another content fingerprint (trained on other weights, e.g. another quantization
    of the model), else None."""
    merged: int
    copied: int
    kv: int
    arch: str
    note: str | None = None


def gguf_arch_layout(arch: str) -> GgufLayout:
    """The architecture table's llama.cpp layout for a GGUF `general.architecture`; one line for others."""
    layouts = {layout.arch: layout for a in architectures() for _, layout in a.gguf}
    if arch not in layouts:
        raise LoraLabError(f"merge --to gguf supports GGUF bases of architecture {', '.join(sorted(layouts))}; "
                           f"this base is {arch!r}: {_INSTEAD}")
    return layouts[arch]


def _field(reader: gguf.GGUFReader, key: str, path: Path):
    field = reader.fields.get(key)
    if field is None:
        raise LoraLabError(f"{path} has no {key} metadata; give a GGUF model file written by llama.cpp's converter")
    return field.contents()


def merged_tensors(reader: gguf.GGUFReader, adapter: AdapterFile,
                   path: Path) -> tuple[str, float, dict[str, GgufLoraTensor]]:
    """(arch, alpha, {GGUF tensor name: its LoRA pair in llama.cpp's layout}) for `adapter` on the GGUF base
    `reader` (read from `path`); each pair's base tensor is checked to exist with the shape of its ΔW."""
    arch = _field(reader, gguf.Keys.General.ARCHITECTURE, path)
    layout = gguf_arch_layout(arch)
    layers = int(_field(reader, f"{arch}.block_count", path))
    heads = _field(reader, f"{arch}.attention.head_count", path)
    kv_heads = reader.fields.get(f"{arch}.attention.head_count_kv")
    kv_heads = kv_heads.contents() if kv_heads is not None else heads
    if not isinstance(heads, int) or not isinstance(kv_heads, int):
        raise LoraLabError(f"{path} has per-layer head counts, which merge --to gguf does not handle; {_INSTEAD}")
    alpha, pairs = lora_tensors_for_layout(adapter, layout, layers, heads, kv_heads, instead=_INSTEAD,
                                           holder="merge --to gguf merges")
    stored = {t.name: t for t in reader.tensors}
    by_name = {}
    for pair in pairs:
        base = stored.get(pair.name)
        d, k = pair.B.shape[0], pair.A.shape[1]
        if base is None:
            raise LoraLabError(f"{path} has no tensor {pair.name} for the adapter's {pair.module}; merge the adapter "
                               f"into the base it was trained on")
        if [int(n) for n in base.shape] != [k, d]:        # GGUF lists ne[0] (the input width) first
            raise LoraLabError(f"the adapter's {pair.module} is {d}×{k} but {path}'s {pair.name} is "
                               f"{int(base.shape[1])}×{int(base.shape[0])}; merge the adapter into the base it was "
                               f"trained on")
        by_name[pair.name] = pair
    return arch, alpha, by_name


def merge_into_gguf(base: str | os.PathLike, adapter: AdapterFile, path: str | os.PathLike,
                    dtype: str = "fp32") -> GgufMergeReport:
    """Write the GGUF model file `path`: the GGUF base `base` with `adapter` (loralab.read_adapter) merged
    into its adapted matrices, stored as `dtype` ("fp32" or "fp16"); everything else copied unchanged (see the
    module docstring). Atomic (loralab.files.atomic_write): on any error `path` is left as it was."""
    numpy_type = GGUF_DTYPES[choose(dtype, GGUF_DTYPES, "GGUF dtype")]
    base = Path(base)
    reader = gguf.GGUFReader(base)
    arch, alpha, pairs = merged_tensors(reader, adapter, base)
    kv = [f for f in reader.fields.values()
          if f.name != gguf.Keys.General.ARCHITECTURE and not f.name.startswith("GGUF.")]   # the writer adds these

    def merged(tensor) -> np.ndarray:
        """W0 dequantized (rows = output features, as llama.cpp stores them) + ΔW, as `numpy_type`."""
        W0 = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        return (W0 + pairs[tensor.name].delta(alpha).numpy()).astype(numpy_type)

    def write(target: Path) -> None:
        writer = gguf.GGUFWriter(target, arch, endianess=reader.endianess)
        alignment = reader.fields.get(gguf.Keys.General.ALIGNMENT)
        if alignment is not None:
            writer.data_alignment = alignment.contents()
        for field in kv:
            value_type = field.types[0]
            sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(field.name, field.contents(), value_type, sub_type=sub_type)
        for tensor in reader.tensors:
            if tensor.name in pairs:
                rows, cols = int(tensor.shape[1]), int(tensor.shape[0])
                nbytes = rows * cols * np.dtype(numpy_type).itemsize
                writer.add_tensor_info(tensor.name, (rows, cols), np.dtype(numpy_type), nbytes)
            else:
                writer.add_tensor_info(tensor.name, tensor.data.shape, tensor.data.dtype, tensor.data.nbytes,
                                       tensor.tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for tensor in reader.tensors:      # one merged matrix in memory at a time
            data = merged(tensor) if tensor.name in pairs else tensor.data
            writer.write_tensor_data(data, tensor_endianess=reader.endianess)
        writer.close()

    atomic_write(path, write)
    return GgufMergeReport(merged=len(pairs), copied=len(reader.tensors) - len(pairs), kv=len(kv), arch=arch,
                           note=_other_base_note(adapter, base))


def _other_base_note(adapter: AdapterFile, base: Path) -> str | None:
    """One line when the adapter's record names a GGUF base whose content fingerprint is not `base`'s."""
    record = adapter.loralab_meta.get("base") or {}
    recorded = record.get("gguf_fingerprint")
    if not recorded or recorded == gguf_fingerprint(base):
        return None
    return (f"note: the adapter was trained on {record.get('name')} (GGUF fingerprint {recorded[:16]}), not on "
            f"{base} ({gguf_fingerprint(base)[:16]}): the merged model adds its update to other base weights")
