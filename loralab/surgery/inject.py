"""Model surgery: find the target layers, wrap them in LoraLayer, freeze everything else.

    plan_injection(model, config) -> [PlannedModule]   a dry run: what would be adapted, shapes, params
    inject(model, config, adapter)                      the surgery itself (in place)
    trainable_summary(model)                            "trainable 294,912 / 22,713,216 (1.30%)"
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from loralab.adapters.state import (STATE_ATTR, TrainableCopy, adapter_state, base_modules, check_nothing_else_merged,
                                    lora_layers, model_modules, set_trainable)
from loralab.core.inits import INITS
from loralab.core.kinds import kind_of
from loralab.core.lora import LoraFactors, LoraLayer, SlicedLoraFactors, check_scale
from loralab.core.targeting import ALL_LINEAR, compile_rules, layer_index, matches, nearest_names, output_head_names
from loralab.core.variants import VARIANTS
from loralab.errors import LoraLabError
from loralab.models.architectures import task_head_modules
from loralab.precision import available_memory
from loralab.surgery.config import LoraConfig
from loralab.surgery.peft_names import PEFT_TASK_HEADS
from loralab.surgery.presets import preset_for

# Called with the model after every successful inject. Surgery cannot import formats (packages import one way),
# so loralab.formats.peft registers the hook that gives an adapted model PEFT's save_pretrained.
INJECT_HOOKS: list[Callable[[nn.Module], None]] = []


@dataclass(frozen=True)
class PlannedModule:
    """One layer that LoRA would adapt: ΔW (d_out × d_in) of rank r, num_params trainable values
    (the variant's extra tensors included). A fused projection adapted slice by slice has `slices`
    (which slices) and `slice_widths` (each slice's output rows)."""
    name: str
    kind: str
    d_out: int
    d_in: int
    r: int
    alpha: float
    num_params: int
    slices: tuple[bool, ...] | None = None
    slice_widths: tuple[int, ...] | None = None


def resolve_config(model: nn.Module, config: LoraConfig) -> LoraConfig:
    """Fill targets (and GPT-2's fused slices) from the architecture preset when none are given, and add the
    task head to modules_to_save when the task_type asks for it (as PEFT's task classes do)."""
    heads = [h for h in task_heads(model, config.task_type) if h not in config.modules_to_save]
    if config.targets is not None and not heads:
        return config
    data = config.to_dict()
    if config.targets is None:
        preset = preset_for(model)
        data["targets"] = list(preset.targets)
        data["fused_slices"] = {**preset.fused_slices, **config.fused_slices}
    data["modules_to_save"] = [*config.modules_to_save, *heads]
    return LoraConfig(**data)


def task_heads(model: nn.Module, task_type: str | None) -> list[str]:
    """The head modules PEFT's class for `task_type` trains and saves (e.g. SEQ_CLS: the classifier): the
    family's heads from the architecture table, else PEFT's names ("classifier", "score") the model has."""
    names = PEFT_TASK_HEADS.get(task_type, ())
    if not names:
        return []
    own = [n for n, _ in base_modules(model)]
    table = list(task_head_modules(model)) if task_type == "SEQ_CLS" else []
    return [h for h in table or names if any(matches(n, h) for n in own)]


def _candidates(model: nn.Module) -> dict[str, nn.Module]:
    """Every adaptable layer by name; a layer already wrapped by an earlier adapter counts under its own name."""
    return {name: module for name, module in base_modules(model) if kind_of(module) is not None}


def select_modules(model: nn.Module, config: LoraConfig) -> dict[str, nn.Module]:
    """{name: base layer} for every module the (resolved) config adapts; strict mode checks each rule."""
    config = resolve_config(model, config)
    candidates = _candidates(model)
    if config.targets == ALL_LINEAR:
        heads = output_head_names(model)
        chosen = {n: m for n, m in candidates.items() if kind_of(m).is_linear and n not in heads}
    else:
        targets = compile_rules(tuple(config.targets))
        chosen = {n: m for n, m in candidates.items() if targets.first(n) is not None}
        if config.strict:
            hit = set().union(*(targets.matching(n) for n in candidates))
            all_names = [n for n, _ in base_modules(model)]
            for i, rule in enumerate(config.targets):
                if i not in hit:
                    near = nearest_names(rule, list(candidates) or all_names)
                    hint = f"; nearest module names: {', '.join(near)}" if near else ""
                    what = "adaptable layer" if any(matches(n, rule) for n in all_names) else "module"
                    raise LoraLabError(f"target {rule!r} matches no {what} in {type(model).__name__}{hint}")
    exclude = compile_rules(tuple(config.exclude))
    chosen = {n: m for n, m in chosen.items() if exclude.first(n) is None}
    if config.layers is not None:
        chosen = {n: m for n, m in chosen.items() if layer_index(n, config.layers_pattern) in config.layers}
    if not chosen:
        raise LoraLabError(f"LoRA config selects no layer of {type(model).__name__} (targets={config.targets}, "
                           f"exclude={config.exclude}, layers={config.layers}); run `loralab inspect` to see the "
                           "module names")
    if config.strict:
        _check_patterns_match(config, list(chosen))
    return chosen


def _check_patterns_match(config: LoraConfig, chosen: list[str]) -> None:
    """A rank_pattern / alpha_pattern key that matches no adapted module would silently do nothing: refuse it."""
    for field in ("rank_pattern", "alpha_pattern"):
        keys = compile_rules(tuple(getattr(config, field)))
        hit = set().union(*(keys.matching(n) for n in chosen))
        for i, key in enumerate(keys.rules):
            if i not in hit:
                near = nearest_names(key, chosen)
                hint = f"; nearest adapted modules: {', '.join(near)}" if near else ""
                raise LoraLabError(f"{field} key {key!r} matches none of the {len(chosen)} adapted modules{hint} "
                                   f"(keys are target rules: a name suffix, 're:REGEX' on the full name, or "
                                   f"PEFT's regex on a dotted suffix)")


def _factor_spec(name: str, config: LoraConfig) -> tuple:
    """What `_make_factors` reads from the config for one layer: (r, alpha, fused slices)."""
    return config.rank_for(name), config.alpha_for(name), config.slices_for(name)


def _make_factors(name: str, layer_module: nn.Module, config: LoraConfig, spec: tuple | None = None) -> LoraFactors:
    """The (uninitialised) factors `inject` gives one layer; LoraLabError if the layer cannot take them.
    `spec`: its `_factor_spec`, when already read."""
    d, k = kind_of(layer_module).shape(layer_module)
    r, alpha, slices = _factor_spec(name, config) if spec is None else spec
    common = dict(dropout=config.dropout, rslora=config.rslora, variant=VARIANTS.lookup(config.variant))
    try:
        check_scale(r, alpha, config.rslora)        # an alpha_pattern / rank_pattern pair may overflow
        if slices is not None:
            return SlicedLoraFactors(d, k, r, alpha, slices.adapt, slices.widths, **common)
        return LoraFactors(d, k, r, alpha, **common)
    except ValueError as exc:
        raise LoraLabError(f"cannot adapt {name}: {exc}") from None


def plan_injection(model: nn.Module, config: LoraConfig) -> list[PlannedModule]:
    """Dry run: every layer `inject` would adapt, with shapes and trainable parameter counts.

    Builds no parameters on the model; works on a model created on the meta device."""
    config = resolve_config(model, config)
    return _plan(select_modules(model, config), config)


def _plan(chosen: dict[str, nn.Module], config: LoraConfig, specs: dict[str, tuple] | None = None
          ) -> list[PlannedModule]:
    """`plan_injection` for the layers `select_modules` chose with this (resolved) config (`specs`: each
    one's `_factor_spec`, when already read)."""
    specs = specs if specs is not None else {name: _factor_spec(name, config) for name in chosen}
    plan, built = [], {}
    for name, module in chosen.items():
        kind = kind_of(module)
        d, k = kind.shape(module)
        spec = (d, k, *specs[name])
        if spec not in built:                   # layers of one shape and rank have the same factors
            with torch.device("meta"):          # the real factors, without memory: their sizes are the count
                f = _make_factors(name, module, config, specs[name])
            built[spec] = f, sum(p.numel() for p in f.parameters())
        f, params = built[spec]
        plan.append(PlannedModule(name, kind.name, d, k, f.r, f.alpha, params, f.slices, f.widths))
    return plan


def inject(model: nn.Module, config: LoraConfig, adapter: str = "default",
           fill: Callable[[str, LoraFactors], None] | None = None, trainable: bool = True) -> nn.Module:
    """Add a LoRA adapter named `adapter` to `model` in place and make it the active, trainable one.

    Layers already wrapped by an earlier adapter get a second set of factors; the base weights are
    frozen; only this adapter's factors (plus biases per `config.bias` and its copies of
    `config.modules_to_save`) require grad. `fill(name, factors)`, if given, sets each layer's
    factors after their init (loading a file does this). All or nothing: every layer is checked
    before the model is touched, and an error on the way undoes everything. Returns the same model.

    trainable=False adds the adapter frozen instead (its factors and copies require no grad) and leaves the
    active adapter and every other flag as they were: how a server adds adapters between two decoding steps
    (`set_trainable` visits every parameter of every adapter already loaded, a cost that grows with them).
    """
    if not isinstance(config, LoraConfig):
        raise LoraLabError(f"config must be a loralab.LoraConfig, not {type(config).__name__}")
    if not adapter or not isinstance(adapter, str) or "." in adapter:
        raise LoraLabError(f"adapter name must be a non-empty string without dots, got {adapter!r}")
    state = getattr(model, STATE_ATTR, None)
    if state is not None and adapter in state.configs:
        raise LoraLabError(f"adapter {adapter!r} already exists; delete it first or choose another name")
    check_nothing_else_merged(model, adapter)
    config = resolve_config(model, config)
    chosen = select_modules(model, config)
    specs = {name: _factor_spec(name, config) for name in chosen}
    modules = dict(model_modules(model))        # the layers by name, read once (no factors walked)
    check_memory(model, _plan(chosen, config, specs), modules)
    layers = _checked_layers(model, config, chosen, specs, modules)
    to_save = _select_modules_to_save(model, config)
    _warn_if_not_low_rank(layers)
    _Surgery(model, adapter).run(config, layers, to_save, fill)
    adapter_state(model, create=True).configs[adapter] = config
    if trainable:
        set_trainable(model, adapter)
    else:
        _freeze(adapter, [layer for layer, _ in layers.values()], to_save, model)
    for hook in INJECT_HOOKS:
        hook(model)
    return model


def _checked_layers(model: nn.Module, config: LoraConfig, chosen: dict[str, nn.Module], specs: dict[str, tuple],
                    modules: dict[str, nn.Module]) -> dict[str, tuple[LoraLayer, LoraFactors]]:
    """{name: (its LoraLayer, new or existing but not yet installed, and the adapter's new factors)} for the
    layers `select_modules` chose (`specs`: their `_factor_spec`; `modules`: the model's modules by name, as far
    as known), every one checked; nothing on the model has changed."""
    layers = {}
    for name, base in chosen.items():
        module = _submodule(model, name, modules)
        layer = module if isinstance(module, LoraLayer) else LoraLayer(base, kind_of(base))
        factors = _make_factors(name, base, config, specs[name])
        try:
            layer.check_adapter(factors, config.init)
        except ValueError as exc:
            raise LoraLabError(f"cannot adapt {name}: {exc}") from None
        layers[name] = (layer, factors)
    return layers


def _submodule(model: nn.Module, name: str, modules: dict[str, nn.Module] | None) -> nn.Module:
    """model.get_submodule(name), looked up in `modules` (names from a walk of the model: each is the path of
    its module) when it is there."""
    module = modules.get(name) if modules is not None else None
    return module if module is not None else model.get_submodule(name)


def check_memory(model: nn.Module, plan: list[PlannedModule], modules: dict[str, nn.Module] | None = None) -> None:
    """Refuse, before anything is allocated, factors that need more memory than the machine has (r=10**9 would
    ask for terabytes). `inject` creates every layer's factors on the default device first (all checked before
    the model is touched), then moves each to its layer's device: both must hold them. `modules`: the model's
    modules by name, as far as the caller has them."""
    created = getattr(torch, "get_default_device", lambda: torch.device("cpu"))()
    width = torch.empty((), dtype=torch.get_default_dtype(), device="meta").element_size()
    need: dict[torch.device, int] = {}
    for p in plan:
        device, size = _placement(_submodule(model, p.name, modules))
        nbytes = p.num_params * max(width, size)
        need[created] = need.get(created, 0) + nbytes
        if device != created:
            need[device] = need.get(device, 0) + nbytes
    for device, nbytes in need.items():
        free = available_memory(device)
        if free is not None and nbytes > free:
            top = max(plan, key=lambda p: p.r)
            raise LoraLabError(
                f"LoRA rank r={top.r} needs {_gib(nbytes)} for the factors of {len(plan)} layers, more than the "
                f"{_gib(free)} of memory available on {device}; choose a smaller r (below min(d, k) = "
                f"{min(top.d_out, top.d_in)} for {top.name} keeps ΔW low-rank)")


def _placement(module: nn.Module) -> tuple[torch.device, int]:
    """The device of a layer's weights and the bytes per value of its widest floating tensor: where new factors
    go and how wide they are at least. A LoraLayer is read as its base layer: `add_adapter` places and types new
    factors from the base weight alone, whatever the adapters already there (a server's layers hold dozens)."""
    module = module.base_layer if isinstance(module, LoraLayer) else module
    tensors = [*module.parameters(), *module.buffers()]
    floats = [t.element_size() for t in tensors if t.is_floating_point()]
    return (tensors[0].device if tensors else torch.device("cpu")), max(floats, default=0)


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:,.1f} GiB"


def _warn_if_not_low_rank(layers: dict[str, tuple[LoraLayer, LoraFactors]]) -> None:
    """One warning when r >= min(d, k) somewhere (per slice for fused projections): ΔW is then not low-rank."""
    full = []
    for name, (_, f) in layers.items():
        smallest = min(*(f.enabled_widths if f.slices is not None else [f.d]), f.k)
        if f.r >= smallest:
            full.append((name, f.r, smallest))
    if full:
        name, r, smallest = full[0]
        more = f" (and {len(full) - 1} more layers)" if len(full) > 1 else ""
        warnings.warn(f"LoRA rank r={r} is not below min(d, k)={smallest} for {name}{more}: ΔW is no longer "
                      f"low-rank and costs as much as the full matrix; choose r < {smallest}", stacklevel=3)


class _Surgery:
    """Installs one adapter on a model and records how to undo each step, so a failure half-way leaves the
    model exactly as it was (weights an init rewrites, like PiSSA's, are restored from a host-memory copy
    kept until the injection has succeeded)."""

    def __init__(self, model: nn.Module, adapter: str):
        self.model, self.adapter = model, adapter
        self.undo: list[Callable[[], None]] = []

    def run(self, config: LoraConfig, layers: dict, to_save: dict[str, nn.Module],
            fill: Callable[[str, LoraFactors], None] | None) -> None:
        try:
            for name, (layer, factors) in layers.items():
                self._add_factors(name, layer, factors, config.init)
                if fill is not None:
                    fill(name, factors)
            for name, module in to_save.items():
                self._add_copy(name, module)
        except BaseException:
            for step in reversed(self.undo):
                step()
            raise

    def _add_factors(self, name: str, layer: LoraLayer, factors: LoraFactors, init: str) -> None:
        if self.model.get_submodule(name) is not layer:
            self.model.set_submodule(name, layer)
            self.undo.append(lambda: self.model.set_submodule(name, layer.base_layer))
        if INITS[init].changes_base_weight:
            weight = layer.kind.weight(layer.base_layer)
            saved = weight.detach().to("cpu", copy=True)       # in host memory: no extra accelerator memory
            self.undo.append(lambda: _copy_into(weight, saved))
        layer.add_adapter(self.adapter, factors, init)
        self.undo.append(lambda: layer.lora_adapters.pop(self.adapter))

    def _add_copy(self, name: str, module: nn.Module) -> None:
        wrapper = module
        if not isinstance(module, TrainableCopy):
            wrapper = TrainableCopy(module)
            self.model.set_submodule(name, wrapper)
            self.undo.append(lambda: self.model.set_submodule(name, module))
        wrapper.add_copy(self.adapter)
        self.undo.append(lambda: wrapper.trainable_copies.pop(self.adapter))


def _freeze(adapter: str, layers: list[LoraLayer], saved: dict[str, nn.Module], model: nn.Module) -> None:
    """No parameter of adapter `adapter` (its factors on `layers`, its copies of the `saved` modules) requires grad."""
    for layer in layers:
        layer.lora_adapters[adapter].requires_grad_(False)
    for name in saved:
        model.get_submodule(name).trainable_copies[adapter].requires_grad_(False)


@torch.no_grad()
def _copy_into(weight: torch.Tensor, saved: torch.Tensor) -> None:
    weight.copy_(saved)


def _select_modules_to_save(model: nn.Module, config: LoraConfig) -> dict[str, nn.Module]:
    chosen = {}
    own = [n for n, _ in base_modules(model)] if config.modules_to_save else []
    for rule in config.modules_to_save:
        hits = {n: model.get_submodule(n) for n in own if matches(n, rule)}
        if not hits and config.strict:
            near = nearest_names(rule, own)
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
