"""GGUF LoRA adapters for llama.cpp and Ollama, written with PyPI's `gguf` package.

    llama-server -m base.gguf --lora adapter.gguf        # llama.cpp
    FROM ./base.gguf  +  ADAPTER ./adapter.gguf          # an Ollama Modelfile

The file has the layout llama.cpp's own converter (convert_lora_to_gguf.py) writes: metadata
`general.architecture` (the base's GGUF architecture, e.g. "llama"), `general.type = "adapter"`,
`adapter.type = "lora"`, `adapter.lora.alpha` (float32); per adapted matrix two tensors named after the
base's GGUF tensor (`blk.N.attn_q.weight`) plus `.lora_a` (A, r×k) and `.lora_b` (B, d×r), in fp32 or fp16.
llama.cpp computes ΔW = (alpha / r)·B·A with r read from each B; a module whose loralab scale differs
(rsLoRA, alpha_pattern) has that ratio folded into its B, so every ΔW is the adapter's exactly.
For LLaMA-family bases llama.cpp stores q_proj/k_proj with their output rows reordered (`permute_rows`);
ΔW's rows follow them, so B of q and k is permuted the same way (A is untouched: P·(B·A) = (P·B)·A).
Which model types export, under which GGUF architecture and with or without the permutation, is the
architecture table's `gguf` entry (loralab.models.architectures.GgufLayout).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import gguf

from loralab.errors import LoraLabError, choose
from loralab.files import atomic_write
from loralab.formats.peft import AdapterFile
from loralab.models.architectures import GgufLayout, architecture, architectures

GGUF_DTYPES = {"fp32": np.float32, "fp16": np.float16}
"""--dtype of the exported factors -> numpy type (llama.cpp reads F32 and F16 LoRA tensors)."""

# The base tensors a LoRA pair may patch: the attention and MLP projections (plain matrices in llama.cpp).
_MATRICES = (gguf.MODEL_TENSOR.ATTN_Q, gguf.MODEL_TENSOR.ATTN_K, gguf.MODEL_TENSOR.ATTN_V,
             gguf.MODEL_TENSOR.ATTN_OUT, gguf.MODEL_TENSOR.FFN_GATE, gguf.MODEL_TENSOR.FFN_UP,
             gguf.MODEL_TENSOR.FFN_DOWN)
_ARCH_BY_NAME = {name: arch for arch, name in gguf.MODEL_ARCH_NAMES.items()}


@dataclass(frozen=True)
class GgufLoraTensor:
    """One adapted matrix as llama.cpp stores it: `name` is the base tensor ("blk.0.attn_q.weight"),
    A (r, k) and B (d, r) already permuted and scaled for llama.cpp."""
    name: str
    module: str
    A: torch.Tensor
    B: torch.Tensor

    def delta(self, alpha: float) -> torch.Tensor:
        """ΔW (d, k) fp32 as llama.cpp adds it to the stored base tensor: llama_cpp_scale(alpha, r)·B·A."""
        return llama_cpp_scale(alpha, self.A.shape[0]) * (self.B @ self.A)


def permute_rows(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's reordering of a LLaMA q or k projection's output rows (its converter's `permute`).

    weight: (heads·head_dim, ...) rows per head. Within each head, transformers' rotary embedding pairs
    row i with row i + head_dim/2 (two halves); llama.cpp pairs neighbours (2i, 2i+1), so row i of the
    first half moves to 2i and row i of the second half to 2i + 1. heads: the query heads for q, the
    key/value heads for k (grouped-query attention)."""
    rows = weight.shape[0]
    if rows % (2 * heads):
        raise LoraLabError(f"cannot reorder {rows} rows into {heads} heads of even size for llama.cpp; "
                           f"check the base model's num_attention_heads / num_key_value_heads")
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def gguf_layout(config: Any) -> GgufLayout:
    """The architecture table's llama.cpp layout for a transformers config; one line for other families."""
    model_type = getattr(config, "model_type", None)
    arch = architecture(model_type)
    layout = arch.gguf_layout(model_type) if arch is not None else None
    if layout is None:
        supported = sorted(t for a in architectures() for t, _ in a.gguf)
        raise LoraLabError(f"GGUF adapter export supports {', '.join(supported)} bases (llama.cpp's layout); "
                           f"this adapter's base is {model_type!r}: merge it instead (loralab merge)")
    return layout


