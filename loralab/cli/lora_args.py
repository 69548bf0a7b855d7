"""The LoraConfig flags shared by every command that builds an adapter (inspect, budget, train, experiment)."""
from __future__ import annotations

import argparse

from loralab.errors import LoraLabError


def add_lora_arguments(parser: argparse.ArgumentParser, r_default: int = 8, alpha_default: float = 16.0) -> None:
    g = parser.add_argument_group("LoRA")
    g.add_argument("--lora-config", metavar="JSON", help="a LoraConfig as JSON; flags below override its fields")
    g.add_argument("--r", type=int, default=None, help=f"rank of ΔW = B·A (default {r_default})")
    g.add_argument("--alpha", type=float, default=None, help=f"scale numerator, ΔW·alpha/r (default {alpha_default:g})")
    g.add_argument("--dropout", type=float, default=None, help="dropout on the LoRA input (default 0)")
    g.add_argument("--targets", nargs="+", default=None, metavar="RULE",
                   help="modules to adapt: suffixes like 'query', full names, 're:REGEX', or 'all-linear' "
                        "(default: the architecture preset, the paper's Wq and Wv)")
    g.add_argument("--exclude", nargs="+", default=None, metavar="RULE", help="modules never adapted")
    g.add_argument("--init", default=None, help="kaiming (default), gaussian or pissa")
    g.add_argument("--rslora", action="store_true", default=None, help="scale by alpha/sqrt(r)")
    g.add_argument("--dora", action="store_true", default=None, help="DoRA: trainable magnitude per output row")
    g.add_argument("--bias", default=None, choices=["none", "all", "lora_only"], help="biases that train too")
    parser.set_defaults(_lora_defaults=(r_default, alpha_default))


def lora_config_from_args(args: argparse.Namespace, **extra):
    """A validated LoraConfig from the flags (and --lora-config); `extra` fills fields the command decides."""
    from loralab.surgery.config import LoraConfig

    data = LoraConfig.from_json(args.lora_config).to_dict() if args.lora_config else {}
    r_default, alpha_default = args._lora_defaults
    data.setdefault("r", r_default)
    data.setdefault("alpha", alpha_default)
    for key in ("r", "alpha", "dropout", "init", "rslora", "dora", "bias", "exclude"):
        value = getattr(args, key)
        if value is not None:
            data[key] = value
    if args.targets is not None:
        data["targets"] = "all-linear" if args.targets == ["all-linear"] else args.targets
    for key, value in extra.items():
        if value is not None and not data.get(key):
            data[key] = value
    if not isinstance(data["r"], int) or data["r"] < 1:
        raise LoraLabError(f"--r must be a positive integer, got {data['r']}")
    return LoraConfig(**data)
