"""Trainable parameters, adapter file size and training memory of a LoRA config, before any training.

Examples:
  loralab budget --shape gpt3-175b --r 1 8 --targets q v
  loralab budget --model all-minilm-l6-v2 --r 8 --targets all-linear    # any model train takes, or a config.json
  loralab budget --model path/to/model_folder --r 8 --targets q v o --batch-size 16 --seq-len 128
  loralab budget --shape llama-7b --targets all-linear --dtype bf16 --attention flash --json
  loralab budget --shape llama-65b --targets all-linear --r 64 --dtype bf16 --quantize nf4 --double-quant \
      --gradient-checkpointing                       # QLoRA's 65B on one 48 GB GPU
  loralab budget --list-shapes
"""
from __future__ import annotations

import argparse
import json

# Only light modules at import time: torch and transformers load in run(), so --help stays fast.
from loralab.budget.shapes import SHAPES
from loralab.cli.deprecated import add_deprecated
from loralab.cli.names import QUANTIZE_CHOICES
from loralab.errors import LoraLabError

PRECISIONS = ("fp32", "fp16", "bf16")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "\n".join(__doc__.strip().splitlines()[2:])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--shape", metavar="NAME",
                        help=f"a named model shape: {', '.join(SHAPES)} (see --list-shapes)")
    source.add_argument("--model", metavar="MODEL",
                        help="a builtin model name, model folder, .gguf file, cached hub id, or a config.json "
                             "(only the config is read)")
    parser.add_argument("--list-shapes", action="store_true", help="list the named shapes and exit")
    parser.add_argument("--architecture", metavar="CLASS",
                        help="transformers class to count, e.g. BertForSequenceClassification "
                             "(default: the shape's / config's own, else AutoModel)")
    lora = parser.add_argument_group("LoRA")
    lora.add_argument("--r", type=int, nargs="+", default=[8], metavar="R", help="rank(s) to compare (default 8)")
    lora.add_argument("--targets", nargs="+", metavar="T",
                      help="roles q k v o gate up down (the paper's Wq, Wk, Wv, Wo and the MLP), module names, "
                           "'re:' regexes, or all-linear (default: the architecture preset, Wq and Wv)")
    lora.add_argument("--exclude", nargs="+", default=[], metavar="T", help="modules never adapted")
    lora.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha (shown only; it changes no size)")
    lora.add_argument("--variant", default="lora",
                      help="lora, or dora (one trainable magnitude per output row) (default lora)")
    add_deprecated(lora, "--dora", dest="variant", new="--variant dora", const="dora")
    lora.add_argument("--bias", choices=("none", "all", "lora_only"), default="none",
                      help="biases that train and are saved too (default none)")
    lora.add_argument("--dropout", type=float, default=0.0, metavar="P",
                      help="LoRA dropout; p > 0 stores each adapter's dropped-out input (default 0)")
    add_deprecated(lora, "--lora-dropout", dest="dropout", new="--dropout", type=float, metavar="P")
    train = parser.add_argument_group("training memory")
    train.add_argument("--batch-size", type=int, default=1, help="sequences per step (default 1)")
    train.add_argument("--seq-len", type=int, default=512, help="tokens per sequence (default 512)")
    train.add_argument("--dtype", choices=PRECISIONS, default="fp16",
                       help="precision of the frozen weights and the compute, as `loralab train --dtype`; "
                            "LoRA's trained values, gradients and AdamW states are fp32 (default fp16)")
    # --dtype as on every other command (issue 19); the spelling --precision stays for one release.
    add_deprecated(train, "--precision", dest="dtype", new="--dtype", choices=PRECISIONS)
    train.add_argument("--quantize", choices=QUANTIZE_CHOICES, default="none",
                       help="LoRA's frozen Linear weights stored quantized, scales included, as `loralab train "
                            "--quantize` (default none)")
    train.add_argument("--double-quant", action="store_true", help="with --quantize nf4: QLoRA's double "
                                                                   "quantization of the scales")
    train.add_argument("--gradient-checkpointing", action="store_true",
                       help="keep each layer's input only; recompute its activations in backward")
    train.add_argument("--attention", choices=("eager", "flash"), default="eager",
                       help="eager keeps the a*s^2 attention probabilities (Korthikanti et al.); "
                            "flash keeps none (default eager)")
    train.add_argument("--no-master-weights", action="store_true",
                       help="full fine-tuning with fp16/bf16: do not count an fp32 master copy of the weights")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON instead of tables")


def _list_shapes() -> str:
    width = max(len(name) for name in SHAPES)
    lines = [f"{name:<{width}}  {shape.description}" + (f"  (also: {', '.join(shape.aliases)})" if shape.aliases else "")
             for name, shape in SHAPES.items()]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.list_shapes:
        print(_list_shapes())
        return 0
    if not args.shape and not args.model:
        raise LoraLabError("give --shape NAME or --model MODEL (see `loralab budget --list-shapes`)")
    from loralab.budget.memory_estimate import TrainingSetup
    from loralab.budget.report import estimate_budgets, format_report, report_dict
    from loralab.budget.shapes import find_shape
    from loralab.cli.model_args import resolve_config_arg

    source = find_shape(args.shape) if args.shape else resolve_config_arg(args.model)
    setup = TrainingSetup(batch_size=args.batch_size, seq_len=args.seq_len, dtype=args.dtype,
                          master_weights=not args.no_master_weights, attention=args.attention,
                          gradient_checkpointing=args.gradient_checkpointing, quantize=args.quantize,
                          double_quant=args.double_quant)
    budgets = estimate_budgets(source, args.r, args.targets, setup=setup, architecture=args.architecture,
                               alpha=args.alpha, exclude=args.exclude, variant=args.variant, bias=args.bias,
                               dropout=args.dropout)
    if args.json:
        print(json.dumps(report_dict(budgets), indent=2))
    else:
        print(format_report(budgets))
    return 0