def gguf_lora_tensors(adapter: AdapterFile, config: Any) -> tuple[GgufLayout, float, list[GgufLoraTensor]]:
    """(layout, alpha, tensors): the adapter's factors in llama.cpp's names, order and scaling, for a base
    with transformers config `config` (model_type, num_hidden_layers, num_attention_heads, num_key_value_heads).
    Raises one line for what a GGUF LoRA adapter cannot hold (DoRA's magnitudes, biases, modules_to_save
    copies, a module that is not an attention or MLP projection)."""
    layout = gguf_layout(config)
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    alpha, tensors = lora_tensors_for_layout(adapter, layout, int(config.num_hidden_layers), heads, kv_heads)
    return layout, alpha, tensors


def llama_cpp_scale(alpha: float, r: int) -> float:
    """The factor llama.cpp multiplies B·A by: alpha / r (r read from each B), 1 when alpha is 0."""
    return alpha / r if alpha else 1.0


def lora_tensors_for_layout(adapter: AdapterFile, layout: GgufLayout, layers: int, heads: int, kv_heads: int,
                            instead: str = "merge it instead (loralab merge)",
                            holder: str = "llama.cpp's GGUF adapters hold") -> tuple[float, list[GgufLoraTensor]]:
    """(alpha, tensors) for a base stored in llama.cpp's `layout` with `layers` blocks, `heads` query heads
    and `kv_heads` key/value heads (the q/k permutation's head counts). `holder` and `instead`: what the
    one-line errors say takes plain factors only and the way out they name (export: merge it instead)."""
    _check_plain(adapter, holder, instead)
    alpha = float(adapter.config.get("lora_alpha", 8))
    names = gguf.get_tensor_name_map(_ARCH_BY_NAME[layout.arch], layers)
    head_counts = {gguf.MODEL_TENSOR.ATTN_Q: heads, gguf.MODEL_TENSOR.ATTN_K: kv_heads}
    tensors = []
    for module, (A, B, scale) in sorted(adapter.factors.items(), key=lambda item: _natural(item[0])):
        found = names.get_type_and_name(module)
        if found is None or found[0] not in _MATRICES:
            raise LoraLabError(f"module {module} has no llama.cpp tensor that a LoRA adapter can patch ({layout.arch}: "
                               f"the attention and MLP projections); train without it to export to GGUF")
        kind, name = found
        llama_scale = llama_cpp_scale(alpha, A.shape[0])
        B = B.float() if math.isclose(scale, llama_scale, rel_tol=1e-6) else B.float() * (scale / llama_scale)
        if layout.permute_qk and kind in head_counts:
            B = permute_rows(B, head_counts[kind])
        tensors.append(GgufLoraTensor(name + ".weight", module, A.float(), B))
    if not tensors:
        raise LoraLabError(f"{adapter.path} holds no LoRA factors to export")
    return alpha, tensors


def write_gguf_adapter(adapter: AdapterFile, config: Any, path: str | os.PathLike, dtype: str = "fp32") -> int:
    """Write `adapter` (read with loralab.read_adapter) as a GGUF LoRA adapter for the base whose
    transformers config is `config`; dtype "fp32" or "fp16". Atomic (loralab.files). Returns the number
    of adapted matrices."""
    numpy_type = GGUF_DTYPES[choose(dtype, GGUF_DTYPES, "GGUF dtype")]
    layout, alpha, tensors = gguf_lora_tensors(adapter, config)

    def write(target: Path) -> None:
        writer = gguf.GGUFWriter(target, layout.arch)       # adds general.architecture
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        writer.add_name(Path(adapter.path).name)
        for t in tensors:
            writer.add_tensor(t.name + ".lora_a", t.A.numpy().astype(numpy_type))
            writer.add_tensor(t.name + ".lora_b", t.B.numpy().astype(numpy_type))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    atomic_write(path, write)
    return len(tensors)


def _check_plain(adapter: AdapterFile, holder: str, instead: str) -> None:
    if adapter.extras:
        module, keys = next(iter(adapter.extras.items()))
        raise LoraLabError(f"{holder} plain LoRA factors only; {module} also has "
                           f"{', '.join(keys)} (a LoRA variant such as DoRA): {instead}")
    if adapter.biases or adapter.saved_modules:
        what = next(iter(adapter.biases)) if adapter.biases else next(iter(adapter.saved_modules))
        raise LoraLabError(f"{holder} LoRA factors only, and this adapter also saves {what} "
                           f"(a trained bias or a modules_to_save copy): {instead}")


def _natural(module: str) -> tuple:
    """Sort key putting layer 2 before layer 10."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in module.split("."))
