"""Initialisation schemes for new adapters, registered by name (`LoraConfig(init=NAME)`).

Hooks (receive the LoraLayer and the adapter's fresh LoraFactors):
  check(layer, f)    refuse what the scheme cannot start (raise ValueError); nothing has changed yet
  init(layer, f)     set A and B; must leave the layer's output unchanged
  base_offset(f)     (A0 (r0, k), B0 (d, r0)) when the scheme moved part of W0 into the adapter, so that
                     the original W0 = the layer's W0 now + s·B0·A0; None when W0 is untouched. Saving
                     relative to the original W0 and deleting the adapter use it.
Declared: `supports_slices` (works on fused-projection slices), `changes_base_weight` (init writes W0;
an injection that fails later restores W0 from a copy), and `peft_value`: the value of PEFT's
`init_lora_weights` meaning the same scheme (True, "gaussian", ...; None when PEFT has none), which
`accepts_peft(value)` recognises (PiSSA also takes PEFT's "pissa_niter_N").

A new scheme is a `@register_init` subclass of `Init`; `INITS.remove(NAME)` (or `with INITS.scoped():`)
undoes a registration.
"""
from __future__ import annotations

import math
import re

import torch
from torch import nn

from loralab.core.registry import Registry

INITS = Registry("init")      # name -> Init instance


def register_init(cls):
    """Class decorator: register one instance of an Init subclass under its `name`."""
    INITS.add(cls.name, cls())
    return cls


class Init:
    name = ""
    supports_slices = True
    changes_base_weight = False
    peft_value: bool | str | None = None

    def accepts_peft(self, value) -> bool:
        """True when PEFT's `init_lora_weights=value` names this scheme."""
        if isinstance(value, bool) or isinstance(self.peft_value, bool):
            return value is self.peft_value
        return isinstance(value, str) and value.lower() == self.peft_value

    def check(self, layer, f) -> None:
        pass

    def init(self, layer, f) -> None:
        raise NotImplementedError

    def base_offset(self, f) -> tuple[torch.Tensor, torch.Tensor] | None:
        return None


@register_init
class Kaiming(Init):
    """A ~ Kaiming-uniform(a=√5) (the reference implementation's choice), B = 0."""
    name = "kaiming"
    peft_value = True           # PEFT's default, the same A and B

    def init(self, layer, f) -> None:
        nn.init.kaiming_uniform_(f.A, a=math.sqrt(5))
        nn.init.zeros_(f.B)


@register_init
class Gaussian(Init):
    """A ~ N(0, 1/r²) (the paper's "random Gaussian"; std 1/r keeps A·x of order one), B = 0."""
    name = "gaussian"
    peft_value = "gaussian"

    def init(self, layer, f) -> None:
        nn.init.normal_(f.A, std=1.0 / f.r)
        nn.init.zeros_(f.B)


@register_init
class PiSSA(Init):
    """PiSSA (Meng et al. 2024): W0 = U·S·Vᵀ; B = U_r·√S_r/√s, A = √S_r·V_rᵀ/√s, W0 ← W0 - s·B·A (the residual).

    The adapter then starts on W0's principal directions and the layer's output is unchanged.
    The initial factors are kept (as buffers A0, B0): they are the offset from the original W0.
    """
    name = "pissa"
    supports_slices = False
    changes_base_weight = True
    peft_value = "pissa"

    def accepts_peft(self, value) -> bool:
        # PEFT's "pissa_niter_N" approximates the SVD with N subspace iterations; loralab computes it exactly.
        return super().accepts_peft(value) or (isinstance(value, str)
                                               and re.fullmatch(r"pissa_niter_\d+", value) is not None)

    def check(self, layer, f) -> None:
        d, k = layer.kind.shape(layer.base_layer)
        if f.r > min(d, k):
            raise ValueError(f"PiSSA needs r <= min(d, k) = {min(d, k)} singular vectors, got r={f.r}; "
                             f"lower r or use init='kaiming'")

    def init(self, layer, f) -> None:
        W = layer.kind.weight_matrix(layer.base_layer).detach().float()
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        root = (S[: f.r] / f.scale).sqrt()
        with torch.no_grad():
            f.B.copy_(U[:, : f.r] * root)
            f.A.copy_(root[:, None] * Vh[: f.r])
            layer.add_to_weight(-f.delta_weight())
        f.register_buffer("A0", f.A.detach().clone())
        f.register_buffer("B0", f.B.detach().clone())

    def base_offset(self, f) -> tuple[torch.Tensor, torch.Tensor] | None:
        return f.A0, f.B0
