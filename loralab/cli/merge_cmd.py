"""Merge an adapter into its base model and save a plain transformers folder (W = W0 + (alpha/r)·B·A).

    loralab merge BASE_DIR ADAPTER_DIR --output MERGED_DIR
    loralab merge BASE_DIR ADAPTER_DIR --output MERGED_DIR --quantize nf4 [--requantize]
    loralab merge smollm2-135m-instruct ADAPTER_DIR --to gguf -o merged.gguf [--dtype fp16]

The result loads with transformers' from_pretrained alone and runs at exactly the base model's cost.
An adapter trained on a quantized base (train --quantize nf4) merges into that base: `--quantize nf4` keeps
W = dequantize(Q(W0)) + ΔW in full precision, `--quantize nf4 --requantize` quantizes it again (bitsandbytes'
format) and reports the error that adds. The adapter records how the base it trained on stored its weights
("trained_on" in loralab's metadata); a merge that stores them otherwise (--quantize int8, or none, for an
NF4-trained adapter) prints how far the merged weights are from the trained model's, measured, and an adapter
without the record (PEFT's, older loralab's) is said to have an unknown training precision.

`--reduce-intruders SCALE` scales the intruder dimensions of each merged weight (singular vectors of W0 + ΔW
among its top --intruder-k whose largest |cosine| with W0's is below --intruder-threshold; Shuttleworth et al.
2024) by SCALE before saving: 0 removes them, 1 is the plain merge (loralab.analysis.intruders).

`--to gguf` writes one GGUF model file for llama.cpp and Ollama from a GGUF base (a builtin GGUF model or a
.gguf file): the base file with the adapted matrices replaced by W0 + ΔW (fp32 or fp16), every other tensor
and all metadata copied unchanged (loralab.formats.gguf_merge)."""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from loralab.errors import LoraLabError

MERGED_KIND = "merged-model"
MERGE_FORMATS = ("folder", "gguf")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
                   "merges.txt", "tokenizer.model", "chat_template.jinja", "generation_config.json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from loralab.cli.output_args import add_output_argument
    from loralab.cli.task_args import add_task_argument
    from loralab.cli.train_args import add_train_arguments

    parser.add_argument("base", help="the base model the adapter was trained on: a builtin name, model folder, .gguf "
                                     "file or cached hub id")
    parser.add_argument("adapter", help="the adapter folder (PEFT layout: adapter_config.json + adapter_model.safetensors)")
    add_output_argument(parser, "output folder for the merged model (must not exist, or use --overwrite); with "
                                "--to gguf the .gguf file to write", metavar="DIR", old=())
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
    parser.add_argument("--to", choices=MERGE_FORMATS, default="folder",
                        help="folder: a transformers model folder; gguf: one GGUF model file for llama.cpp / Ollama, "
                             "from a GGUF base (default: folder)")
    parser.add_argument("--reduce-intruders", type=float, default=None, metavar="SCALE",
                        help="scale each merged weight's intruder dimensions (singular vectors of W0 + ΔW unlike "
                             "every one of W0) by SCALE in [0, 1]: 0 removes them, 1 is the plain merge")
    parser.add_argument("--intruder-k", type=int, default=None, metavar="K",
                        help="with --reduce-intruders: top singular vectors of W0 + ΔW examined (default 10)")
    parser.add_argument("--intruder-threshold", type=float, default=None, metavar="EPS",
                        help="with --reduce-intruders: a singular vector is an intruder when its max |cosine| to "
                             "W0's is below EPS (default 0.5)")
    parser.add_argument("--dtype", choices=("fp32", "fp16"), default=None,
                        help="with --to gguf: how the merged matrices are stored; the others keep the base's "
                             "quantization (default: fp32)")


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


def _intruder_settings(args: argparse.Namespace) -> tuple[float, int, float] | None:
    """(scale, k, ε) of --reduce-intruders, checked (one line each), or None without it."""
    from loralab.analysis.intruders import DEFAULT_K, DEFAULT_THRESHOLD, check_intruder_scale, check_intruder_settings

    given = [flag for flag, value in (("--intruder-k", args.intruder_k),
                                      ("--intruder-threshold", args.intruder_threshold)) if value is not None]
    if args.reduce_intruders is None:
        if given:
            raise LoraLabError(f"{given[0]} sets how --reduce-intruders SCALE finds intruders: add "
                               "--reduce-intruders SCALE, or drop it")
        return None
    if args.to == "gguf" or args.quantize or args.requantize:
        flag = "--to gguf" if args.to == "gguf" else "--quantize" if args.quantize else "--requantize"
        raise LoraLabError(f"--reduce-intruders scales the weights of a full-precision merged folder; drop {flag}")
    check_intruder_scale(args.reduce_intruders, "--reduce-intruders")
    k = DEFAULT_K if args.intruder_k is None else args.intruder_k
    threshold = DEFAULT_THRESHOLD if args.intruder_threshold is None else args.intruder_threshold
    check_intruder_settings(k, threshold)
    return args.reduce_intruders, k, threshold


