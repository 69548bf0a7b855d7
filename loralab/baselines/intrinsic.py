"""Random-subspace training for intrinsic dimension (Li et al. 2018; Aghajanyan et al. 2020):
θ = θ0 + P·z, with θ the model's D parameter values flattened into one vector, P a fixed D × d Fastfood
projection (loralab.baselines.fastfood) and z (d,) the only trained values, starting at 0 (so training
starts exactly at the pretrained model).

    model = METHODS["intrinsic"](model, d=200)    # in place; model.intrinsic_subspace.z is all that trains
    # or TrainConfig(method="intrinsic", method_options={"d": 200}) for loralab's trainer

How the forward sees θ0 + P·z: every parameter tensor gets a torch parametrization (torch.nn.utils.
parametrize) returning original + its slice of P·z. P·z itself is computed once per forward pass of the
model (a forward pre-hook marks it stale whenever gradients are on) and split into the per-tensor slices
with one `split`, so backward sums the slices' gradients into one D-vector and runs the projection's
backward once. Under torch.no_grad (evaluation) P·z is cached until z changes.

The projection covers all parameters, the classifier head included (as in Li et al.: everything lives in
the subspace), unless `train_head=True`, which leaves the head outside the subspace and trains it
directly like the other baselines do (then the head's values add to d). The pretrained values θ0 stay
in the model, frozen; P is rebuilt from `seed`, so the saved z and the options reproduce the model.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from loralab.baselines.common import freeze_all, head_modules
from loralab.baselines.common import train_head as unfreeze_head
from loralab.baselines.fastfood import FastfoodProjection
from loralab.core.targeting import matches
from loralab.errors import LoraLabError

SUBSPACE_NAME = "intrinsic_subspace"


class IntrinsicSubspace(nn.Module):
    """z (d,) and the projection P (D × d); `offsets()` gives P·z split per parameter tensor.

    sizes: the number of values of each projected tensor, in order (their sum is D)."""

    def __init__(self, sizes: Sequence[int], d: int, seed: int = 0) -> None:
        super().__init__()
        self.sizes = list(sizes)
        self.z = nn.Parameter(torch.zeros(d))
        self.projection = FastfoodProjection(sum(self.sizes), d, seed)
        self._pieces: tuple[torch.Tensor, ...] | None = None
        self._key: tuple[int, bool] | None = None

    def invalidate(self) -> None:
        """Forget P·z; the next access recomputes it (and builds a fresh autograd graph)."""
        self._pieces, self._key = None, None

    def offsets(self) -> tuple[torch.Tensor, ...]:
        """P·z as one tensor per projected parameter (flat views of one D-vector)."""
        key = (self.z._version, torch.is_grad_enabled())
        if self._pieces is None or self._key != key:
            self._pieces = torch.split(self.projection(self.z), self.sizes)
            self._key = key
        return self._pieces


class SubspaceOffset(nn.Module):
    """Parametrization of one tensor: original + (P·z)[its slice], reshaped to the tensor's shape."""

    def __init__(self, subspace: IntrinsicSubspace, index: int) -> None:
        super().__init__()
        self._subspace = [subspace]   # a list, so the subspace is not registered twice as a child module
        self.index = index

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        return original + self._subspace[0].offsets()[self.index].view_as(original).to(original.dtype)


def _refresh_when_training(subspace: IntrinsicSubspace):
    def hook(module: nn.Module, args: tuple) -> None:
        if torch.is_grad_enabled():   # each forward with gradients needs its own graph through P·z
            subspace.invalidate()
    return hook


def subspace_of(model: nn.Module) -> IntrinsicSubspace | None:
    """The model's IntrinsicSubspace, or None."""
    found = getattr(model, SUBSPACE_NAME, None)
    return found if isinstance(found, IntrinsicSubspace) else None


def _excluded(model: nn.Module, rules: Sequence[str]) -> set[int]:
    """ids of the parameters of the modules the rules select (each rule must select something)."""
    found: set[int] = set()
    for rule in rules:
        hits = [m for n, m in model.named_modules() if n and matches(n, rule)]
        if not hits:
            raise LoraLabError(f"exclude rule {rule!r} matches no module; use names from model.named_modules()")
        found.update(id(p) for m in hits for p in m.parameters())
    return found


def prepare_intrinsic(model: nn.Module, d: int, seed: int = 0, train_head: bool = False,
                      head: Sequence[str] | None = None, exclude: Sequence[str] = ()) -> nn.Module:
    """Make z (d values) the only trained values of `model` (plus the head when train_head): θ = θ0 + P·z.

    d: subspace dimension (1 ≤ d ≤ D). seed: draw of the Fastfood projection. train_head: keep the task
    head out of the subspace and train it directly. exclude: module-name rules (as for LoRA targets) whose
    parameters stay frozen outside the subspace, e.g. ["word_embeddings"]. Returns the same model object,
    forward unchanged."""
    if not isinstance(d, int) or isinstance(d, bool) or d < 1:
        raise LoraLabError(f"intrinsic dimension d must be a positive integer, got {d!r}")
    if subspace_of(model) is not None:
        raise LoraLabError("this model already has an intrinsic subspace; prepare a fresh copy of the base model")
    every = [id(p) for _, p in model.named_parameters(remove_duplicate=False)]
    if len(every) != len(set(every)):
        raise LoraLabError("this model ties some weights (e.g. input and output embeddings); the intrinsic "
                           "subspace method supports models without tied weights only")
    skip = _excluded(model, exclude)
    if train_head:
        skip |= {id(p) for m in head_modules(model, head).values() for p in m.parameters()}
    freeze_all(model)
    targets = [(name, p) for name, p in model.named_parameters() if id(p) not in skip]
    total = sum(p.numel() for _, p in targets)
    if d > total:
        raise LoraLabError(f"d = {d} exceeds the {total:,} values it would project onto; choose d ≤ {total:,}")
    subspace = IntrinsicSubspace([p.numel() for _, p in targets], d, seed).to(next(model.parameters()).device)
    for index, (name, _) in enumerate(targets):
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        # unsafe: skip parametrize's trial call, which would compute the whole projection once per tensor
        parametrize.register_parametrization(owner, attr, SubspaceOffset(subspace, index), unsafe=True)
    model.add_module(SUBSPACE_NAME, subspace)
    model.register_forward_pre_hook(_refresh_when_training(subspace))
    if train_head:
        unfreeze_head(model, head)
    return model
