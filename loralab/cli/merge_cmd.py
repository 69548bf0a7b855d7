"""Merge an adapter into its base model and save a plain transformers folder (W = W0 + (alpha/r)·B·A).

The result loads with transformers' from_pretrained alone and runs at exactly the base model's cost."""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from loralab.errors import LoraLabError

MERGED_KIND = "merged-model"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
                   "merges.txt", "tokenizer.model", "chat_template.jinja", "generation_config.json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("base", help="the base model folder the adapter was trained on")
    parser.add_argument("adapter", help="the adapter folder (PEFT layout: adapter_config.json + adapter_model.safetensors)")
    parser.add_argument("out", help="output folder for the merged model (must not exist, or use --overwrite)")
    parser.add_argument("--task", choices=("auto", "base", "sequence-classification", "causal-lm"), default="auto",
                        help="model head to build; auto: a classifier if the adapter saves one, else the base "
                             "folder's architecture")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing output folder that loralab wrote as a merged model")


def load_base_for_adapter(base: str, adapter_file, task: str = "auto"):
    """The base model with the head the adapter needs (a classifier with as many labels as it saves)."""
    import transformers

    if not (Path(base) / "config.json").is_file():
        raise LoraLabError(f"{base} is not a model folder (no config.json)")
    config = transformers.AutoConfig.from_pretrained(base, local_files_only=True)
    heads = {name: params for name, params in adapter_file.saved_modules.items() if "weight" in params}
    if task == "auto":
        if heads:
            task = "sequence-classification"
        elif any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in config.architectures or []):
            task = "causal-lm"
        else:
            task = "base"
    kwargs = {"local_files_only": True}
    if task == "sequence-classification":
        if heads:
            kwargs["num_labels"] = next(iter(heads.values()))["weight"].shape[0]
        cls = transformers.AutoModelForSequenceClassification
    elif task == "causal-lm":
        cls = transformers.AutoModelForCausalLM
    else:
        cls = transformers.AutoModel
    return cls.from_pretrained(base, **kwargs)


def run(args: argparse.Namespace) -> int:
    import loralab
    from loralab import files

    out, base, adapter = Path(args.out), Path(args.base), Path(args.adapter)
    inputs = (base, adapter)
    # Refuse a bad output before the (slow) load: an existing folder is replaced only with --overwrite and
    # only if loralab wrote it as a merged model; never the base or adapter folder, or one around them.
    files.check_writable_dir(out)
    if out.exists() and not files.is_empty_dir(out) and not args.overwrite:
        raise LoraLabError(f"output folder {out} already exists; choose another path or pass --overwrite")
    files.check_replaceable(out, (MERGED_KIND,), inputs)
    adapter_file = loralab.read_adapter(adapter)
    model = load_base_for_adapter(args.base, adapter_file, args.task)
    loralab.load_adapter(model, adapter)
    plain = loralab.merge_and_unload(model)
    # Built in a temporary sibling and swapped in: a crash leaves no half-written model, the old one intact.
    with files.atomic_folder(out, MERGED_KIND, replace=args.overwrite, protect=inputs) as scratch:
        plain.save_pretrained(scratch)
        for name in TOKENIZER_FILES:
            if (base / name).is_file():
                files.atomic_write(scratch / name, lambda tmp, source=base / name: shutil.copyfile(source, tmp))
    print(f"merged {args.adapter} into {args.base} -> {out} ({type(plain).__name__})")
    return 0