def run(args: argparse.Namespace) -> int:
    import loralab
    from loralab import files
    from loralab.cli.model_args import resolve_model_arg

    intruders = _intruder_settings(args)        # bad values: one line before any file is touched
    if args.to == "gguf":
        return _run_gguf(args)
    if args.dtype:
        raise LoraLabError("--dtype sets the merged matrices' precision in a GGUF file: give --to gguf too (a merged "
                           "folder keeps the base's dtype)")
    out, base, adapter = _output(args), Path(args.base), Path(args.adapter)
    inputs = (base, adapter)
    # Refuse a bad output before the (slow) load: an existing folder is replaced only with --overwrite and
    # only if loralab wrote it as a merged model; never the base or adapter folder, or one around them.
    files.check_output_folder(out, MERGED_KIND, inputs, overwrite=args.overwrite)
    scheme = args.quantize or "none"
    if args.requantize and scheme == "none":
        raise LoraLabError("--requantize stores the merged weights quantized again: give the base's --quantize "
                           "int8 or nf4 too")
    base, base_inputs = resolve_model_arg(args.base)    # a builtin name, folder, .gguf file or cached hub id
    if base != Path(args.base):
        inputs = (*base_inputs, adapter)
        files.check_output_folder(out, MERGED_KIND, inputs, overwrite=args.overwrite)
    adapter_file = loralab.read_adapter(adapter)
    model = load_base_for_adapter(str(base), adapter_file, args.task)
    trained_on = adapter_file.loralab_meta.get("trained_on")
    note = _trained_on_note(model, trained_on, scheme)          # measured on the base before it is changed
    reduce = _intruder_reduction(model, adapter_file, *intruders) if intruders else None
    plain = _merged(model, adapter, scheme, args.requantize, exact=note is None)
    if note:
        print(note)
    if reduce:
        print(reduce(plain))
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


def _run_gguf(args: argparse.Namespace) -> int:
    """merge --to gguf: the GGUF base's file with the adapter merged in (loralab.formats.gguf_merge)."""
    import loralab
    from loralab import files
    from loralab.formats.gguf_merge import NOT_GGUF, merge_into_gguf
    from loralab.formats.peft import check_adapter_folder
    from loralab.models import gguf_file_of

    other = [flag for flag, given in (("--quantize", args.quantize), ("--requantize", args.requantize),
                                      ("--overwrite", args.overwrite), ("--task", args.task != "auto")) if given]
    if other:
        raise LoraLabError(f"{other[0]} applies to a merged folder; --to gguf keeps the GGUF base's quantization for "
                           "the untouched tensors and replaces an existing file atomically: drop it")
    out = _output(args)
    base_file = gguf_file_of(args.base)
    files.check_output_file(out, [args.base, args.adapter, *([base_file] if base_file else [])])    # before any work
    if base_file is None:
        raise LoraLabError(NOT_GGUF)
    check_adapter_folder(args.adapter)
    dtype = args.dtype or "fp32"
    report = merge_into_gguf(base_file, loralab.read_adapter(args.adapter), out, dtype)
    if report.note:
        print(report.note)
    print(f"merged {args.adapter} into {args.base} -> {out} (GGUF {report.arch}: {report.merged} merged matrices "
          f"stored {dtype}, {report.copied} tensors and {report.kv} metadata keys copied unchanged; "
          f"llama-server -m {out}, Ollama: FROM {out})")
    return 0


def _intruder_reduction(model, adapter_file, scale: float, k: int, threshold: float):
    """A function that scales the intruder dimensions of the merged model's adapted weights by `scale` (in
    place) and returns the line to print. W0 is copied from `model` now, before the adapter is loaded (PiSSA's
    load changes the base weight)."""
    from loralab.analysis.base import base_weights
    from loralab.analysis.deltas import deltas_from_adapter
    from loralab.analysis.intruders import scale_model_intruders, slices_of

    deltas = deltas_from_adapter(adapter_file)
    if not deltas:
        raise LoraLabError(f"{adapter_file.path} holds no LoRA factors: there is no ΔW whose intruder dimensions "
                           "--reduce-intruders could scale; drop it")
    weights = base_weights(model, sorted({d.module for d in deltas}))

    def reduce(plain) -> str:
        found = scale_model_intruders(plain, weights, scale, k, threshold, slices_of(deltas))
        total, touched = sum(m.count for m in found), sum(1 for m in found if m.count)
        return (f"intruder dimensions (top {k} singular vectors of W0 + ΔW, max |cos| to W0's < {threshold}): "
                f"{total} in {touched} of {len(found)} merged weights, scaled by {scale:g}")
    return reduce


