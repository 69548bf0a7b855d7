"""E2E NLG: the base model zero-shot versus the same model with a trained LoRA adapter, scored with the paper's metrics.

    loralab e2e --out /work/runs/e2e                 # SmolLM2-135M-Instruct, ~20-30 min training on 2 cores
    loralab e2e --quick --out /tmp/e2e-quick          # tiny random LLaMA, seconds: checks the pipeline
    loralab e2e --adapter runs/e2e/train/adapter      # reuse a trained adapter, only generate and score
    loralab e2e --num-beams 10 --eval-mrs all         # the paper's decoding, on every test MR

Writes results.md / results.json / results.csv (BLEU, NIST, METEOR, ROUGE-L, CIDEr, trainable parameters,
adapter size, train and generation time), examples.md and predictions/. Re-running with the same --out
reuses finished parts and resumes an unfinished training run. See docs/e2e.md.
"""
from __future__ import annotations

import argparse

from loralab.cli.sampling_args import add_sampling_arguments, sampling_overrides
from loralab.errors import LoraLabError
from loralab.generation.params import SamplingParams


def _positive_or_all(text: str) -> int | str:
    if text.lower() == "all":
        return "all"  # turned into None (no limit) in run(); None itself means "not given"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="tiny random-init LLaMA and a few examples (under a minute): checks the pipeline only")
    parser.add_argument("--out", default="runs/e2e", help="output folder (default: runs/e2e); re-running resumes")
    parser.add_argument("--model", help="model spec: builtin name, folder or GGUF file of a chat causal LM "
                                        "(default: smollm2-135m-instruct)")
    parser.add_argument("--adapter", help="use this trained adapter folder instead of training one")
    parser.add_argument("--train-limit", type=_positive_or_all,
                        help="training examples drawn from valid.txt, or 'all' (default: 320)")
    parser.add_argument("--epochs", type=float, help="training epochs (default: 1)")
    parser.add_argument("--lr", type=float, help="learning rate (default: 5e-4)")
    parser.add_argument("--r", type=int, help="LoRA rank (default: 4)")
    parser.add_argument("--alpha", type=float, help="LoRA alpha (default: 32)")
    parser.add_argument("--eval-mrs", type=_positive_or_all,
                        help="evenly spaced distinct test MRs to generate for, or 'all' (630) (default: 100)")
    parser.add_argument("--instruction", help="text before each MR in the user turn "
                                              "(default: 'Write one sentence describing this restaurant: ')")
    parser.add_argument("--threads", type=int, help="torch threads (default: the available cores)")
    add_sampling_arguments(parser, SamplingParams(max_new_tokens=48))


def run(args: argparse.Namespace) -> int:
    from loralab.experiments.e2e import E2EConfig, run_e2e

    overrides = {name: getattr(args, name) for name in ("model", "epochs", "lr", "r", "alpha", "instruction",
                                                         "threads")
                 if getattr(args, name) is not None}
    decoding = sampling_overrides(args)
    for name in ("num_beams", "max_new_tokens"):
        if name in decoding:
            overrides[name] = decoding.pop(name)
    if decoding:
        overrides["decoding"] = decoding
    for name in ("train_limit", "eval_mrs"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = None if value == "all" else value
    if args.quick and args.model:
        raise LoraLabError("--quick uses its own tiny model; drop --model (or drop --quick)")
    config = E2EConfig.quick(**overrides) if args.quick else E2EConfig(**overrides)
    result = run_e2e(config, args.out, adapter=args.adapter)
    from loralab.experiments.e2e import results_markdown

    print(results_markdown(result))
    return 0
