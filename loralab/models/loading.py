"""One way to name a model everywhere in loralab: a builtin name, a model folder, or a GGUF file.

    folder = resolve_model_spec("smollm2-135m-instruct")     # de-quantized once, cached, then reused
    model = load_model("all-minilm-l6-v2", task="sequence-classification", num_labels=3)
    tokenizer = load_tokenizer("path/to/model.Q4_K_M.gguf")

Everything loads in fp32 from local files only: nothing is downloaded.
"""
from __future__ import annotations

import os
from pathlib import Path

from loralab.errors import LoraLabError
from loralab.models.builtin import BUILTIN_MODELS, builtin_model, builtin_model_dir
from loralab.models.gguf import ensure_plain_model

MODEL_TASKS = ("causal-lm", "sequence-classification", "base")


def resolve_model_spec(spec: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """A plain transformers folder (config.json + weights + tokenizer) for `spec`.

    spec: a builtin name (see loralab.models.BUILTIN_MODELS), a model folder holding config.json, a folder
    holding exactly one .gguf file, or a .gguf file. GGUF models are de-quantized to fp32 once and cached
    (see loralab.models.gguf; cache_dir overrides the cache root). A folder with config.json is returned as
    it is, even if it also holds GGUF files.
    """
    text = os.fspath(spec)
    if text in BUILTIN_MODELS:
        location = builtin_model_dir(text)
        return ensure_plain_model(location, cache_dir) if builtin_model(text).kind == "gguf" else location

    path = Path(text).expanduser()
    if not path.exists():
        raise LoraLabError(f"model {text!r} not found: no such file or folder, and not a builtin model "
                           f"({', '.join(BUILTIN_MODELS)}); give a model folder, a .gguf file or a builtin name")
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise LoraLabError(f"model file {path} is not a .gguf file; give a .gguf file or the model folder "
                               "holding config.json")
        return ensure_plain_model(path, cache_dir)
    if (path / "config.json").is_file():
        return path
    gguf_files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".gguf")
    if not gguf_files:
        raise LoraLabError(f"model folder {path} holds neither config.json nor a .gguf file; give a transformers "
                           "model folder or a .gguf file")
    if len(gguf_files) > 1:
        names = ", ".join(p.name for p in gguf_files)
        raise LoraLabError(f"model folder {path} holds {len(gguf_files)} .gguf files ({names}); "
                           f"pass one of them, e.g. {gguf_files[0]}")
    return ensure_plain_model(gguf_files[0], cache_dir)


def load_model(spec: str | os.PathLike, task: str = "causal-lm", num_labels: int | None = None,
               cache_dir: str | os.PathLike | None = None, **kwargs):
    """The model `spec` names (see resolve_model_spec) with the head `task` asks for, fp32, from local files.

    task: "causal-lm" (AutoModelForCausalLM), "sequence-classification" (AutoModelForSequenceClassification,
    a freshly initialised head with `num_labels` outputs unless the folder already has one) or "base"
    (AutoModel, no head). kwargs go to `from_pretrained` (e.g. attn_implementation="eager").
    """
    import torch
    import transformers

    if task not in MODEL_TASKS:
        raise LoraLabError(f"unknown model task {task!r}; choose one of {', '.join(MODEL_TASKS)}")
    if num_labels is not None:
        if task != "sequence-classification":
            raise LoraLabError(f"num_labels={num_labels} only applies to task 'sequence-classification', "
                               f"not {task!r}; drop it or change the task")
        if num_labels < 1:
            raise LoraLabError(f"num_labels must be at least 1, got {num_labels}")
        kwargs["num_labels"] = num_labels
    folder = resolve_model_spec(spec, cache_dir)
    model_class = {
        "causal-lm": transformers.AutoModelForCausalLM,
        "sequence-classification": transformers.AutoModelForSequenceClassification,
        "base": transformers.AutoModel,
    }[task]
    kwargs.setdefault("dtype", torch.float32)
    kwargs["local_files_only"] = True
    try:
        return model_class.from_pretrained(str(folder), **kwargs)
    except ValueError as exc:
        # e.g. a BERT folder asked for task causal-lm: transformers lists the classes it knows.
        first_line = (str(exc).strip().splitlines() or ["ValueError"])[0]
        raise LoraLabError(f"cannot load {folder} for task {task!r}: {first_line}") from exc


def load_tokenizer(spec: str | os.PathLike, cache_dir: str | os.PathLike | None = None, **kwargs):
    """The tokenizer saved with the model `spec` names (see resolve_model_spec), from local files only."""
    import transformers

    folder = resolve_model_spec(spec, cache_dir)
    kwargs["local_files_only"] = True
    return transformers.AutoTokenizer.from_pretrained(str(folder), **kwargs)
