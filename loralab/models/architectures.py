"""The architecture table: for each model family (transformers' `config.model_type`), which modules hold
the attention projections (q, k, v, o: the paper's Wq, Wk, Wv, Wo), the MLP projections (gate, up,
down), which of them are fused into one layer and in which order, and the task head that a fine-tuning
run creates fresh.

Everything that needs a family's module names reads them here: the default LoRA targets
(`loralab.surgery.presets`), `loralab budget --targets q v`, the targets experiment, the task head put
into modules_to_save, Houlsby adapter placement. Adding a family is one call:

    register_architecture(Architecture(model_types=("llama", "mistral"), q="q_proj", k="k_proj",
                                       v="v_proj", o="o_proj", gate="gate_proj", up="up_proj",
                                       down="down_proj", head=("score",)))

Names are LoraConfig target rules (a dotted suffix, or "re:" + a full regex). A fused projection
stacks its roles' outputs in order, e.g. Phi-3's qkv_proj is [q; k; v] with grouped-query widths
(heads·head_dim, kv_heads·head_dim, kv_heads·head_dim) read from the model config.
`tests/models/test_architectures.py` builds every family on the meta device and checks each name.
This module imports neither torch nor transformers.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from loralab.core.registry import Registry
from loralab.core.targeting import matches
from loralab.errors import LoraLabError

ROLES = ("q", "k", "v", "o", "gate", "up", "down")
"""q/k/v/o: attention query, key, value, output projections (the paper's Wq, Wk, Wv, Wo);
gate/up/down: the MLP's projections (gate only in gated MLPs such as LLaMA's SwiGLU)."""

SliceSpec = list[bool] | dict[str, list]
"""LoraConfig.fused_slices value: [adapt slice 0?, ...] for equal widths, else {"adapt": [...], "widths": [...]}."""


def _head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _kv_heads(config: Any) -> int:
    return getattr(config, "num_key_value_heads", None) or config.num_attention_heads


# Output features of a role inside a fused projection, from the model config (grouped-query attention:
# k and v have kv_heads·head_dim features). Only roles that read the block's input can be fused.
_ROLE_WIDTH: dict[str, Callable[[Any], int]] = {
    "q": lambda c: c.num_attention_heads * _head_dim(c),
    "k": lambda c: _kv_heads(c) * _head_dim(c),
    "v": lambda c: _kv_heads(c) * _head_dim(c),
    "gate": lambda c: c.intermediate_size,
    "up": lambda c: c.intermediate_size,
}


@dataclass(frozen=True)
class FusedProjection:
    """One layer that computes several roles at once; its output features are theirs stacked in order."""
    module: str
    """Target rule of the layer, e.g. "qkv_proj"."""
    roles: tuple[str, ...]
    """The roles stacked along the output features, e.g. ("q", "k", "v")."""

    def __post_init__(self) -> None:
        if len(self.roles) < 2 or len(set(self.roles)) != len(self.roles) or set(self.roles) - set(_ROLE_WIDTH):
            raise LoraLabError(f"fused projection {self.module!r} must stack >= 2 distinct roles of "
                               f"{', '.join(_ROLE_WIDTH)}, got {self.roles!r}")

    def widths(self, config: Any) -> tuple[int, ...]:
        """Output features of each role (same order as `roles`), read from a transformers config."""
        try:
            return tuple(int(_ROLE_WIDTH[role](config)) for role in self.roles)
        except (AttributeError, TypeError, ZeroDivisionError) as exc:
            raise LoraLabError(f"cannot read the slice widths of {self.module!r} from the model config ({exc}); "
                               f"pass LoraConfig(fused_slices=...) yourself") from None

    def slices(self, adapt: Sequence[str], config: Any) -> SliceSpec:
        """LoraConfig.fused_slices value adapting the roles in `adapt`: a list of booleans when the
        slices are equally wide, else {"adapt": [...], "widths": [...]}."""
        flags = [role in adapt for role in self.roles]
        widths = self.widths(config)
        if len(set(widths)) == 1:
            return flags
        return {"adapt": flags, "widths": list(widths)}


@dataclass(frozen=True)
class GgufLayout:
    """How llama.cpp stores one model type (its converter, convert_hf_to_gguf.py): the GGUF architecture
    name its tensors and metadata are keyed by, and whether the q/k projections' output rows are reordered
    (LLaMA's rotary embedding: llama.cpp interleaves the two halves of each head, see
    `loralab.formats.gguf_adapter.permute_rows`)."""
    arch: str
    """GGUF `general.architecture`, e.g. "llama" (also MistralForCausalLM's)."""
    permute_qk: bool = False


@dataclass(frozen=True)
class LoraTargets:
    """Roles translated into LoraConfig fields."""
    targets: list[str]
    fused_slices: dict[str, SliceSpec] = field(default_factory=dict)


@dataclass(frozen=True)
class Architecture:
    """The module names of one family (several model types may share them). A role is either named
    (`q="q_proj"`), part of a fused projection (`fused=(FusedProjection("c_attn", ("q", "k", "v")),)`),
    or absent (None: e.g. no `gate` in a plain MLP)."""
    model_types: tuple[str, ...] = ()
    q: str | None = None
    k: str | None = None
    v: str | None = None
    o: str | None = None
    gate: str | None = None
    up: str | None = None
    down: str | None = None
    fused: tuple[FusedProjection, ...] = ()
    head: tuple[str, ...] = ()
    """Task-head modules created fresh for fine-tuning (trained in full via modules_to_save)."""
    alternatives: tuple["Architecture", ...] = ()
    """The same family under other names: another transformers version (ViT's `query` before 5.x) or a
    config-dependent layout (T5 v1.1's gated `wi_0`/`wi_1`). `architecture_for(model)` picks the naming
    whose names the model has; their own model_types are left empty."""
    gguf: tuple[tuple[str, GgufLayout], ...] = ()
    """(model_type, GgufLayout) for the model types llama.cpp loads adapters of (`loralab export --to gguf`)."""
    ragged: tuple[str, ...] = ()
    """Model types whose attention runs through transformers' attention interface as plain full causal attention
    (no sliding window, soft-capping or sinks): BatchDecoder runs ragged steps on them (loralab.generation.ragged)."""

    def __post_init__(self) -> None:
        where = f"Architecture{self.model_types}"
        if isinstance(self.model_types, str) or not all(isinstance(t, str) and t for t in self.model_types):
            raise LoraLabError(f"{where}: model_types must be a tuple of model_type strings")
        names = [getattr(self, r) for r in ROLES if getattr(self, r) is not None] + list(self.head)
        if isinstance(self.head, str) or not all(isinstance(n, str) and n for n in names):
            raise LoraLabError(f"{where}: module names must be non-empty strings and head a tuple of them")
        fused_roles = [role for f in self.fused for role in f.roles]
        clash = sorted({r for r in fused_roles if fused_roles.count(r) > 1 or getattr(self, r) is not None})
        if clash:
            raise LoraLabError(f"{where}: roles {clash} are named twice (named and fused, or in two fused "
                               f"projections); give each role one place")
        strangers = sorted(set(self.ragged) - set(self.model_types))
        if strangers:
            raise LoraLabError(f"{where}: ragged lists {strangers}, which are not among its model_types")
        if any(alt.model_types or alt.alternatives for alt in self.alternatives):
            raise LoraLabError(f"{where}: an alternative naming takes no model_types or alternatives of its own")

    @property
    def roles(self) -> tuple[str, ...]:
        """The roles this family has, in ROLES order."""
        return tuple(r for r in ROLES if getattr(self, r) is not None or self.fused_for(r) is not None)

    def gguf_layout(self, model_type: str | None) -> GgufLayout | None:
        """llama.cpp's layout of this model type, None when loralab does not export it to GGUF."""
        return dict(self.gguf).get(model_type or "")

    def fused_for(self, role: str) -> FusedProjection | None:
        return next((f for f in self.fused if role in f.roles), None)

    def rule(self, role: str) -> str | None:
        """The target rule selecting the role's matrix: its own module, or the fused projection holding it."""
        fused = self.fused_for(role)
        return fused.module if fused is not None else getattr(self, role)

    def rules(self) -> tuple[str, ...]:
        """Every module rule of the table entry (roles, fused projections), each once."""
        return tuple(dict.fromkeys(self.rule(r) for r in self.roles))

    def fused_slices(self, roles: Sequence[str], config: Any) -> dict[str, SliceSpec]:
        """LoraConfig.fused_slices for the fused projections holding any of `roles`."""
        return {f.module: f.slices(roles, config) for f in self.fused if set(f.roles) & set(roles)}

    def lora_targets(self, roles: Sequence[str], config: Any) -> LoraTargets:
        """LoraConfig targets and fused_slices adapting exactly `roles` (role names; each must exist)."""
        missing = [r for r in roles if r not in self.roles]
        if missing:
            raise LoraLabError(f"{'/'.join(self.model_types) or 'this family'} has no {missing[0]!r} projection; "
                               f"roles it has: {', '.join(self.roles)}")
        targets = list(dict.fromkeys(self.rule(r) for r in roles))
        return LoraTargets(targets, self.fused_slices(roles, config))


ARCHITECTURES = Registry("architecture")       # model_type -> Architecture (a family under each of its types)


def register_architecture(arch: Architecture, replace: bool = False) -> Architecture:
    """Add a family to the table under each of its model types; returns it. A model type registered
    before is an error unless replace=True (all or nothing: nothing is added when one type is taken).
    Tests undo their registrations with `with ARCHITECTURES.scoped():`."""
    if not isinstance(arch, Architecture) or not arch.model_types:
        raise LoraLabError("register_architecture takes an Architecture with at least one model_type")
    taken = [t for t in arch.model_types if t in ARCHITECTURES]
    if taken and not replace:
        raise LoraLabError(f"model type {taken[0]!r} is already in the architecture table; "
                           f"pass replace=True to override it")
    for model_type in taken:
        ARCHITECTURES.remove(model_type)
    for model_type in arch.model_types:
        ARCHITECTURES.add(model_type, arch)
    return arch


def architecture(model_type: str | None) -> Architecture | None:
    """The registered family of a model type (its current transformers names), None if unknown."""
    return ARCHITECTURES.get(model_type or "")


def architectures() -> tuple[Architecture, ...]:
    """Every registered family once, in registration order."""
    return tuple({id(a): a for a in ARCHITECTURES.values()}.values())


def model_types() -> tuple[str, ...]:
    return tuple(ARCHITECTURES)


def model_type_of(model: Any) -> str | None:
    """A transformers model's `config.model_type`; None for models without a config."""
    return getattr(getattr(model, "config", None), "model_type", None)


def architecture_for(model: Any) -> Architecture | None:
    """The table entry naming this model's modules: the first naming of its family whose names all
    exist in the model, else the one with the most names found. None for an unknown family."""
    arch = architecture(model_type_of(model))
    if arch is None or not arch.alternatives:
        return arch

    names = [n for n, _ in model.named_modules() if n]
    namings = (arch, *arch.alternatives)
    found = [sum(any(matches(n, rule) for n in names) for rule in a.rules()) for a in namings]
    complete = [a for a, hits in zip(namings, found) if hits == len(a.rules())]
    return complete[0] if complete else namings[found.index(max(found))]


def task_head_modules(model: Any) -> tuple[str, ...]:
    """The family's fresh task-head module names (modules_to_save for classifiers), () when unknown."""
    arch = architecture_for(model)
    return arch.head if arch is not None else ()


# ------------------------------------------------------------------------------------------------
# The table (module names as of transformers 5; older names as alternatives)
# ------------------------------------------------------------------------------------------------
# "output.dense" alone would also match attention.output.dense: pin the MLP's one with a regex.
_BERT_DOWN = r"re:.*layer\.\d+\.output\.dense"
_BERT_STYLE = dict(q="query", k="key", v="value", o="attention.output.dense", up="intermediate.dense",
                   down=_BERT_DOWN)
_LLAMA_STYLE = dict(q="q_proj", k="k_proj", v="v_proj", o="o_proj", gate="gate_proj", up="up_proj",
                    down="down_proj")
_ATTENTION = ("q", "k", "v")
# llama.cpp's converter: LlamaModel (also MistralForCausalLM) permutes q/k rows; Qwen2 uses NeoX rotary, no permute.
_LLAMA_GGUF = (("llama", GgufLayout("llama", permute_qk=True)), ("mistral", GgufLayout("llama", permute_qk=True)),
               ("qwen2", GgufLayout("qwen2")))

register_architecture(Architecture(model_types=("bert", "roberta", "xlm-roberta", "camembert", "electra", "ernie"),
                                   **_BERT_STYLE, head=("classifier",)))
register_architecture(Architecture(model_types=("mpnet",), q="attn.q", k="attn.k", v="attn.v", o="attn.o",
                                   up="intermediate.dense", down=_BERT_DOWN, head=("classifier",)))
register_architecture(Architecture(model_types=("distilbert",), q="q_lin", k="k_lin", v="v_lin", o="out_lin",
                                   up="lin1", down="lin2", head=("pre_classifier", "classifier")))
register_architecture(Architecture(model_types=("deberta-v2",), q="query_proj", k="key_proj", v="value_proj",
                                   o="attention.output.dense", up="intermediate.dense", down=_BERT_DOWN,
                                   head=("pooler", "classifier")))
register_architecture(Architecture(model_types=("gpt2",), fused=(FusedProjection("c_attn", _ATTENTION),),
                                   o="attn.c_proj", up="mlp.c_fc", down="mlp.c_proj", head=("score",)))
register_architecture(Architecture(model_types=("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text",
                                                "olmo", "olmo2", "granite", "smollm3"),
                                   **_LLAMA_STYLE, head=("score",), gguf=_LLAMA_GGUF, ragged=("llama", "qwen2")))
# Mixtral's experts keep their MLP weights as 3-D parameters (no modules); `mlp.gate` is the router.
register_architecture(Architecture(model_types=("mixtral",), q="q_proj", k="k_proj", v="v_proj", o="o_proj",
                                   head=("score",)))
register_architecture(Architecture(model_types=("phi3",), o="o_proj", down="down_proj", head=("score",),
                                   fused=(FusedProjection("qkv_proj", _ATTENTION),
                                          FusedProjection("gate_up_proj", ("gate", "up")))))
register_architecture(Architecture(model_types=("gpt_neo",), q="q_proj", k="k_proj", v="v_proj", o="out_proj",
                                   up="mlp.c_fc", down="mlp.c_proj", head=("score",)))
register_architecture(Architecture(model_types=("gptj",), q="q_proj", k="k_proj", v="v_proj", o="out_proj",
                                   up="fc_in", down="fc_out", head=("score",)))
register_architecture(Architecture(model_types=("opt",), q="q_proj", k="k_proj", v="v_proj", o="out_proj",
                                   up="fc1", down="fc2", head=("score",)))
# T5 v1.1 / mT5 / umT5 use a gated MLP: act(wi_0·x) * (wi_1·x).
register_architecture(Architecture(model_types=("t5", "mt5", "umt5"), q="q", k="k", v="v", o="o", up="wi", down="wo",
                                   head=("classification_head",),
                                   alternatives=(Architecture(q="q", k="k", v="v", o="o", gate="wi_0", up="wi_1",
                                                              down="wo", head=("classification_head",)),)))
# Self- and cross-attention outputs; a classification head has an `out_proj` of its own.
register_architecture(Architecture(model_types=("bart", "mbart", "marian", "pegasus"), q="q_proj", k="k_proj",
                                   v="v_proj", o=r"re:.*attn\.out_proj", up="fc1", down="fc2",
                                   head=("classification_head",)))
register_architecture(Architecture(model_types=("whisper",), q="q_proj", k="k_proj", v="v_proj",
                                   o=r"re:.*attn\.out_proj", up="fc1", down="fc2", head=("projector", "classifier")))
# transformers renamed the vision encoders' attention during 5.x (ViTSelfAttention.query -> q_proj).
register_architecture(Architecture(model_types=("vit", "deit"), q="q_proj", k="k_proj", v="v_proj", o="o_proj",
                                   up="mlp.fc1", down="mlp.fc2", head=("classifier",),
                                   alternatives=(Architecture(**_BERT_STYLE, head=("classifier",)),)))
register_architecture(Architecture(model_types=("dinov2",), q="q_proj", k="k_proj", v="v_proj", o="o_proj",
                                   up="mlp.fc1", down="mlp.fc2", head=("classifier",),
                                   alternatives=(Architecture(q="query", k="key", v="value", o="attention.output.dense",
                                                              up="mlp.fc1", down="mlp.fc2", head=("classifier",)),)))

__all__ = ["ARCHITECTURES", "ROLES", "Architecture", "FusedProjection", "GgufLayout", "LoraTargets", "SliceSpec", "architecture", "architecture_for",
           "architectures", "model_type_of", "model_types", "register_architecture", "task_head_modules"]
