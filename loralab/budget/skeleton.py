"""A model's skeleton on the meta device: every module and parameter shape, no memory, no weights.

Building GPT-3 175B this way takes about a second and allocates nothing, so parameter counts come
from the real transformers module tree instead of hand-written formulas.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from loralab.budget.shapes import NamedShape, config_for_shape, find_shape, load_config
from loralab.core.kinds import kind_of
from loralab.core.targeting import matches
from loralab.errors import LoraLabError
from loralab.models.architectures import Architecture, architecture_for


@dataclass(frozen=True)
class TransformerDims:
    """The sizes the activation estimate needs (Korthikanti et al. 2022 notation in brackets)."""
    hidden: int               # [h]
    layers: int               # [L]
    heads: int                # [a]
    kv_heads: int             # grouped-query attention: K and V have kv_heads·head_dim features
    head_dim: int
    intermediate: int         # MLP width (4h in GPT): the up projection's output features
    vocab: int                # [v]
    max_positions: int | None
    gated_mlp: bool           # LLaMA-style SwiGLU: gate and up projections (the table has a gate role)
    dropout: bool             # the model has dropout layers with p > 0 (their masks are kept for backward)
    lm_head: bool             # the model ends in a vocabulary projection (logits kept for the loss)
    assumed: tuple[str, ...] = ()   # values we had to assume, stated in the output


@dataclass
class ModelSkeleton:
    """A model built on the meta device plus what the budget needs to know about it."""
    name: str
    config: object                      # transformers.PretrainedConfig
    model: nn.Module                    # on the meta device
    architecture: str                   # the transformers class that was built
    total_params: int                   # unique parameters (tied weights counted once)
    dims: TransformerDims | None        # None where the config does not describe a decoder/encoder stack
    notes: tuple[str, ...] = ()

    @property
    def model_type(self) -> str | None:
        return getattr(self.config, "model_type", None)


def count_parameters(model: nn.Module) -> int:
    """Number of parameter values, each shared (tied) tensor once; works on the meta device."""
    return sum(p.numel() for p in model.parameters())    # parameters() already skips repeats


def build_skeleton(source, architecture: str | None = None) -> ModelSkeleton:
    """Build the meta-device skeleton of a named shape, a model folder / config.json, or a config object.

    `architecture` names the transformers class to build (e.g. "BertForSequenceClassification");
    default: the shape's class, else the config's `architectures[0]`, else AutoModel (no head).
    """
    notes: list[str] = []
    shape: NamedShape | None = None
    if isinstance(source, NamedShape):
        shape = source
    elif isinstance(source, str) and not _looks_like_path(source):
        shape = find_shape(source)
    if shape is not None:
        name, config = shape.name, config_for_shape(shape)
        architecture = architecture or shape.architecture
    elif isinstance(source, (str, bytes)) or hasattr(source, "__fspath__"):
        config = load_config(source)
        name = str(source)
    elif hasattr(source, "model_type") and hasattr(source, "to_dict"):
        config, name = source, getattr(source, "name_or_path", "") or type(source).__name__
    else:
        raise LoraLabError(f"cannot build a model from {type(source).__name__}; pass a shape name, "
                           f"a model folder, a config.json path or a transformers config")

    model_class, architecture, note = _model_class(config, architecture)
    if note:
        notes.append(note)
    try:
        with torch.device("meta"):
            model = model_class.from_config(config) if architecture.startswith("Auto") else model_class(config)
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise LoraLabError(f"cannot build {architecture} from this config: {exc}") from None
    return ModelSkeleton(name, config, model, type(model).__name__, count_parameters(model),
                         transformer_dims(config, model), tuple(notes))


def _looks_like_path(text: str) -> bool:
    import os

    return os.path.sep in text or text.endswith(".json") or os.path.exists(text)


def _model_class(config, architecture: str | None):
    import transformers

    if architecture:
        cls = getattr(transformers, architecture, None)
        if cls is None or not isinstance(cls, type):
            raise LoraLabError(f"transformers has no model class {architecture!r}; give a class name such as "
                               f"'AutoModel' or 'BertForSequenceClassification'")
        return cls, architecture, None
    for name in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, name, None)
        if isinstance(cls, type):
            return cls, name, None
    note = None
    if getattr(config, "architectures", None):
        note = (f"config names {config.architectures[0]!r}, which transformers does not ship; "
                f"counted AutoModel (the bare model, no task head)")
    return transformers.AutoModel, "AutoModel", note


def _first_attr(config, names: tuple[str, ...]):
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _up_width(model: nn.Module, arch: Architecture | None, config) -> int | None:
    """The MLP width: output features of the family's up projection (its slice, where fused)."""
    if arch is None or "up" not in arch.roles:
        return None
    fused = arch.fused_for("up")
    if fused is not None:
        return fused.widths(config)[fused.roles.index("up")]
    for name, module in model.named_modules():
        if matches(name, arch.up) and kind_of(module) is not None:
            return kind_of(module).shape(module)[0]
    return None


def transformer_dims(config, model: nn.Module) -> TransformerDims | None:
    """Read the stack's sizes from a transformers config (most families alias their own names to
    hidden_size / num_hidden_layers / num_attention_heads). None for encoder-decoder models and
    configs without these sizes: the activation estimate then is not given."""
    if getattr(config, "is_encoder_decoder", False):
        return None
    hidden = _first_attr(config, ("hidden_size", "d_model", "n_embd", "dim"))
    layers = _first_attr(config, ("num_hidden_layers", "n_layer", "num_layers", "n_layers"))
    heads = _first_attr(config, ("num_attention_heads", "n_head", "num_heads", "n_heads"))
    if hidden is None or layers is None or heads is None:
        return None
    assumed = []
    kv_heads = _first_attr(config, ("num_key_value_heads",)) or heads
    head_dim = _first_attr(config, ("head_dim",)) or hidden // heads
    arch = architecture_for(model)
    intermediate = _up_width(model, arch, config) or _first_attr(config, ("intermediate_size", "n_inner", "ffn_dim",
                                                                          "d_ff"))
    if intermediate is None:
        intermediate = 4 * hidden
        assumed.append(f"MLP width not in the config: assumed 4·hidden = {intermediate}")
    vocab = _first_attr(config, ("vocab_size",)) or 0
    max_positions = _first_attr(config, ("max_position_embeddings", "n_positions", "n_ctx"))
    gated = arch is not None and "gate" in arch.roles
    if arch is None:
        assumed.append(f"model_type {config.model_type!r} is not in loralab.models.architectures: "
                       f"assumed an ungated MLP")
    dropout = any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules()) or any(
        isinstance(getattr(config, k, None), float) and getattr(config, k) > 0
        for k in ("attention_dropout", "attention_probs_dropout_prob", "attn_pdrop"))
    get_out = getattr(model, "get_output_embeddings", None)
    head = get_out() if callable(get_out) else None
    lm_head = head is not None and getattr(head, "out_features", getattr(head, "num_embeddings", None)) == vocab
    return TransformerDims(hidden, layers, heads, kv_heads, head_dim, intermediate, vocab, max_positions,
                           gated, dropout, lm_head, tuple(assumed))
