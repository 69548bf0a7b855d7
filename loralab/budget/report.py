"""The budget of one LoRA config on one model: parameters, adapter file size, training memory.

    skeleton = build_skeleton("gpt3-175b")                    # meta device, no memory
    budget = lora_budget(skeleton, LoraConfig(r=4))           # preset targets: the paper's Wq, Wv
    budget.trainable_params                                   # 18,874,368
    budget.file_sizes["fp16"].total_bytes                     # ≈ 37.7 MB

or in one call: `estimate_budget("gpt3-175b", r=4)`; `format_report([...])` prints tables.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from loralab.budget.count import (ModuleTypeCount, bias_parameters, by_module_type, lora_config_class, planned_modules,
                                  rank_total, resolve_config)
from loralab.budget.memory_estimate import MemoryEstimate, TrainingSetup, assumptions, full_finetune_memory, lora_memory
from loralab.budget.roles import resolve_targets
from loralab.budget.sizes import DTYPE_BYTES, FileSize, format_bytes, format_count, safetensors_header_bytes
from loralab.budget.skeleton import ModelSkeleton, build_skeleton
from loralab.core.kinds import kind_of
from loralab.core.variants import VARIANTS
from loralab.formats.adapter_config import file_metadata, sliced_metadata
from loralab.quantization.model import quantizable_layers

# Tensor names as loralab.formats.peft writes them; only their length matters here (the header estimate).
_PREFIX = "base_model.model."


@dataclass
class Budget:
    """Everything the calculator knows about one LoRA config on one model."""
    skeleton: ModelSkeleton
    lora_config: object                     # loralab.LoraConfig, as given (targets None = preset)
    targets_label: str
    setup: TrainingSetup
    plan: list                              # loralab PlannedModule per adapted layer
    by_type: list[ModuleTypeCount]
    lora_params: int                        # LoRA factors (A, B; DoRA magnitudes)
    bias_params: int                        # biases trained and saved too (LoraConfig.bias)
    file_sizes: dict[str, FileSize]         # the trainable values (the paper's checkpoint size)
    saved_values: int | None                # values in the file loralab.save_adapter writes, where it differs
    saved_file_sizes: dict[str, FileSize] | None   # (fused slices: PEFT's layout, B with zero rows)
    memory_full: MemoryEstimate
    memory_lora: MemoryEstimate
    notes: list[str] = field(default_factory=list)

    @property
    def total_params(self) -> int:
        return self.skeleton.total_params

    @property
    def trainable_params(self) -> int:
        return self.lora_params + self.bias_params

    @property
    def trainable_fraction(self) -> float:
        return self.trainable_params / self.total_params if self.total_params else 0.0

    @property
    def r(self) -> int:
        return self.lora_config.r

    def full_model_bytes(self, dtype: str) -> int:
        return self.total_params * DTYPE_BYTES[dtype]

    def to_dict(self) -> dict:
        return dict(
            r=self.r, alpha=self.lora_config.alpha, targets=self.targets_label,
            lora_params=self.lora_params, bias_params=self.bias_params, trainable_params=self.trainable_params,
            trainable_percent=100.0 * self.trainable_fraction, adapted_modules=len(self.plan), adapted_matrices=sum(t.count for t in self.by_type),
            by_module_type=[t.to_dict() for t in self.by_type],
            adapter_file={d: s.to_dict() for d, s in self.file_sizes.items()},
            saved_values=self.saved_values,
            saved_file={d: s.to_dict() for d, s in self.saved_file_sizes.items()} if self.saved_file_sizes else None,
            memory={"full": self.memory_full.to_dict(), "lora": self.memory_lora.to_dict()},
            notes=list(self.notes))


def _file_tensors(plan: list, model, lora_config, dense_slices: bool) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor in the adapter file, named as loralab.save_adapter names them
    (the layer kind's PEFT names for A and B, the variant's keys for its extra tensors).

    dense_slices=False: a fused-slice adapter's B holds only the adapted slices' rows (the trainable
    values, as the paper's reference code stores them); True: B spans the whole fused output with
    zero rows for the frozen slices, as PEFT's layout (and so loralab.save_adapter) stores it."""
    variant = VARIANTS.lookup(lora_config.variant)
    tensors = []
    for m in plan:
        rows = rank_total(m)
        if m.slices and not dense_slices:
            b_shape = (sum(w for w, on in zip(m.slice_widths, m.slices) if on), m.r)
        else:
            b_shape = (m.d_out, rows)
        a_key, b_key = kind_of(model.get_submodule(m.name)).peft_names
        tensors.append((f"{_PREFIX}{m.name}.{a_key}", (rows, m.d_in)))
        tensors.append((f"{_PREFIX}{m.name}.{b_key}", b_shape))
        for attr, shape in variant.extra_parameters(m.d_out, m.d_in).items():
            if attr in variant.peft_keys:
                tensors.append((f"{_PREFIX}{m.name}.{variant.peft_keys[attr]}", shape))
    if lora_config.bias != "none":
        adapted = {m.name for m in plan}
        for name, p in model.named_parameters():
            owner = name.rpartition(".")[0]
            if not name.endswith("bias"):
                continue
            if owner in adapted:
                tensors.append((f"{_PREFIX}{owner}.base_layer.bias", tuple(p.shape)))
            elif lora_config.bias == "all":
                tensors.append((_PREFIX + name, tuple(p.shape)))
    return tensors


