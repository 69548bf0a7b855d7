"""Houlsby adapter layers (Houlsby et al. 2019; the LoRA paper's Adapter^H baseline).

Two bottleneck adapters per transformer block: one on the attention output projection, one on the MLP
output projection. Each maps the sub-layer's output h (…, d) to

    h + W_up · f(W_down · h + b_down) + b_up          W_down: (m, d), W_up: (d, m)

so it adds 2·d·m + d + m values; a model with L blocks gets 2·L·(2·d·m + d + m).

Placement: we wrap the output dense layer itself (BERT: `attention.output.dense` and `output.dense`),
so the adapter acts on the projection's output before dropout and before the residual add + LayerNorm
(BertSelfOutput / BertOutput compute LayerNorm(dropout(dense(x)) + input)). Houlsby's reference code
applies the adapter after that dropout; in eval mode, and whenever hidden dropout is 0, the two are the
same function. W_up and b_up start at zero, so the adapted model starts exactly at the base model.
Houlsby et al. also train the LayerNorms; that is `train_layernorm=True` (adds 2·d per LayerNorm),
off by default so the count is the adapters' alone, as in the formula above.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from loralab.baselines.common import freeze_all, train_head
from loralab.core.targeting import matches
from loralab.errors import LoraLabError, choose
from loralab.models.architectures import architecture_for, model_type_of

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh}


class BottleneckAdapter(nn.Module):
    """x (…, d) -> x + up(f(down(x))); up starts at zero so the adapter starts as the identity."""

    def __init__(self, d: int, m: int, activation: str = "gelu", dtype: torch.dtype | None = None,
                 device: torch.device | None = None) -> None:
        super().__init__()
        self.down = nn.Linear(d, m, dtype=dtype, device=device)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(m, d, dtype=dtype, device=device)
        # Kaiming-uniform down-projection (nn.Linear's default) keeps the bottleneck's activations O(1);
        # a zero up-projection makes the adapter the identity at the start, like LoRA's B = 0.
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        return x + self.up(self.act(self.down(x)))


class AdaptedOutput(nn.Module):
    """An output projection followed by a bottleneck adapter: forward(x) = adapter(base_layer(x))."""

    def __init__(self, base_layer: nn.Module, adapter: BottleneckAdapter) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adapter = adapter

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.adapter(self.base_layer(x, *args, **kwargs))


def _out_features(module: nn.Module) -> int:
    """The output width d of a projection: Linear.out_features or GPT-2 Conv1D.nf."""
    for attr in ("out_features", "nf"):
        if isinstance(getattr(module, attr, None), int):
            return getattr(module, attr)
    raise LoraLabError(f"cannot tell the output width of a {type(module).__name__}; "
                       f"Houlsby adapters wrap Linear or Conv1D output projections")


def default_placement(model: nn.Module) -> tuple[str, str]:
    """(attention output projection rule, MLP output projection rule) from the architecture table, for
    encoder-only and decoder-only stacks (an encoder-decoder's decoder blocks have a third sub-layer)."""
    arch = architecture_for(model)
    if arch is None or not (arch.o and arch.down) or getattr(model.config, "is_encoder_decoder", False):
        raise LoraLabError(f"no Houlsby adapter placement for model_type {model_type_of(model)!r}; pass "
                           f"targets=[attention output rule, MLP output rule]")
    return arch.o, arch.down


def adapter_sites(model: nn.Module, targets: Sequence[str] | None = None) -> dict[str, nn.Module]:
    """{name: output projection} that get an adapter: two per block for known families, or the given rules."""
    if targets is None:
        targets = default_placement(model)
    sites = {}
    for rule in targets:
        hits = {n: m for n, m in model.named_modules() if matches(n, rule) and not isinstance(m, AdaptedOutput)}
        if not hits:
            raise LoraLabError(f"Houlsby target {rule!r} matches no module; pass targets=[...] with names from "
                               f"model.named_modules()")
        sites.update(hits)
    return sites


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def prepare_houlsby(model: nn.Module, bottleneck: int = 16, activation: str = "gelu",
                    targets: Sequence[str] | None = None, train_layernorm: bool = False,
                    head: Sequence[str] | None = None) -> nn.Module:
    """Add Houlsby adapters in place; only the adapters (plus the head, and LayerNorms if asked) train.

    bottleneck: m, the adapter's inner width. activation: "gelu", "relu" or "tanh".
    targets: module-name rules of the projections to wrap (default: `default_placement(model)`).
    Returns the same model object; its forward signature is unchanged."""
    if not isinstance(bottleneck, int) or bottleneck < 1:
        raise LoraLabError(f"Houlsby bottleneck must be a positive integer, got {bottleneck!r}")
    choose(activation, ACTIVATIONS, "adapter activation")
    if houlsby_adapters(model):
        raise LoraLabError("this model already has Houlsby adapters; prepare a fresh copy of the base model")
    sites = adapter_sites(model, targets)
    freeze_all(model)
    for name, layer in sites.items():
        ref = next(layer.parameters())
        adapter = BottleneckAdapter(_out_features(layer), bottleneck, activation, dtype=ref.dtype, device=ref.device)
        _set_submodule(model, name, AdaptedOutput(layer, adapter))
    for module in model.modules():
        if isinstance(module, BottleneckAdapter):
            module.requires_grad_(True)
        elif train_layernorm and isinstance(module, nn.LayerNorm):
            module.requires_grad_(True)
    train_head(model, head)
    return model


def houlsby_adapters(model: nn.Module) -> dict[str, BottleneckAdapter]:
    """{name of the wrapped projection: its adapter}."""
    return {n: m.adapter for n, m in model.named_modules() if isinstance(m, AdaptedOutput)}


def set_houlsby_enabled(model: nn.Module, enabled: bool) -> None:
    """Switch every adapter off (the base model's function) or back on."""
    for adapter in houlsby_adapters(model).values():
        adapter.enabled = enabled


def houlsby_param_count(num_layers: int, d: int, m: int) -> int:
    """2·L·(2·d·m + d + m): two adapters per block, each W_down, b_down, W_up, b_up."""
    return 2 * num_layers * (2 * d * m + d + m)


