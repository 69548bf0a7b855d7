"""Merge an adapter into its base model and save a plain transformers folder (W = W0 + (alpha/r)·B·A).

    loralab merge BASE_DIR ADAPTER_DIR --output MERGED_DIR
    loralab merge BASE_DIR ADAPTER_DIR --output MERGED_DIR --quantize nf4 [--requantize]

The result loads with transformers' from_pretrained alone and runs at exactly the base model's cost.
An adapter trained on a quantized base (train --quantize nf4) merges into that base: `--quantize nf4` keeps
W = dequantize(Q(W0)) + ΔW in full precision, `--quantize nf4 --requantize` quantizes it again (bitsandbytes'
format) and reports the error that adds."""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from loralab.errors import LoraLabError

MERGED_KIND = "merged-model"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
                   "merges.txt", "tokenizer.model", "chat_template.jinja", "generation_config.json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from loralab.cli.output_args import add_output_argument
    from loralab.cli.task_args import add_task_argument
    from loralab.cli.train_args import add_train_arguments

    parser.add_argument("base", help="the base model folder the adapter was trained on")
    parser.add_argument("adapter", help="the adapter folder (PEFT layout: adapter_config.json + adapter_model.safetensors)")
    add_output_argument(parser, "output folder for the merged model (must not exist, or use --overwrite)",
                        metavar="DIR", old=())
    parser.add_argument("old_output", nargs="?", metavar="OUT", help=argparse.SUPPRESS)  # loralab 0.1's positional
    add_task_argument(parser, "a classifier if the adapter saves one, else the base folder's architecture")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing output folder that loralab wrote as a merged model")
    add_train_arguments(parser, ("quantize",), helps={
        "quantize": "the quantized base the adapter was trained on (train --quantize): W = the dequantized base + "
                    "the adapter's update (default none)"})
    parser.add_argument("--requantize", action="store_true",
                        help="with --quantize: store the merged weights quantized again (bitsandbytes' format; "
                             "the error this adds is reported); without it they are kept in full precision")


def load_base_for_adapter(base: str, adapter_file, task: str = "auto"):
    """The base model with the head the adapter needs (a classifier with as many labels as it saves).
    task: a loralab task name or "base", or "auto" (see add_task_argument)."""
    import transformers

    from loralab.cli.task_args import model_task
    from loralab.models import auto_model_class

    if not (Path(base) / "config.json").is_file():
        raise LoraLabError(f"{base} is not a model folder (no config.json)")
    config = transformers.AutoConfig.from_pretrained(base, local_files_only=True)
    heads = {name: params for name, params in adapter_file.saved_modules.items() if "weight" in params}
    if task == "auto":
        if heads:
            task = "classification"
        elif any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in config.architectures or []):
            task = "causal-lm"
        else:
            task = "base"
    head = model_task(task)
    kwargs = {"local_files_only": True}
    if head == "sequence-classification" and heads:
        kwargs["num_labels"] = next(iter(heads.values()))["weight"].shape[0]
    return auto_model_class(head).from_pretrained(base, **kwargs)


def _output(args: argparse.Namespace) -> Path:
    """--output, or loralab 0.1's third positional argument (with a deprecation line)."""
    from loralab.cli.deprecated import warn_deprecated

    if args.old_output and args.output:
        raise LoraLabError("give the output folder once: --output DIR (the positional OUT is its old spelling)")
    if args.old_output:
        warn_deprecated("loralab merge", "the positional OUT", "--output OUT")
        return Path(args.old_output)
    if not args.output:
        raise LoraLabError("give the output folder for the merged model: --output DIR (-o DIR)")
    return Path(args.output)


def run(args: argparse.Namespace) -> int:
    import loralab
    from loralab import files

    out, base, adapter = _output(args), Path(args.base), Path(args.adapter)
    inputs = (base, adapter)
    # Refuse a bad output before the (slow) load: an existing folder is replaced only with --overwrite and
    # only if loralab wrote it as a merged model; never the base or adapter folder, or one around them.
    files.check_output_folder(out, MERGED_KIND, inputs, overwrite=args.overwrite)
    scheme = args.quantize or "none"
    if args.requantize and scheme == "none":
        raise LoraLabError("--requantize stores the merged weights quantized again: give the base's --quantize "
                           "int8 or nf4 too")
    adapter_file = loralab.read_adapter(adapter)
    model = load_base_for_adapter(args.base, adapter_file, args.task)
    plain = _merged(model, adapter, scheme, args.requantize)
    # Built in a temporary sibling and swapped in: a crash leaves no half-written model, the old one intact.
    with files.atomic_folder(out, MERGED_KIND, replace=args.overwrite, protect=inputs) as scratch:
        if args.requantize:
            from loralab.quantization.export import save_bitsandbytes

            save_bitsandbytes(plain, scratch, scheme)
        else:
            plain.save_pretrained(scratch)
        for name in TOKENIZER_FILES:
            if (base / name).is_file():
                files.atomic_write(scratch / name, lambda tmp, source=base / name: shutil.copyfile(source, tmp))
    print(f"merged {args.adapter} into {args.base} -> {out} ({type(plain).__name__})")
    return 0


def _merged(model, adapter, scheme: str, requantize: bool):
    """The model with the adapter merged in and unloaded (plain transformers layers). With a quantized base
    (scheme int8/nf4): W = dequantize(Q(W0)) + ΔW, re-quantized when `requantize`, and the error that adds
    to the trained model's weights printed (loralab.quantization.merge_into_quantized)."""
    import loralab

    if scheme == "none":
        loralab.load_adapter(model, adapter)
        return loralab.merge_and_unload(model)
    from loralab.quantization import dequantize_model, merge_into_quantized, quantize

    quantize(model, scheme)                   # the base the adapter trained against
    loralab.load_adapter(model, adapter)
    report = merge_into_quantized(model, "requantize" if requantize else "dequantize")
    if requantize:
        print(f"re-quantized {report.layers} merged layers to {scheme}: relative weight error "
              f"{report.rel_error:.3%} (max |error| {report.max_abs_error:.3g}); {report.delta_rel_error:.1%} of "
              "the adapter's update is lost to rounding")
    else:
        print(f"merged into {report.layers} {scheme} layers kept in full precision: the weights are the trained "
              "model's exactly (fp32 rounding)")
    return dequantize_model(model)