def _file_metadata(plan: list, lora_config, setup: TrainingSetup) -> dict[str, str]:
    """The safetensors metadata loralab.save_adapter writes: its own config (to restore fused slices) and how
    the frozen base it trains on stores its weights (`trained_on`)."""
    sliced = {m.name: sliced_metadata(m.slices, m.slice_widths, m.r, m.alpha) for m in plan if m.slices}
    return file_metadata(lora_config, sliced, trained_on={"quantize": setup.quantize, "dtype": setup.dtype})


def _file_sizes(values: int, tensors: list, metadata: dict[str, str]) -> dict[str, FileSize]:
    return {dtype: FileSize(dtype, values * size, safetensors_header_bytes(tensors, dtype, metadata))
            for dtype, size in DTYPE_BYTES.items()}


def lora_budget(skeleton: ModelSkeleton, lora_config, setup: TrainingSetup | None = None,
                targets_label: str | None = None) -> Budget:
    """The budget of `lora_config` (a loralab.LoraConfig) on a skeleton from `build_skeleton`."""
    setup = setup or TrainingSetup()
    plan = planned_modules(skeleton.model, lora_config)
    lora_params = sum(m.num_params for m in plan)
    bias_params = bias_parameters(skeleton.model, plan, lora_config.bias)
    saved_config = resolve_config(skeleton.model, lora_config)
    metadata = _file_metadata(plan, saved_config, setup)
    file_sizes = _file_sizes(lora_params + bias_params,
                             _file_tensors(plan, skeleton.model, lora_config, dense_slices=False), metadata)
    notes = list(skeleton.notes)
    saved_values, saved_sizes = None, None
    if any(m.slices for m in plan):
        # PEFT has no per-slice factors: its files hold B over the whole fused output, zero rows included.
        dense = _file_tensors(plan, skeleton.model, lora_config, dense_slices=True)
        saved_values = sum(math.prod(shape) for _, shape in dense)
        saved_sizes = _file_sizes(saved_values, dense, metadata)
        notes.append("fused projection adapted slice by slice: the tensor sizes above are the trainable values "
                     "(what the paper's reference code stores); PEFT's layout repeats B's zero rows")
    if lora_config.dropout > 0:
        notes.append(f"LoRA dropout {lora_config.dropout:g}: each adapted layer also keeps its dropped-out input "
                     f"and mask for backward (counted in the LoRA activations)")
    if bias_params:
        notes.append(f"bias={lora_config.bias!r}: {bias_params:,} bias values train and are saved with the adapter")
    return Budget(
        skeleton=skeleton, lora_config=lora_config,
        targets_label=targets_label or _default_label(lora_config), setup=setup, plan=plan,
        by_type=by_module_type(plan), lora_params=lora_params, bias_params=bias_params,
        file_sizes=file_sizes, saved_values=saved_values, saved_file_sizes=saved_sizes,
        memory_full=full_finetune_memory(skeleton.total_params, skeleton.dims, setup),
        memory_lora=lora_memory(skeleton.total_params, lora_params, bias_params, plan, skeleton.dims, setup,
                                lora_config.dropout, quantized_frozen(skeleton.model, setup)),
        notes=notes)


