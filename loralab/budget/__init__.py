"""LoRA budget calculator: trainable parameters, adapter file size and training memory, before training.

    from loralab.budget import estimate_budget, format_report
    budget = estimate_budget("gpt3-175b", r=4, targets=["q", "v"])
    budget.trainable_params            # 18,874,368 (LoRA paper §5.1, the "18M budget")
    print(format_report([budget]))

Counts come from the model's skeleton built on the meta device (no memory, even for 175B) and from
loralab's own injection planner, so they are exactly what `loralab.inject` would create.
Names are imported lazily: `loralab.budget.shapes` (the named shapes) needs neither torch nor transformers.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "NamedShape": "shapes", "SHAPES": "shapes", "find_shape": "shapes", "load_config": "shapes",
    "shape_names": "shapes",
    "ModelSkeleton": "skeleton", "TransformerDims": "skeleton", "build_skeleton": "skeleton",
    "count_parameters": "skeleton",
    "ModuleTypeCount": "count", "planned_modules": "count", "by_module_type": "count",
    "ROLES": "roles", "resolve_targets": "roles",
    "DTYPE_BYTES": "sizes", "FileSize": "sizes", "safetensors_header_bytes": "sizes", "format_bytes": "sizes",
    "TrainingSetup": "memory", "MemoryEstimate": "memory", "layer_activation_terms": "memory",
    "model_activation_bytes": "memory", "full_finetune_memory": "memory", "lora_memory": "memory",
    "Budget": "report", "lora_budget": "report", "estimate_budget": "report", "estimate_budgets": "report",
    "format_report": "report", "report_dict": "report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"loralab.budget.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'loralab.budget' has no attribute {name!r}")
