"""E2E NLG: the base model zero-shot versus the same model with a trained LoRA adapter, scored with the paper's metrics.

    loralab e2e -o /work/runs/e2e                    # SmolLM2-135M-Instruct, ~20-30 min training on 2 cores
    loralab e2e --quick -o /tmp/e2e-quick             # tiny random LLaMA, seconds: checks the pipeline
    loralab e2e --adapter runs/e2e/train/adapter      # reuse a trained adapter, only generate and score
    loralab e2e --num-beams 10 --eval-mrs all         # the paper's decoding, on every test MR

Writes results.md / results.json / results.csv (BLEU, NIST, METEOR, ROUGE-L, CIDEr, trainable parameters,
adapter size, train and generation time), examples.md and predictions/. Re-running with the same --output
reuses finished parts and resumes an unfinished training run. See docs/e2e.md.
"""
from __future__ import annotations

import argparse

from loralab.cli.runtime_args import add_runtime_arguments, runtime_fields
from loralab.cli.sampling_args import add_sampling_arguments, sampling_overrides
from loralab.errors import LoraLabError
from loralab.generation.params import SamplingParams


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from loralab.cli.adapter_args import add_adapter_arguments
    from loralab.cli.lora_args import add_lora_arguments
    from loralab.cli.output_args import add_output_argument
    from loralab.cli.train_args import add_train_arguments, count_or_all
    from loralab.experiments.e2e_config import E2EConfig

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n", 2)[2]
    defaults = E2EConfig()
    parser.add_argument("--quick", action="store_true",
                        help="tiny random-init LLaMA and a few examples (under a minute): checks the pipeline only")
    add_output_argument(parser, "output folder (default: runs/e2e); re-running resumes", default="runs/e2e",
                        metavar="DIR")
    parser.add_argument("--model", help="model spec: builtin name, folder or GGUF file of a chat causal LM "
                                        "(default: smollm2-135m-instruct)")
    add_adapter_arguments(parser, required=False, base_flags=False)
    add_train_arguments(parser, ("train_limit", "epochs", "lr", "threads"),
                        shown_defaults={"epochs": defaults.epochs, "lr": defaults.lr},
                        helps={"train_limit": f"training examples drawn from valid.txt, or 'all' "
                                              f"(default: {defaults.train_limit})"})
    add_lora_arguments(parser, ("r", "alpha", "dropout", "targets"), lora_config_file=False,
                       shown_defaults={"r": defaults.r, "alpha": defaults.alpha, "dropout": defaults.dropout,
                                       "targets": " ".join(defaults.targets)})
    parser.add_argument("--eval-mrs", type=count_or_all,
                        help="evenly spaced distinct test MRs to generate for, or 'all' (630) (default: 100)")
    parser.add_argument("--instruction", help="text before each MR in the user turn "
                                              "(default: 'Write one sentence describing this restaurant: ')")
    parser.add_argument("--meteor", choices=("auto", "official", "loralab"),
                        help="METEOR implementation: the official Meteor 1.5 jar (needs Java), loralab's exact+stem "
                             "reimplementation, or auto (the jar when available; default; --quick uses loralab's)")
    add_sampling_arguments(parser, SamplingParams(max_new_tokens=48))
    add_runtime_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from loralab.cli.adapter_args import single_adapter
    from loralab.experiments.e2e import E2EConfig, results_markdown, run_e2e

    overrides = {name: getattr(args, name) for name in ("model", "epochs", "lr", "r", "alpha", "dropout", "targets",
                                                         "instruction", "threads", "meteor")
                 if getattr(args, name) is not None}
    overrides.update(runtime_fields(args))
    decoding = sampling_overrides(args)
    for name in ("num_beams", "max_new_tokens"):
        if name in decoding:
            overrides[name] = decoding.pop(name)
    if decoding:
        overrides["decoding"] = decoding
    for name in ("train_limit", "eval_mrs"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value or None   # 0 / 'all': no limit
    if args.quick and args.model:
        raise LoraLabError("--quick uses its own tiny model; drop --model (or drop --quick)")
    config = E2EConfig.quick(**overrides) if args.quick else E2EConfig(**overrides)
    result = run_e2e(config, args.output, adapter=single_adapter(args))
    print(results_markdown(result))
    return 0
