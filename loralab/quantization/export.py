"""Writing a quantized model where other tools can read it: bitsandbytes' checkpoint format, through
transformers (what `BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")` / `load_in_8bit=True`
saves). loralab's NF4 codes and absmax are bitsandbytes' own (nf4.py) and its int8 rows are bitsandbytes'
(CB, SCB = 127·scale), so re-quantizing loralab's dequantized weights there gives back the same codes: the
file holds exactly the model loralab computed, and loads in transformers + bitsandbytes, PEFT, and loralab
(loralab.quantization.saved)."""
from __future__ import annotations

import shutil
from pathlib import Path

from torch import nn

from loralab.errors import LoraLabError
from loralab.quantization.base import SCHEMES, get_scheme


def exportable() -> tuple[str, ...]:
    """The registered schemes with a bitsandbytes form (their `bitsandbytes_options` with default options)."""
    return tuple(name for name, cls in SCHEMES.items() if cls().bitsandbytes_options() is not None)


def bitsandbytes_config(scheme: str):
    """transformers' BitsAndBytesConfig for a loralab scheme name, from the scheme's `bitsandbytes_options`
    (its default options: nf4 without double quantization)."""
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError:
        raise LoraLabError("saving a quantized model needs bitsandbytes: pip install bitsandbytes (or pip install "
                           "'loralab[quantization]'), or keep the merged weights in full precision") from None
    options = get_scheme(scheme).bitsandbytes_options()
    if options is None:
        raise LoraLabError(f"cannot save a {scheme!r} model in bitsandbytes' format; use one of "
                           f"{', '.join(exportable())}")
    return BitsAndBytesConfig(**options)


def save_bitsandbytes(dense: nn.Module, folder: str | Path, scheme: str) -> None:
    """Save `dense` (a transformers model whose Linear weights are the dequantized values of a loralab
    `scheme` model) into `folder` in bitsandbytes' format. Peak memory: the dense model and its quantized
    copy; a dense copy is written to `folder`/.dense first and removed."""
    import transformers

    config = bitsandbytes_config(scheme)
    folder = Path(folder)
    staging = folder / ".dense"
    dense.save_pretrained(staging)
    try:
        cls = getattr(transformers, type(dense).__name__)
        quantized = cls.from_pretrained(staging, quantization_config=config, dtype=dense.dtype)
        quantized.save_pretrained(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