def quantized_frozen(model, setup: TrainingSetup) -> tuple[int, int]:
    """(values, bytes) of the frozen weights `setup.quantize` stores quantized: the Linear layers
    loralab.quantization.quantize would replace (not the output head), each at its scheme's exact size with
    scales (`setup.scheme()`: the scheme's `weight_bytes` with its `budget_options`). (0, 0) for "none"."""
    scheme = setup.scheme()
    if scheme is None:
        return 0, 0

    values = size = 0
    for _, layer in quantizable_layers(model):
        d_out, d_in = kind_of(layer).shape(layer)
        values += d_out * d_in
        size += scheme.weight_bytes(d_out, d_in)
    return values, size


def _default_label(lora_config) -> str:
    targets = lora_config.targets
    if targets is None:
        return "preset (the paper's Wq, Wv)"
    return targets if isinstance(targets, str) else ", ".join(targets)


def estimate_budgets(source, ranks: list[int] | tuple[int, ...] = (8,), targets: list[str] | None = None, *,
                     setup: TrainingSetup | None = None, architecture: str | None = None,
                     **lora_options) -> list[Budget]:
    """Budgets for several ranks on one model, building its skeleton once.

    source: a shape name ("gpt3-175b"; see `loralab budget --list-shapes`), a model folder or
    config.json path, or a transformers config. targets: role names (q k v o gate up down, the
    paper's Wq...), module names / rules as in LoraConfig, ["all-linear"], or None for the preset.
    lora_options: further LoraConfig fields (alpha, exclude, dora, bias, dropout, rank_pattern, ...).
    """
    skeleton = source if isinstance(source, ModelSkeleton) else build_skeleton(source, architecture)
    resolved = resolve_targets(skeleton.model, targets)
    config_cls = lora_config_class()
    budgets = []
    for r in ranks:
        options = dict(lora_options)
        options["fused_slices"] = {**resolved.fused_slices, **options.get("fused_slices", {})}
        config = config_cls(r=r, targets=resolved.targets, **options)
        budgets.append(lora_budget(skeleton, config, setup, resolved.label))
    return budgets


def estimate_budget(source, r: int = 8, targets: list[str] | None = None, **kwargs) -> Budget:
    """The budget of one rank; see `estimate_budgets` for the arguments."""
    return estimate_budgets(source, (r,), targets, **kwargs)[0]


# ------------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------------
def report_dict(budgets: list[Budget]) -> dict:
    """Machine-readable form of `format_report` (what `loralab budget --json` prints). Sizes in bytes."""
    first = budgets[0]
    sk = first.skeleton
    return dict(
        model=dict(name=sk.name, architecture=sk.architecture, model_type=sk.model_type,
                   total_params=sk.total_params,
                   full_model_bytes={d: first.full_model_bytes(d) for d in DTYPE_BYTES},
                   dims=None if sk.dims is None else {k: v for k, v in vars(sk.dims).items() if k != "assumed"}),
        training=dict(batch_size=first.setup.batch_size, seq_len=first.setup.seq_len, dtype=first.setup.dtype,
                      master_weights=first.setup.keeps_master, attention=first.setup.attention,
                      gradient_checkpointing=first.setup.gradient_checkpointing, quantize=first.setup.quantize,
                      double_quant=first.setup.double_quant),
        assumptions=assumptions(first.setup, sk.dims),
        budgets=[b.to_dict() for b in budgets])


