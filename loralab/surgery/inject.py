"""Model surgery: find the target layers, wrap them in LoraLayer, freeze everything else.

    plan_injection(model, config) -> [PlannedModule]   a dry run: what would be adapted, shapes, params
    inject(model, config, adapter)                      the surgery itself (in place)
    trainable_summary(model)                            "trainable 294,912 / 22,713,216 (1.30%)"
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from loralab.adapters.state import TrainableCopy, adapter_state, lora_layers, set_trainable
from loralab.core.kinds import kind_of
from loralab.core.lora import LoraFactors, LoraLayer, SlicedLoraFactors
from loralab.core.variants import VARIANTS
from loralab.errors import LoraLabError
from loralab.surgery.config import LoraConfig
from loralab.surgery.presets import preset_for
from loralab.surgery.targeting import ALL_LINEAR, first_match, matches, nearest_names, output_head_names

_LINEAR_KINDS = ("linear", "conv1d-transposed")


@dataclass(frozen=True)
class PlannedModule:
    """One layer that LoRA would adapt: ΔW (d_out × d_in) of rank r, num_params trainable values."""
    name: str
    kind: str
    d_out: int
    d_in: int
    r: int
    alpha: float
    num_params: int
    slices: tuple[bool, ...] | None = None


def resolve_config(model: nn.Module, config: LoraConfig) -> LoraConfig:
    """Fill targets (and GPT-2's fused slices) from the architecture preset when none are given."""
    if config.targets is not None:
        return config
    preset = preset_for(model)
    data = config.to_dict()
    names = list(_candidates(model))
    targets = preset.targets
    if preset.renamed_targets and not any(matches(n, targets[0]) for n in names):
        targets = preset.renamed_targets
    data["targets"] = list(targets)
    data["fused_slices"] = {**preset.fused_slices, **config.fused_slices}
    return LoraConfig(**data)


def _base_module(module: nn.Module) -> nn.Module:
    return module.base_layer if isinstance(module, LoraLayer) else module


# Attribute names of loralab's own wrappers: their insides are never targets themselves.
_INTERNAL = {"base_layer", "lora_adapters", "trainable_copies", "original_module"}


def _candidates(model: nn.Module) -> dict[str, nn.Module]:
    """Every adaptable layer by name; a layer already wrapped by an earlier adapter counts under its own name."""
    found = {}
    for name, module in model.named_modules():
        if _INTERNAL.intersection(name.split(".")):
            continue
        base = _base_module(module)
        if kind_of(base) is not None:
            found[name] = base
    return found


def select_modules(model: nn.Module, config: LoraConfig) -> dict[str, nn.Module]:
    """{name: base layer} for every module the (resolved) config adapts; strict mode checks each rule."""
    config = resolve_config(model, config)
    candidates = _candidates(model)
    if config.targets == ALL_LINEAR:
        heads = output_head_names(model)
        chosen = {n: m for n, m in candidates.items()
                  if kind_of(m).name in _LINEAR_KINDS and n not in heads}
    else:
        chosen = {n: m for n, m in candidates.items() if first_match(n, config.targets) is not None}
        if config.strict:
            all_names = [n for n, _ in model.named_modules() if n]
            for rule in config.targets:
                if not any(matches(n, rule) for n in candidates):
                    near = nearest_names(rule, list(candidates) or all_names)
                    hint = f"; nearest module names: {', '.join(near)}" if near else ""
                    what = "adaptable layer" if any(matches(n, rule) for n in all_names) else "module"
                    raise LoraLabError(f"target {rule!r} matches no {what} in {type(model).__name__}{hint}")
    chosen = {n: m for n, m in chosen.items() if first_match(n, config.exclude) is None}
    if not chosen:
        raise LoraLabError(f"LoRA config selects no layer of {type(model).__name__} (targets={config.targets}, "
                           f"exclude={config.exclude}); run `loralab inspect` to see the module names")
    return chosen


def _make_factors(name: str, layer_module: nn.Module, config: LoraConfig) -> LoraFactors:
    kind = kind_of(layer_module)
    d, k = kind.shape(layer_module)
    r, alpha = config.rank_for(name), config.alpha_for(name)
    variant = VARIANTS["dora" if config.dora else "lora"]
    common = dict(dropout=config.dropout, rslora=config.rslora, variant=variant)
    slices = config.slices_for(name)
    if slices is not None:
        return SlicedLoraFactors(d, k, r, alpha, tuple(slices), **common)
    return LoraFactors(d, k, r, alpha, **common)


def plan_injection(model: nn.Module, config: LoraConfig) -> list[PlannedModule]:
    """Dry run: every layer `inject` would adapt, with shapes and trainable parameter counts.

    Builds no parameters on the model; works on a model created on the meta device."""
    config = resolve_config(model, config)
    plan = []
    for name, module in select_modules(model, config).items():
        kind = kind_of(module)
        d, k = kind.shape(module)
        r = config.rank_for(name)
        slices = config.slices_for(name)
        if slices is None:
            params = r * (d + k)
        else:
            n_en = sum(slices)
            params = n_en * r * (d // len(slices) + k)
        if config.dora:
            params += d
        plan.append(PlannedModule(name, kind.name, d, k, r, config.alpha_for(name), params,
                                  tuple(slices) if slices else None))
    return plan


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def inject(model: nn.Module, config: LoraConfig, adapter: str = "default") -> nn.Module:
    """Add a LoRA adapter named `adapter` to `model` in place and make it the active, trainable one.

    Layers already wrapped by an earlier adapter get a second set of factors; the base weights are
    frozen; only this adapter's factors (plus biases per `config.bias` and its copies of
    `config.modules_to_save`) require grad. Returns the same model object.
    """
    if not isinstance(config, LoraConfig):
        raise LoraLabError(f"config must be a loralab.LoraConfig, not {type(config).__name__}")
    if not adapter or not isinstance(adapter, str) or "." in adapter:
        raise LoraLabError(f"adapter name must be a non-empty string without dots, got {adapter!r}")
    state = adapter_state(model, create=True)
    if adapter in state.configs:
        raise LoraLabError(f"adapter {adapter!r} already exists; delete it first or choose another name")
    config = resolve_config(model, config)
    selected = select_modules(model, config)
    to_save = _select_modules_to_save(model, config)

    for name, base in selected.items():
        module = model.get_submodule(name)
        if not isinstance(module, LoraLayer):
            module = LoraLayer(base, kind_of(base))
            _set_submodule(model, name, module)
        try:
            module.add_adapter(adapter, _make_factors(name, base, config), config.init)
        except ValueError as exc:
            raise LoraLabError(f"cannot adapt {name}: {exc}") from None
    for name, module in to_save.items():
        if not isinstance(module, TrainableCopy):
            module = TrainableCopy(module)
            _set_submodule(model, name, module)
        module.add_copy(adapter)

    state.configs[adapter] = config
    set_trainable(model, adapter)
    return model


def _select_modules_to_save(model: nn.Module, config: LoraConfig) -> dict[str, nn.Module]:
    chosen = {}
    for rule in config.modules_to_save:
        hits = {n: m for n, m in model.named_modules() if matches(n, rule) and not _INTERNAL.intersection(n.split("."))}
        if not hits and config.strict:
            near = nearest_names(rule, [n for n, _ in model.named_modules() if n])
            hint = f"; nearest module names: {', '.join(near)}" if near else ""
            raise LoraLabError(f"modules_to_save entry {rule!r} matches no module{hint}")
        chosen.update(hits)
    # A module nested in another chosen one is saved with its parent.
    return {n: m for n, m in chosen.items() if not any(n.startswith(p + ".") for p in chosen if p != n)}


def trainable_summary(model: nn.Module) -> str:
    """One line: trainable vs total parameters (frozen base + all adapters), e.g.
    'trainable params: 294,912 || all params: 22,713,216 || trainable: 1.2984%'."""
    trainable = total = 0
    seen = set()
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    pct = 100.0 * trainable / total if total else 0.0
    return f"trainable params: {trainable:,} || all params: {total:,} || trainable: {pct:.4f}%"


__all__ = ["PlannedModule", "inject", "plan_injection", "resolve_config", "select_modules", "trainable_summary",
           "lora_layers"]
