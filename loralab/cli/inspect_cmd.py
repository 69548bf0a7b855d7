"""Dry run: list every module a LoRA config would adapt, with shapes and parameter counts.

The model is built on the meta device from its config.json, so even a large model costs no memory."""
from __future__ import annotations

import argparse
import json

from loralab.cli.lora_args import add_lora_arguments, lora_config_from_args
from loralab.errors import LoraLabError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from loralab.cli.task_args import add_task_argument

    parser.add_argument("model", help="a builtin model name, model folder, .gguf file, cached hub id, or a config.json "
                                      "file")
    add_task_argument(parser, "the config's architectures")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    add_lora_arguments(parser, lora_config_file=True)


def meta_model(path: str, task: str = "auto"):
    """The model of a folder/config.json built on the meta device (no weights read, no memory used).
    task: a loralab task name or "base" (its head is built), or "auto" (the config's architectures)."""
    import torch
    import transformers

    from loralab.cli.model_args import resolve_config_arg
    from loralab.cli.task_args import model_task
    from loralab.models import auto_model_class

    p = resolve_config_arg(path)            # a builtin name, a .gguf file or a cached hub id, as train takes
    config_file = p / "config.json" if p.is_dir() else p
    if not config_file.is_file():
        raise LoraLabError(f"{path} is neither a model folder with config.json nor a config.json file")
    try:
        config = transformers.AutoConfig.from_pretrained(str(config_file))
    except (ValueError, OSError, json.JSONDecodeError) as exc:
        raise LoraLabError(f"cannot read {config_file}: {str(exc).splitlines()[0]}") from None
    with torch.device("meta"):
        if task == "auto" and getattr(config, "architectures", None):
            cls = getattr(transformers, config.architectures[0], None)
            if cls is not None:
                return cls(config)
        return auto_model_class(model_task("base" if task == "auto" else task)).from_config(config)


def format_plan(plan, total_params: int) -> str:
    rows = [("module", "kind", "ΔW shape", "r", "alpha", "params")]
    for p in plan:
        shape = f"{p.d_out}×{p.d_in}" + (f" slices {''.join('x' if s else '-' for s in p.slices)}" if p.slices else "")
        rows.append((p.name, p.kind, shape, str(p.r), f"{p.alpha:g}", f"{p.num_params:,}"))
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    lines = ["  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    trainable = sum(p.num_params for p in plan)
    lines.append(f"{len(plan)} modules, trainable LoRA params: {trainable:,} of {total_params:,} "
                 f"({100.0 * trainable / total_params:.4f}%)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from loralab.surgery.inject import plan_injection

    model = meta_model(args.model, args.task)
    plan = plan_injection(model, lora_config_from_args(args))
    total = sum(p.numel() for p in model.parameters())
    if args.json:
        print(json.dumps([p.__dict__ for p in plan], indent=2))
    else:
        print(format_plan(plan, total))
    return 0
