"""Models saved already quantized: a `quantization_config` in their config.json.

    config = saved_quantization(folder)            # the config.json's quantization_config, or None
    check_loadable(folder, config)                 # LoraLabError (one line) when loralab cannot load it
    model = transformers...from_pretrained(folder) # transformers + bitsandbytes rebuild the quantized layers
    from_bitsandbytes(model)                       # ...and they become loralab's own quantized layers

bitsandbytes checkpoints (what `BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")` or
`load_in_8bit=True` saves, QLoRA's usual base) load as loralab's NF4 and int8 layers with their exact codes:
NF4 codes and block absmax are bitsandbytes' own layout (nf4.py; double-quantized absmax are decoded by
bitsandbytes and kept in fp32, 0.37 bits per weight more than its nested form, so that every weight equals
bitsandbytes' value), and bitsandbytes' int8 rows (CB, with SCB = the row's absmax) are loralab's
per-channel int8 with scale = SCB / 127. LoRA then trains on them as
on a base loralab quantized itself. Other methods (GPTQ, AWQ, FP8, bitsandbytes' fp4, ...) are refused
with the way out: load the unquantized model and let loralab quantize it (`--quantize int8|nf4`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from loralab.errors import LoraLabError
from loralab.quantization.int8 import Int8Scheme
from loralab.quantization.model import replace_layer
from loralab.quantization.nf4 import NF4Linear


def saved_quantization(folder: str | os.PathLike) -> dict | None:
    """The `quantization_config` of a model folder's config.json, None when it has none."""
    path = Path(folder) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    found = config.get("quantization_config") if isinstance(config, dict) else None
    return found if isinstance(found, dict) else None


def check_loadable(folder: str | os.PathLike, config: dict) -> None:
    """Refuse (one line naming the fix) a saved quantization loralab cannot load; nothing is read but JSON."""
    method = config.get("quant_method", "unknown")
    fix = "load the unquantized model and quantize it with --quantize int8 or nf4 (loralab.quantize)"
    if method != "bitsandbytes":
        raise LoraLabError(f"{folder} is saved quantized with {method!r} (quantization_config in its config.json); "
                           f"loralab loads bitsandbytes nf4 and int8 checkpoints only: {fix}")
    four_bit = config.get("load_in_4bit") or config.get("_load_in_4bit")
    if four_bit and config.get("bnb_4bit_quant_type", "fp4") != "nf4":
        raise LoraLabError(f"{folder} is saved in bitsandbytes' {config.get('bnb_4bit_quant_type')!r} 4-bit format; "
                           f"loralab's 4-bit base is nf4: {fix}")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise LoraLabError(f"{folder} is saved quantized by bitsandbytes, which is not installed: "
                           "pip install bitsandbytes (or pip install 'loralab[quantization]')") from None


def from_bitsandbytes(model: nn.Module) -> int:
    """Replace every bitsandbytes Linear4bit (nf4) / Linear8bitLt of `model` by loralab's NF4 / int8 layer
    holding the same codes, in place. Returns how many layers were replaced."""
    import bitsandbytes as bnb

    replaced = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, bnb.nn.Linear4bit):
            # double_quant=False: the block absmax are kept as bitsandbytes decodes them (fp32), so every
            # weight is exactly bitsandbytes' value; re-compressing them would round them again.
            new = NF4Linear.from_bitsandbytes(module, double_quant=False)
        elif isinstance(module, bnb.nn.Linear8bitLt):
            new = _int8_from_bitsandbytes(module, Int8Scheme())
        else:
            continue
        parent, _, attr = name.rpartition(".")
        replace_layer(model.get_submodule(parent), attr, new)
        replaced += 1
    return replaced


def _int8_from_bitsandbytes(layer: nn.Module, scheme) -> nn.Module:
    """bitsandbytes' int8 row format (CB int8 (d, k), SCB = row absmax) as loralab's per-channel int8:
    W = CB · SCB / 127 either way."""
    scb = getattr(layer.weight, "SCB", None)
    if scb is None:
        raise LoraLabError("a bitsandbytes int8 layer holds no row scales (SCB); save it again with bitsandbytes")
    codes = layer.weight.data.to(torch.int8)
    bias = layer.bias.detach() if layer.bias is not None else None
    # quantize_weight re-derives the same codes from W = CB·SCB/127 (their row max is ±127 by construction)
    weight = codes.float() * (scb.float() / 127)[:, None]
    return scheme.quantize_weight(weight, bias)
