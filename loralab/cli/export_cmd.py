"""Export an adapter for another engine: a GGUF LoRA adapter for llama.cpp and Ollama.

    loralab export ADAPTER_DIR --to gguf -o adapter.gguf [--base MODEL] [--dtype fp16]

    llama-server -m base.gguf --lora adapter.gguf     # llama.cpp
    ADAPTER ./adapter.gguf                            # an Ollama Modelfile, after FROM <the base>

Only the base's config is read (its family, layer and head counts): --base names it as train does (a
builtin name, model folder, .gguf file or cached hub id), by default the adapter's base_model_name_or_path.
LLaMA-family bases (LLaMA, SmolLM2, Mistral) and Qwen2 export; other families are refused in one line."""
from __future__ import annotations

import argparse
from pathlib import Path

from loralab.errors import LoraLabError

EXPORT_FORMATS = ("gguf",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from loralab.cli.output_args import add_output_argument

    parser.add_argument("adapter", help="the adapter folder (adapter_config.json + adapter_model.safetensors)")
    parser.add_argument("--to", required=True, choices=EXPORT_FORMATS,
                        help="the format to write: gguf (a LoRA adapter for llama.cpp's --lora and Ollama's ADAPTER)")
    add_output_argument(parser, "the file to write, e.g. adapter.gguf", metavar="FILE", old=())
    parser.add_argument("--base", metavar="MODEL",
                        help="the base model the adapter was trained on (builtin name, folder, .gguf file or cached "
                             "hub id); only its config is read (default: the adapter's base_model_name_or_path)")
    parser.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32",
                        help="precision of the exported LoRA factors (default: fp32)")


def run(args: argparse.Namespace) -> int:
    import loralab
    from loralab.cli.output_args import checked_output_file, required_output
    from loralab.formats.gguf_adapter import write_gguf_adapter
    from loralab.formats.peft import check_adapter_folder

    required_output(args, "the GGUF file to write")
    out = checked_output_file(args, args.adapter, args.base)    # before any work
    folder = check_adapter_folder(args.adapter)
    config = _base_config(args.base or folder.config.get("base_model_name_or_path"), args.adapter)
    count = write_gguf_adapter(loralab.read_adapter(args.adapter), config, out, args.dtype)
    print(f"exported {count} adapted matrices of {args.adapter} -> {out} (GGUF LoRA adapter, {args.dtype}; "
          f"llama.cpp: --lora {out}, Ollama: ADAPTER {out})")
    return 0


def _base_config(base: str | None, adapter: str):
    """The base model's transformers config, from local files only."""
    import transformers

    from loralab.cli.model_args import resolve_model_arg

    if not base:
        raise LoraLabError(f"{adapter} does not name its base model (base_model_name_or_path); give it with "
                           f"--base MODEL (the model the adapter was trained on)")
    folder, _ = resolve_model_arg(base)       # the CLI's one resolver (merge, inspect, analyze, budget)
    if not (Path(folder) / "config.json").is_file():
        raise LoraLabError(f"{base} is not a model folder (no config.json); give the base with --base MODEL")
    return transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
