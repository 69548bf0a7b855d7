"""loralab: LoRA (Low-Rank Adaptation, Hu et al. 2021) for PyTorch and transformers.

    import loralab
    model = loralab.inject(model, loralab.LoraConfig(r=8, alpha=16))   # freeze W0, add B·A to Wq, Wv
    ...train...
    loralab.save_adapter(model, "out/adapter")                          # PEFT-compatible folder
    loralab.merge(model)                                                # W0 += (alpha/r)·B·A: zero latency
    model = loralab.from_pretrained("out/adapter")                      # base model + adapter, one line
"""
from __future__ import annotations

import importlib

from loralab.errors import LoraLabError

__version__ = "0.2.0"     # the one place: pyproject.toml reads it (dynamic version)

# Public name -> module. Loaded on first use (PEP 562) so that `loralab --help` and light commands
# do not pay for importing torch and transformers.
_EXPORTS = {
    "LoraConfig": "loralab.surgery.config",
    "PlannedModule": "loralab.surgery.inject",
    # surgery's inject, reached through formats so that its hooks (save_pretrained, transformers' adapter methods) are set
    "inject": "loralab.formats.peft",
    "plan_injection": "loralab.surgery.inject",
    "trainable_summary": "loralab.surgery.inject",
    "lora_layers": "loralab.adapters.state",
    "per_row_adapters": "loralab.adapters.per_row",
    "active_adapter": "loralab.adapters.operations",
    "combine_adapters": "loralab.adapters.operations",
    "delete_adapter": "loralab.adapters.operations",
    "disabled": "loralab.adapters.operations",
    "is_merged": "loralab.adapters.operations",
    "list_adapters": "loralab.adapters.operations",
    "merge": "loralab.adapters.operations",
    "merge_and_unload": "loralab.adapters.operations",
    "set_adapter": "loralab.adapters.operations",
    "unmerge": "loralab.adapters.operations",
    "load_adapter": "loralab.formats.peft",
    "read_adapter": "loralab.formats.peft",
    "save_adapter": "loralab.formats.peft",
    "from_pretrained": "loralab.runtime",
    "quantize": "loralab.quantization",
    "merge_into_quantized": "loralab.quantization",
}

__all__ = ["LoraLabError", *_EXPORTS]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'loralab' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
