"""How `combine_adapters` merges adapters: PEFT's `add_weighted_adapter` methods, one registered entry each.

A method is a `MergeMethod` registered in `MERGE_METHODS` (a `loralab.core.registry.Registry`); it says on what
its tensor merge works and with which function:

  on="cat"      the exact weighted sum Σ w_i·ΔW_i: the factors concatenated (rank Σ r_i), PEFT's "cat"
  on="factors"  A and B merged separately, each adapter's A weighted by sign(w·s)·sqrt(|w·s|) and its B by
                sqrt(|w·s|) (s: its scale alpha/r), in PEFT's file layout; equal ranks; the result has that rank
                and scale 1. "linear", "ties", "dare_linear", "dare_ties", "magnitude_prune" (approximations:
                the product of merged factors is not the merged product)
  on="delta"    the ΔW_i (in the layer's storage layout, as PEFT's get_delta_weight gives them) merged, then
                cut to rank `svd_rank` (default: the largest rank) by SVD: the "_svd" methods and "svd"

The merge functions are PEFT's (peft.utils.merge_utils) on the same tensors in the same order, so a seeded DARE
draws the same masks as PEFT after `torch.manual_seed(seed)`: first, as PEFT creates and initialises the new
adapter on every layer (`draw_as_peft_creates`, then the init), then per adapted layer in module order each
adapter's A and (factor methods) each adapter's B. With one adapter every method is "linear", as in PEFT.

Adding a method is one `register_merge_method(MergeMethod(name, on, merge, uses_density, uses_sign))` whose
`merge(tensors, weights, options)` returns the merged tensor.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from loralab.core.registry import Registry
from loralab.errors import LoraLabError, choose

SIGN_METHODS = ("total", "frequency")


@dataclass(frozen=True)
class MergeOptions:
    """The knobs of PEFT's add_weighted_adapter. density: fraction of entries kept in [0, 1] (pruning methods);
    majority_sign_method: "total" (sum of values) or "frequency" (count of signs) elects TIES' sign;
    svd_rank: the rank of "_svd" results (None: the largest rank combined); svd_clamp: a quantile in [0, 1]
    clamping the SVD factors (None: none); seed: a torch seed for DARE's masks (None: torch's global generator)."""
    density: float | None = None
    majority_sign_method: str = "total"
    svd_rank: int | None = None
    svd_clamp: float | None = None
    seed: int | None = None


Merge = Callable[[list[torch.Tensor], torch.Tensor, MergeOptions], torch.Tensor]


@dataclass(frozen=True)
class MergeMethod:
    """One combine method: `on` is "cat", "factors" or "delta" (module docstring); `merge` merges a list of
    equally shaped tensors with one weight each; uses_density / uses_sign: which options it reads."""
    name: str
    on: str
    merge: Merge | None = None
    uses_density: bool = False
    uses_sign: bool = False


MERGE_METHODS = Registry("combine method")


def register_merge_method(method: MergeMethod) -> MergeMethod:
    if method.on not in ("cat", "factors", "delta"):
        raise ValueError(f"merge method {method.name!r}: on must be 'cat', 'factors' or 'delta', not {method.on!r}")
    MERGE_METHODS.add(method.name, method)
    return method


def checked_method(name: str, options: MergeOptions, count: int) -> MergeMethod:
    """The registered method `name` (with one adapter: "linear", as PEFT does) with its options checked."""
    method = MERGE_METHODS.lookup(name)
    if method.on != "cat" and count == 1:
        method = MERGE_METHODS["linear"]
    if method.uses_density:
        d = options.density
        if not (isinstance(d, (int, float)) and not isinstance(d, bool) and 0.0 <= d <= 1.0):
            raise LoraLabError(f"combine method {name!r} needs density, the fraction of entries kept, in [0, 1]; "
                               f"got {d!r}")
    if method.uses_sign:
        choose(options.majority_sign_method, SIGN_METHODS, "majority_sign_method")
    if options.svd_rank is not None and not (isinstance(options.svd_rank, int) and options.svd_rank > 0):
        raise LoraLabError(f"svd_rank must be a positive integer or None, got {options.svd_rank!r}")
    if options.svd_clamp is not None and not 0.0 <= options.svd_clamp <= 1.0:
        raise LoraLabError(f"svd_clamp must be a quantile in [0, 1] or None, got {options.svd_clamp!r}")
    return method


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """DARE's draws from torch's generator seeded with `seed` (as after torch.manual_seed(seed)), the global
    generator's state restored after; seed None: the global generator, advanced as PEFT advances it."""
    if seed is None:
        yield
        return
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


