"""Variants: plug-ins that change how an adapter's ΔW is applied, with fixed hooks.

Hooks (all receive the LoraLayer and the adapter's LoraFactors):
  check(layer, f)     refuse layers the variant cannot handle (raise ValueError); nothing has changed yet
  init(layer, f)      give the extra parameters their starting values, after the factors are initialised
  forward(layer, f, x, out) -> out   add the adapter's contribution to the base output
  merge / unmerge     fold the adapter into W0 and take it out again

What a variant declares instead of being special-cased elsewhere:
  extra_parameters(d, k)  {attribute: shape} of its extra trainable tensors, created on the factors with
                          the factors (so injection, parameter counts and the optimizer see them)
  peft_keys               {attribute: key after the module path in PEFT files}, how they are saved and loaded
  peft_flag               the PEFT LoraConfig flag that selects the variant ("use_dora"), None if PEFT has none
  combinable              its whole effect is ΔW = s·B·A, so `combine_adapters` may sum it with others
  supports_slices         it works on the factors of fused-projection slices
  per_row                 its forward treats batch rows independently, so rows of one batch may use
                          different adapters (loralab.per_row_adapters; loralab.core.rows)

The plain variant is LoRA itself. A new variant is a `@register_variant` subclass, chosen by name with
`LoraConfig(variant=NAME)`; `VARIANTS.remove(NAME)` (or `with VARIANTS.scoped():`) undoes a registration.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from loralab.core.registry import Registry

VARIANTS = Registry("variant")      # name -> Variant instance


def register_variant(cls):
    """Class decorator: register one instance of a Variant subclass under its `name`."""
    VARIANTS.add(cls.name, cls())
    return cls


@register_variant
class Variant:
    """Plain LoRA: h = W0·x + s·B·A·dropout(x)."""
    name = "lora"
    peft_flag: str | None = None
    peft_keys: dict[str, str] = {}
    combinable = True
    supports_slices = True
    per_row = True

    def extra_parameters(self, d: int, k: int) -> dict[str, tuple[int, ...]]:
        return {}

    def check(self, layer, f) -> None:
        pass

    def init(self, layer, f) -> None:
        pass

    def forward(self, layer, f, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return layer.add_lora(f, f.dropout(x), out)

    def merge(self, layer, f) -> None:
        layer.add_to_weight(f.delta_weight())

    def unmerge(self, layer, f) -> None:
        layer.add_to_weight(-f.delta_weight())


PLAIN = VARIANTS["lora"]


def _row_norm(W: torch.Tensor) -> torch.Tensor:
    """‖W[i, :]‖₂ for each output row i of a (d, k) matrix -> (d,)."""
    return torch.linalg.vector_norm(W, dim=1)


@register_variant
class DoRA(Variant):
    """DoRA (Liu et al. 2024): split the adapted weight into magnitude and direction,

        W' = m ⊙ (W0 + s·B·A) / ‖W0 + s·B·A‖      (norms per output row; m: (d,) trainable)

    m starts at ‖W0 + s·B·A‖ so the output is unchanged at init. As in the paper (§4.3), the norm is
    treated as a constant in backward, which saves memory and barely changes the gradients.
    """
    name = "dora"
    peft_flag = "use_dora"
    peft_keys = {"magnitude": "lora_magnitude_vector"}
    combinable = False            # W' is not W0 + ΔW: adapters do not add up
    supports_slices = False       # the norms are over whole output rows of W0
    per_row = True                # exact per row: its own forward runs on the rows that use it

    def extra_parameters(self, d: int, k: int) -> dict[str, tuple[int, ...]]:
        return {"magnitude": (d,)}

    def check(self, layer, f) -> None:
        if not layer.kind.is_linear:
            raise ValueError(f"DoRA is supported on linear layers only, not on {layer.kind.name}")

    def _gain(self, layer, f) -> torch.Tensor:
        """m / ‖W0 + ΔW‖ per output row, (d,), with the norm detached (formed in the factors' precision)."""
        norm = _row_norm(self._adapted(layer, f)).detach()
        return f.magnitude / norm

    @staticmethod
    def _adapted(layer, f) -> torch.Tensor:
        """W0 + ΔW in the matrix view, in the wider of W0's and the factors' dtypes."""
        delta = f.delta_weight()
        W0 = layer.kind.weight_matrix(layer.base_layer)
        return W0.to(torch.promote_types(W0.dtype, delta.dtype)) + delta

    def init(self, layer, f) -> None:
        with torch.no_grad():
            f.magnitude.copy_(_row_norm(self._adapted(layer, f)))

    def forward(self, layer, f, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        # out = W0·x + b; the adapted layer computes g·(W0 + ΔW)·x + b, i.e. out + (g - 1)·W0·x + g·ΔW·x.
        g = self._gain(layer, f)
        x_d = f.dropout(x)
        W0 = layer.kind.weight_matrix(layer.base_layer)
        # W0·dropout(x) is recomputed: `out` may already hold other adapters' contributions. On a 16-bit base
        # the sum is formed in the gain's (factors') dtype and rounded once to out's.
        extra = (g - 1) * F.linear(x_d.to(W0.dtype), W0) + g * layer.lora_output(f, x_d)
        return (out + extra).to(out.dtype)

    def merge(self, layer, f) -> None:
        with torch.no_grad():
            g = self._gain(layer, f)
            W0 = layer.kind.weight_matrix(layer.base_layer)
            merged = g[:, None] * (W0 + f.delta_weight())
            f.register_buffer("merged_gain", g.clone(), persistent=False)
            layer.add_to_weight(merged - W0)

    def unmerge(self, layer, f) -> None:
        with torch.no_grad():
            W = layer.kind.weight_matrix(layer.base_layer)
            W0 = W / f.merged_gain[:, None] - f.delta_weight()
            layer.add_to_weight(W0 - W)
            del f.merged_gain
