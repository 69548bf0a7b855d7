"""Prefix-tuning (Li & Liang 2021), the key/value variant: l trainable key and value vectors per layer.

Every self-attention layer gets learned prefix keys P_K and values P_V of shape (H_kv, l, head_dim),
prepended along the sequence axis to the keys and values its projections computed from the tokens:

    Attention(Q, [P_K; K], [P_V; V])          every query attends to all l prefix positions

Nothing else changes: the prefix has no position (it bypasses position embeddings and RoPE), the token
positions are not shifted, and the causal / padding mask of the tokens is kept as it was, extended by l
always-visible columns. Trainable values = L·2·l·d_kv (d_kv = H_kv·head_dim = d for BERT and GPT-2),
plus the head. We train the prefixes directly; Li & Liang's reparametrisation (an MLP that produces the
prefixes during training, dropped afterwards) is not implemented.

How: transformers 5 models look up their attention function by `config._attn_implementation`. We
register a dispatcher under "loralab_prefix_sdpa" / "loralab_prefix_eager" (with the same mask builders
as "sdpa" / "eager") and switch the model's config to it. The dispatcher prepends the prefix of the
calling module, extends the mask, and calls the model's original attention function. With prefixes
disabled or of length 0 it calls that function with the untouched arguments, so outputs are the base
model's bit for bit. Flash and flex attention are not supported.
"""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from loralab.baselines.common import freeze_all, train_head
from loralab.core.targeting import matches
from loralab.errors import LoraLabError
from loralab.models.architectures import architecture_for, model_type_of

PREFIX_ATTR = "loralab_prefix"
_IMPL_NAME = "loralab_prefix_{}"
_SUPPORTED = ("sdpa", "eager")

# Families whose self-attention module (the parent of the table's q projection) calls transformers'
# attention function, so the dispatcher below sees every call; checked in tests/baselines/test_prefix.py.
FAMILIES = ("bert", "roberta", "xlm-roberta", "camembert", "electra", "gpt2", "llama", "mistral", "qwen2", "qwen3",
            "gemma", "gemma2", "olmo", "olmo2")


class PrefixKV(nn.Module):
    """The learned prefix of one attention layer: key and value, each (H_kv, l, head_dim)."""

    def __init__(self, num_kv_heads: int, head_dim: int, length: int, init_std: float = 0.02,
                 dtype: torch.dtype | None = None, device: torch.device | None = None) -> None:
        super().__init__()
        self.key = nn.Parameter(torch.randn(num_kv_heads, length, head_dim, dtype=dtype, device=device) * init_std)
        self.value = nn.Parameter(torch.randn(num_kv_heads, length, head_dim, dtype=dtype, device=device) * init_std)
        self.enabled = True
        # The model's own attention function (sdpa, or the model file's eager function); not a submodule.
        self.inner: Callable = _sdpa()
        self.mask_kind = "sdpa"

    @property
    def length(self) -> int:
        return self.key.shape[1]


def _sdpa() -> Callable:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    return sdpa_attention_forward


def _extend_mask(mask: torch.Tensor, length: int) -> torch.Tensor:
    """Prepend `length` always-visible key columns to a 4-D mask (bool: True = visible; float: additive)."""
    shape = (*mask.shape[:-1], length)
    visible = (torch.ones(shape, dtype=torch.bool, device=mask.device) if mask.dtype == torch.bool
               else torch.zeros(shape, dtype=mask.dtype, device=mask.device))
    return torch.cat([visible, mask], dim=-1)


def _causal_mask(q_len: int, kv_len: int, length: int, kind: str, dtype: torch.dtype,
                 device: torch.device) -> torch.Tensor:
    """(1, 1, q, l + kv): the prefix visible to all, token i sees tokens j ≤ i + kv − q (bottom-right aligned)."""
    rows = torch.arange(q_len, device=device)[:, None] + (kv_len - q_len)
    visible = torch.arange(kv_len, device=device)[None, :] <= rows
    visible = torch.cat([torch.ones(q_len, length, dtype=torch.bool, device=device), visible], dim=-1)[None, None]
    if kind == "sdpa":
        return visible
    return torch.zeros(visible.shape, dtype=dtype, device=device).masked_fill(~visible, torch.finfo(dtype).min)


def prefix_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, **kwargs):
    """The registered attention function: query (B, H, q, hd), key/value (B, H_kv, kv, hd)."""
    prefix: PrefixKV | None = getattr(module, PREFIX_ATTR, None)
    if prefix is None:
        raise LoraLabError(f"{type(module).__name__} has no prefix but the model uses prefix attention; "
                           f"call loralab.baselines.prefix.remove_prefix(model) or prepare every layer")
    if not prefix.enabled or prefix.length == 0:
        return prefix.inner(module, query, key, value, attention_mask, **kwargs)
    batch = key.shape[0]
    p_key = prefix.key.to(key.dtype).unsqueeze(0).expand(batch, -1, -1, -1)
    p_value = prefix.value.to(value.dtype).unsqueeze(0).expand(batch, -1, -1, -1)
    q_len, kv_len = query.shape[2], key.shape[2]
    if attention_mask is not None:
        attention_mask = _extend_mask(attention_mask, prefix.length)
    else:
        causal = kwargs.get("is_causal")
        causal = getattr(module, "is_causal", False) if causal is None else causal
        if causal and q_len > 1:
            # SDPA's own is_causal aligns top-left, which is wrong once keys outnumber queries: spell it out.
            attention_mask = _causal_mask(q_len, kv_len, prefix.length, prefix.mask_kind, query.dtype, query.device)
        kwargs["is_causal"] = False
    return prefix.inner(module, query, torch.cat([p_key, key], dim=2), torch.cat([p_value, value], dim=2),
                        attention_mask, **kwargs)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    for impl in _SUPPORTED:
        name = _IMPL_NAME.format(impl)
        AttentionInterface.register(name, prefix_attention)
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[impl])