# ------------------------------------------------------------------------------------------------
# The merges (PEFT's merge_utils, same operations in the same order)
# ------------------------------------------------------------------------------------------------
def _weighted(tensors: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return tensors * weights.view(weights.shape + (1,) * (tensors.dim() - weights.dim()))


def _magnitude_pruned(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """The `density` fraction of entries largest in magnitude kept, the rest zero."""
    if density >= 1:
        return tensor
    mask = torch.zeros_like(tensor).reshape(-1)
    mask[torch.topk(tensor.abs().reshape(-1), k=int(density * tensor.numel()), largest=True)[1]] = 1
    return tensor * mask.reshape(tensor.shape)


def _randomly_pruned(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """DARE: each entry kept with probability `density` and rescaled by 1/density (one Bernoulli draw per entry)."""
    if density >= 1:
        return tensor
    return tensor * torch.bernoulli(torch.full_like(tensor, density)) / density


def _disjoint_mean(tensors: torch.Tensor, weights: torch.Tensor, sign_method: str) -> torch.Tensor:
    """TIES' elected sign (per entry, of the sum or of the count of signs) and the mean of the weighted entries
    that agree with it."""
    sign = tensors.sign()
    magnitude = tensors.sum(dim=0) if sign_method == "total" else sign.sum(dim=0)
    agree = sign == torch.where(magnitude >= 0, 1, -1)
    return (_weighted(tensors, weights) * agree).sum(dim=0) / torch.clamp(agree.sum(dim=0), min=1.0)


def linear(tensors: list[torch.Tensor], weights: torch.Tensor, options: MergeOptions) -> torch.Tensor:
    """Σ w_i·T_i (task arithmetic)."""
    return _weighted(torch.stack(tensors), weights).sum(dim=0)


def magnitude_prune(tensors: list[torch.Tensor], weights: torch.Tensor, options: MergeOptions) -> torch.Tensor:
    """Σ w_i·prune(T_i): each tensor keeps its largest `density` fraction of entries."""
    return linear([_magnitude_pruned(t, options.density) for t in tensors], weights, options)


def ties(tensors: list[torch.Tensor], weights: torch.Tensor, options: MergeOptions) -> torch.Tensor:
    """TIES: trim to the largest entries, elect a sign per entry, average the weighted entries agreeing with it."""
    pruned = torch.stack([_magnitude_pruned(t, options.density) for t in tensors])
    return _disjoint_mean(pruned, weights, options.majority_sign_method)


def dare_linear(tensors: list[torch.Tensor], weights: torch.Tensor, options: MergeOptions) -> torch.Tensor:
    """DARE: drop entries at random (keep `density`, rescale), then Σ w_i·T_i."""
    return linear([_randomly_pruned(t, options.density) for t in tensors], weights, options)


def dare_ties(tensors: list[torch.Tensor], weights: torch.Tensor, options: MergeOptions) -> torch.Tensor:
    """DARE's random drop, then TIES' sign election and disjoint mean."""
    pruned = torch.stack([_randomly_pruned(t, options.density) for t in tensors])
    return _disjoint_mean(pruned, weights, options.majority_sign_method)


register_merge_method(MergeMethod("cat", "cat"))
for _name, _merge, _density, _sign in (("linear", linear, False, False), ("ties", ties, True, True),
                                       ("dare_linear", dare_linear, True, False), ("dare_ties", dare_ties, True, True),
                                       ("magnitude_prune", magnitude_prune, True, False)):
    register_merge_method(MergeMethod(_name, "factors", _merge, _density, _sign))
    register_merge_method(MergeMethod("svd" if _name == "linear" else f"{_name}_svd", "delta", _merge, _density, _sign))


# ------------------------------------------------------------------------------------------------
# One layer
# ------------------------------------------------------------------------------------------------
@dataclass
class Part:
    """One adapter on one layer: A (r, k), B (d, r) in the matrix view, its scale, and its combine weight."""
    A: torch.Tensor
    B: torch.Tensor
    scale: float
    weight: float


def new_rank(method: MergeMethod, parts: list[Part], options: MergeOptions, layer_name: str) -> int:
    """The combined adapter's rank on one layer: "cat" the sum of the ranks; "factors" their one rank (refused
    when they differ); "delta" `svd_rank` (default: the largest rank), at most min(d, k)."""
    ranks = [p.A.shape[0] for p in parts]
    if method.on == "cat":
        return sum(ranks)
    if method.on == "factors":
        if len(set(ranks)) > 1:
            raise LoraLabError(f"{layer_name}: combine method {method.name!r} merges A and B entry by entry and "
                               f"needs adapters of one rank, got ranks {sorted(set(ranks))}; use 'cat' (exact) or an "
                               f"'_svd' method")
        return ranks[0]
    return min(options.svd_rank or max(ranks), parts[0].B.shape[0], parts[0].A.shape[1])


def draw_as_peft_creates(kind, layer, rank: int, d: int, k: int) -> None:
    """Advance torch's CPU generator as PEFT does when add_weighted_adapter creates the new adapter's A and B
    modules on a layer (nn.Linear / nn.ConvNd, default Kaiming-uniform weights, before the adapter's own init),
    so that DARE's masks drawn after them equal PEFT's for the same seed. Kinds whose PEFT factors are bare
    parameters (embeddings: lora_embedding_A/B, drawn from randn) are left alone."""
    if not all(name.endswith(".weight") for name in kind.peft_names):
        return
    for t in kind.to_peft(layer, torch.empty(rank, k), torch.empty(d, rank)):
        torch.nn.init.kaiming_uniform_(t, a=math.sqrt(5))


def merge_factors(method: MergeMethod, parts: list[Part], options: MergeOptions, kind, layer) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) in the matrix view, to be used with scale 1, for one layer: A and B merged separately in PEFT's
    file layout (the layer's kind converts), each adapter's w·s split between them as PEFT splits it."""
    signed = [math.copysign(math.sqrt(abs(p.weight * p.scale)), p.weight * p.scale) for p in parts]
    unsigned = [math.sqrt(abs(p.weight * p.scale)) for p in parts]
    peft_form = [kind.to_peft(layer, p.A, p.B) for p in parts]
    dtype = parts[0].A.dtype
    A = method.merge([a for a, _ in peft_form], torch.tensor(signed).to(parts[0].A.device), options).to(dtype)
    B = method.merge([b for _, b in peft_form], torch.tensor(unsigned).to(parts[0].B.device), options).to(dtype)
    return kind.from_peft(A, B)


def merge_deltas(method: MergeMethod, parts: list[Part], options: MergeOptions, kind, layer) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) in the matrix view, to be used with scale 1, for one layer: the ΔW_i merged in the layer's storage
    layout, then cut to rank `svd_rank` (default: the largest rank) by SVD, B = U·S, A = Vh."""
    d, k = parts[0].B.shape[0], parts[0].A.shape[1]
    deltas = [kind.to_weight_layout(layer, p.scale * (p.B @ p.A)) for p in parts]
    weights = torch.tensor([p.weight for p in parts]).to(deltas[0].device)
    merged = method.merge(deltas, weights, options)
    positions = kind.to_weight_layout(layer, torch.arange(d * k, device=merged.device).reshape(d, k)).reshape(-1)
    delta = torch.empty(d * k, dtype=merged.dtype, device=merged.device)
    delta[positions] = merged.reshape(-1)
    U, S, Vh = torch.linalg.svd(delta.reshape(d, k), full_matrices=True)
    rank = new_rank(method, parts, options, "")
    B, A = U[:, :rank] @ torch.diag(S[:rank]), Vh[:rank, :]
    if options.svd_clamp is not None:
        high = torch.quantile(torch.cat([B.flatten(), A.flatten()]), options.svd_clamp)
        B, A = B.clamp(-high, high), A.clamp(-high, high)
    return A, B


MERGES_ON = {"factors": merge_factors, "delta": merge_deltas}
