"""Default targets per architecture family, keyed by transformers' `config.model_type`.

The default is the paper's choice: the attention query and value projections (Wq, Wv; Hu et al. §4.2,
§7.1). GPT-2 keeps q, k, v stacked in one Conv1D `c_attn`, so its preset adapts the q and v slices.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from loralab.errors import LoraLabError


@dataclass(frozen=True)
class Preset:
    targets: tuple[str, ...]
    fused_slices: dict[str, list[bool]] = field(default_factory=dict)
    head: tuple[str, ...] = ()
    """Task heads created fresh for fine-tuning (trained in full via modules_to_save)."""
    renamed_targets: tuple[str, ...] = ()
    """The same matrices under the names another transformers version uses (tried if `targets` match nothing)."""


_BERT_LIKE = Preset(("query", "value"), head=("classifier",))
_DECODER = Preset(("q_proj", "v_proj"), head=("score",))

PRESETS: dict[str, Preset] = {
    **{t: _BERT_LIKE for t in ("bert", "roberta", "xlm-roberta", "camembert", "electra", "mpnet", "ernie")},
    "distilbert": Preset(("q_lin", "v_lin"), head=("pre_classifier", "classifier")),
    "deberta-v2": Preset(("query_proj", "value_proj"), head=("pooler", "classifier")),
    "gpt2": Preset(("c_attn",), {"c_attn": [True, False, True]}, head=("score",)),
    **{t: _DECODER for t in ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text",
                             "olmo", "olmo2", "phi3", "granite", "smollm3", "gpt_neo", "gptj", "opt")},
    **{t: Preset(("q", "v")) for t in ("t5", "mt5", "umt5")},
    **{t: Preset(("q_proj", "v_proj")) for t in ("bart", "mbart", "whisper", "marian", "pegasus")},
    # transformers 5 renamed ViT's query/value to q_proj/v_proj.
    **{t: Preset(("q_proj", "v_proj"), head=("classifier",), renamed_targets=("query", "value"))
       for t in ("vit", "deit", "dinov2")},
}


def model_type(model: nn.Module) -> str | None:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None)


def preset_for(model: nn.Module) -> Preset:
    """The preset of a transformers model; a clear error for plain PyTorch models or unknown families."""
    mt = model_type(model)
    if mt is None:
        raise LoraLabError("this model has no transformers config, so there is no default target; "
                           "pass LoraConfig(targets=[...]) with module names (see `loralab inspect`)")
    if mt not in PRESETS:
        raise LoraLabError(f"no LoRA preset for model_type {mt!r}; pass LoraConfig(targets=[...]) "
                           f"(presets exist for: {', '.join(sorted(PRESETS))})")
    return PRESETS[mt]