def attention_modules(model: nn.Module, rule: str | None = None) -> dict[str, nn.Module]:
    """{name: self-attention module} of every layer that gets a prefix."""
    if rule is None:
        return _self_attention_modules(model)
    found = {n: m for n, m in model.named_modules() if matches(n, rule)}
    if not found:
        raise LoraLabError(f"prefix attention rule {rule!r} matches no module; pass attention=... with a name "
                           f"from model.named_modules()")
    return found


def _self_attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The parent of every q projection (or of the fused projection holding q), for the known families."""
    mt, arch = model_type_of(model), architecture_for(model)
    if mt not in FAMILIES or arch is None:
        raise LoraLabError(f"no prefix-tuning support for model_type {mt!r}; pass attention=<rule selecting each "
                           f"self-attention module> (known: {', '.join(sorted(FAMILIES))})")
    parents = [n.rpartition(".")[0] for n, _ in model.named_modules() if matches(n, arch.rule("q"))]
    return {n: model.get_submodule(n) for n in parents}


def _kv_shape(model: nn.Module, module: nn.Module) -> tuple[int, int]:
    """(H_kv, head_dim) of one attention module's keys."""
    config = model.config
    head_dim = next((getattr(module, a) for a in ("head_dim", "attention_head_size") if hasattr(module, a)), None)
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    if head_dim is None:
        head_dim = config.hidden_size // heads
    return int(kv_heads), int(head_dim)


def _original_function(model: nn.Module, module: nn.Module, impl: str) -> Callable:
    if impl == "sdpa":
        return _sdpa()
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if eager is None:
        raise LoraLabError(f"{type(module).__name__} has no eager_attention_forward; load the model with "
                           f"attn_implementation='sdpa' for prefix-tuning")
    return eager


def prepare_prefix(model: nn.Module, length: int = 10, init_std: float = 0.02, attention: str | None = None,
                   head: Sequence[str] | None = None) -> nn.Module:
    """Add trainable key/value prefixes of `length` positions to every self-attention layer, in place.

    Only the prefixes (and the task head) train. attention: rule selecting each layer's self-attention
    module (default: the parent of each q projection of a family in FAMILIES). Returns the same model object; the forward
    signature is unchanged (pass input_ids / attention_mask as before; the mask covers the tokens only)."""
    if not isinstance(length, int) or length < 0:
        raise LoraLabError(f"prefix length must be an integer ≥ 0, got {length!r}")
    impl = getattr(model.config, "_attn_implementation", None) or "eager"
    if impl.startswith("loralab_prefix_"):
        raise LoraLabError("this model already has prefixes; call remove_prefix(model) first")
    if impl not in _SUPPORTED:
        raise LoraLabError(f"prefix-tuning supports attn_implementation sdpa or eager, not {impl!r}; "
                           f"load the model with attn_implementation='sdpa'")
    modules = attention_modules(model, attention)
    _register()
    freeze_all(model)
    for module in modules.values():
        ref = next(module.parameters())
        kv_heads, head_dim = _kv_shape(model, module)
        prefix = PrefixKV(kv_heads, head_dim, length, init_std, dtype=ref.dtype, device=ref.device)
        prefix.inner = _original_function(model, module, impl)
        prefix.mask_kind = impl
        module.add_module(PREFIX_ATTR, prefix)
    model.config._attn_implementation = _IMPL_NAME.format(impl)
    train_head(model, head)
    return model


def prefixes(model: nn.Module) -> dict[str, PrefixKV]:
    """{name of the attention module: its prefix}."""
    return {n.rsplit(".", 1)[0]: m for n, m in model.named_modules() if isinstance(m, PrefixKV)}


def set_prefix_enabled(model: nn.Module, enabled: bool) -> None:
    """Switch every prefix off (the base model's function) or back on."""
    for prefix in prefixes(model).values():
        prefix.enabled = enabled


@contextlib.contextmanager
def prefix_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """`with prefix_disabled(model): ...` runs the base model; the prefixes come back afterwards."""
    before = {n: p.enabled for n, p in prefixes(model).items()}
    set_prefix_enabled(model, False)
    try:
        yield model
    finally:
        for name, prefix in prefixes(model).items():
            prefix.enabled = before.get(name, True)


def remove_prefix(model: nn.Module) -> nn.Module:
    """Delete the prefixes and restore the model's attention implementation."""
    impl = getattr(model.config, "_attn_implementation", "") or ""
    for name in list(prefixes(model)):
        delattr(model.get_submodule(name), PREFIX_ATTR)
    if impl.startswith("loralab_prefix_"):
        model.config._attn_implementation = impl.removeprefix("loralab_prefix_")
    return model


def prefix_param_count(num_layers: int, length: int, d_kv: int) -> int:
    """L·2·l·d_kv: a key and a value vector of width d_kv per prefix position and layer."""
    return num_layers * 2 * length * d_kv