def _merged(model, adapter, scheme: str, requantize: bool, exact: bool):
    """The model with the adapter merged in and unloaded (plain transformers layers). With a quantized base
    (scheme int8/nf4): W = dequantize(Q(W0)) + ΔW, re-quantized when `requantize`, and the error that adds
    printed (loralab.quantization.merge_into_quantized). exact: this base stores its weights as the one the
    adapter trained on did, so dequantize(Q(W0)) + ΔW are the trained model's weights."""
    import loralab

    if scheme == "none":
        loralab.load_adapter(model, adapter)
        return loralab.merge_and_unload(model)
    from loralab.quantization import dequantize_model, merge_into_quantized, quantize

    quantize(model, scheme)
    loralab.load_adapter(model, adapter)
    report = merge_into_quantized(model, "requantize" if requantize else "dequantize")
    if requantize:
        print(f"re-quantized {report.layers} merged layers to {scheme}: relative weight error "
              f"{report.rel_error:.3%} (max |error| {report.max_abs_error:.3g}); {report.delta_rel_error:.1%} of "
              "the adapter's update is lost to rounding")
    else:
        same = "the weights are the trained model's exactly (fp32 rounding)" if exact else \
            f"W = the dequantized {scheme} base + the adapter's update"
        print(f"merged into {report.layers} {scheme} layers kept in full precision: {same}")
    return dequantize_model(model)


def _trained_on_note(model, trained_on: dict | None, scheme: str) -> str | None:
    """None when this merge stores the base weights as the base the adapter trained on did (the adapter's
    "trained_on" record, loralab.formats.adapter_config.base_storage); else one line saying how the merged
    model differs from the trained one: measured, or unknown for an adapter that does not record it."""
    target = {"quantize": scheme, "dtype": _dtype_of(model)}
    if trained_on is None:
        return ("the adapter does not record how the base it trained on was stored (saved by PEFT or an older "
                "loralab): unless that was " + _storage(target) + ", the merged weights differ from the trained "
                "model's; merge with the training run's --quantize")
    trained = {"quantize": trained_on.get("quantize", "none"), "dtype": trained_on.get("dtype", target["dtype"])}
    if trained == target:
        return None
    count, max_abs, rel = _base_difference(model, trained, scheme)
    fix = f"; merge with --quantize {trained['quantize']} for the trained model's weights" \
        if trained["quantize"] != scheme else ""
    return (f"the adapter trained on a base stored as {_storage(trained)}, this merge stores it as "
            f"{_storage(target)}: the merged weights differ from the trained model's by up to {max_abs:.3g} in "
            f"{count} tensors ({rel:.3%} of the base weights' norm){fix}")


def _storage(form: dict) -> str:
    if form["quantize"] == "none":
        return form["dtype"]
    return f"{form['quantize']} (other weights {form['dtype']})"


def _dtype_of(model) -> str:
    """The name of the dtype most of the model's floating weights have ("fp32", "bf16", "fp16")."""
    from collections import Counter

    from loralab.precision import dtype_name

    counts = Counter(p.dtype for p in model.parameters() if p.is_floating_point())
    return dtype_name(counts.most_common(1)[0][0])


def _base_difference(model, trained: dict, scheme: str) -> tuple[int, float, float]:
    """(tensors that differ, max |W_merge - W_trained|, ‖W_merge - W_trained‖ / ‖W_trained‖) over the
    not yet merged base: W_trained is each weight as the training base stored it (its dtype, and its scheme's
    round trip for the Linear layers quantize() replaces), W_merge as this merge stores it. The adapter adds
    the same ΔW to both, so this is how far the merged model is from the trained one."""
    import torch

    from loralab.core.kinds import kind_of
    from loralab.precision import DTYPES
    from loralab.quantization.model import quantizable_layers

    quantizable = dict(quantizable_layers(model))
    count, max_abs, err_sq, ref_sq = 0, 0.0, 0.0, 0.0
    with torch.no_grad():
        for pname, param in model.named_parameters():
            if not param.is_floating_point():
                continue
            owner, _, leaf = pname.rpartition(".")
            layer = quantizable.get(owner) if leaf == "weight" else None
            W = kind_of(layer).weight_matrix(layer) if layer is not None else param
            merged = _stored(W, scheme if layer is not None else "none", W.dtype)
            was = _stored(W, trained["quantize"] if layer is not None else "none", DTYPES[trained["dtype"]])
            err = merged - was
            count += bool(err.any())
            max_abs = max(max_abs, float(err.abs().max()) if err.numel() else 0.0)
            err_sq += float(err.double().square().sum())
            ref_sq += float(was.double().square().sum())
    return count, max_abs, (err_sq / max(ref_sq, 1e-30)) ** 0.5


def _stored(weight, scheme: str, dtype):
    """A (d_out, d_in) weight as fp32 after being stored in `dtype` and then as `scheme` ("none": as is)."""
    import torch

    from loralab.quantization import get_scheme

    weight = weight.detach().to(dtype)
    if scheme == "none":
        return weight.float()
    return get_scheme(scheme).quantize_weight(weight, None).dequantize(torch.float32)
