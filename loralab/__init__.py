"""loralab: LoRA (Low-Rank Adaptation, Hu et al. 2021) for PyTorch and transformers.

    import loralab
    model = loralab.inject(model, loralab.LoraConfig(r=8, alpha=16))   # freeze W0, add B·A to Wq, Wv
    ...train...
    loralab.save_adapter(model, "out/adapter")                          # PEFT-compatible folder
    loralab.merge(model)                                                # W0 += (alpha/r)·B·A: zero latency
"""
from loralab.adapters.operations import (active_adapter, combine_adapters, delete_adapter, disabled, is_merged,
                                         list_adapters, merge, merge_and_unload, set_adapter, unmerge)
from loralab.adapters.state import lora_layers
from loralab.errors import LoraLabError
from loralab.formats.peft import load_adapter, read_adapter, save_adapter
from loralab.surgery.config import LoraConfig
from loralab.surgery.inject import PlannedModule, inject, plan_injection, trainable_summary

__version__ = "0.1.0"

__all__ = [
    "LoraConfig", "LoraLabError", "PlannedModule", "active_adapter", "combine_adapters", "delete_adapter",
    "disabled", "inject", "is_merged", "list_adapters", "load_adapter", "lora_layers", "merge", "merge_and_unload",
    "plan_injection", "read_adapter", "save_adapter", "set_adapter", "trainable_summary", "unmerge",
]