def _table(rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
            for row in rows]


def format_report(budgets: list[Budget]) -> str:
    """Readable tables: the model, then per rank the adapted module types and adapter file sizes,
    then training memory of full fine-tuning next to LoRA at each rank, then the assumptions."""
    first = budgets[0]
    sk = first.skeleton
    out = [f"Model: {sk.name} ({sk.architecture}, model_type {sk.model_type})",
           f"  parameters: {format_count(sk.total_params)}",
           "  full model size: " + " | ".join(f"{d} {format_bytes(first.full_model_bytes(d))}" for d in DTYPE_BYTES)]
    for b in budgets:
        c = b.lora_config
        out += ["", f"LoRA r={c.r}, alpha={c.alpha:g}, targets: {b.targets_label}"
                + (f", variant {c.variant}" if c.variant != "lora" else "") + (f", bias={c.bias}" if c.bias != "none" else "")]
        rows = [["adapted matrices", "count", "ΔW each", "r", "params"]]
        rows += [[t.module_type, str(t.count), f"{t.d_out} x {t.d_in}", str(t.r), f"{t.params:,}"] for t in b.by_type]
        if b.bias_params:
            rows.append([f"biases ({c.bias})", "", "", "", f"{b.bias_params:,}"])
        rows.append(["total", str(sum(t.count for t in b.by_type)), "", "", f"{b.trainable_params:,}"])
        out += _table(rows, right={1, 3, 4})
        out.append(f"  trainable: {format_count(b.trainable_params)} = {100 * b.trainable_fraction:.4g}% of "
                   f"the model; full model / adapter = {b.total_params / max(b.trainable_params, 1):,.0f}x")
        out.append("  adapter file (safetensors), tensors + header estimate:")
        for dtype, size in b.file_sizes.items():
            out.append(f"    {dtype:<5} {b.trainable_params:,} x {DTYPE_BYTES[dtype]} B = {size.tensor_bytes:,} B "
                       f"= {format_bytes(size.tensor_bytes)}  (+ ~{size.header_bytes / 1e3:.1f} kB header)")
        if b.saved_file_sizes:
            out.append("  as loralab.save_adapter writes it (PEFT layout, zero rows of B for frozen slices):")
            for dtype, size in b.saved_file_sizes.items():
                out.append(f"    {dtype:<5} {b.saved_values:,} x {DTYPE_BYTES[dtype]} B = {format_bytes(size.total_bytes)}"
                           f" (header included)")
        out += [f"  note: {n}" for n in b.notes]

    s = first.setup
    base = f"{s.dtype}" + (f", LoRA's base {s.quantize}" + ("+DQ" if s.double_quant else "")
                           if s.quantize != "none" else "")
    out += ["", f"Training memory per step ({base}, batch {s.batch_size} x {s.seq_len} tokens, "
                f"{s.attention} attention" + (", gradient checkpointing" if s.gradient_checkpointing else "") + "):"]
    columns = [("full FT", first.memory_full)] + [(f"LoRA r={b.r}", b.memory_lora) for b in budgets]
    parts = [("weights", "weights"), ("fp32 master copy", "master_weights"), ("gradients", "gradients"),
             ("AdamW states", "optimizer"), ("activations", "activations"), ("total", "total")]
    rows = [["component"] + [name for name, _ in columns]]
    for label, attr in parts:
        values = [getattr(m, attr) for _, m in columns]
        if attr == "master_weights" and not any(values):
            continue
        rows.append([label] + ["n/a" if v is None else format_bytes(v) for v in values])
    rows.append(["trained params"] + [f"{m.trained_params:,}" for _, m in columns])
    out += _table(rows, right=set(range(1, len(columns) + 1)))
    out += ["", "Assumptions:"] + [f"  - {a}" for a in assumptions(s, sk.dims)]
    return "\n".join(out)
