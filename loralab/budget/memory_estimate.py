"""Training memory, full fine-tuning versus LoRA: weights, gradients, optimizer states, activations.

Everything is in bytes. The model-state part follows the usual mixed-precision AdamW accounting
(Micikevicius et al. 2018, "Mixed Precision Training"; Rajbhandari et al. 2020, ZeRO §3):

    full fine-tuning                                    LoRA (loralab's mixed precision)
    weights      P · w                                  frozen (P − T) · w  (or quantized: Q bytes)
                                                        + trained T · 4 (fp32)
    master copy  P · 4 when w is 16-bit                 none (the trained values are fp32 already)
    gradients    P · w                                  T · 4
    AdamW        P · 8 (two fp32 moments)               T · 8

with P all parameters, T the trained ones (the LoRA factors, plus any trained biases) and w the bytes
per value of `dtype`, the precision of the frozen weights and of the compute — what `loralab train --dtype`
means (loralab.precision). For fp16 full fine-tuning that is the familiar 16 bytes per parameter; for LoRA
the frozen weights cost w each (or their quantized size: `quantize`, counted by loralab.quantization's
schemes) and only the small T pays 16 bytes.

Activations follow Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
Models" (arXiv:2205.05198) §4.1: with 16-bit activations, no recomputation and no parallelism, one
transformer layer keeps s·b·h·(34 + 5·a·s/h) bytes for the backward pass (s sequence length,
b batch size, h hidden size, a attention heads). `layer_activation_terms` spells that sum out term by
term so it generalises to an MLP width i ≠ 4h, gated (SwiGLU) MLPs, grouped-query attention,
models without dropout and fp32 activations, and reduces to their number exactly for GPT.

LoRA does not shrink this much: the frozen layers still need their *input gradients* for the
backward pass to reach the adapted layers below them, so every nonlinearity, norm, softmax and
dropout mask keeps its saved tensors. Only the inputs of frozen linear layers that nothing else
needs could be dropped (at most the attention-output, MLP-in and MLP-out inputs: 12·s·b·h of the
34·s·b·h for GPT). The LoRA column therefore reports the full-fine-tuning activations plus the
adapters' own saved tensors: an upper bound, which the output says.
"""
from __future__ import annotations

from dataclasses import dataclass

from loralab.budget.count import rank_total
from loralab.budget.sizes import DTYPE_BYTES
from loralab.budget.skeleton import TransformerDims
from loralab.errors import LoraLabError, choose
from loralab.quantization import QUANTIZE_CHOICES, SCHEMES, QuantScheme, get_scheme

ATTENTION_MODES = ("eager", "flash")


@dataclass(frozen=True)
class TrainingSetup:
    """What one training step looks like, for the memory estimate."""
    batch_size: int = 1
    seq_len: int = 512
    dtype: str = "fp16"
    """Precision of the frozen weights and of the compute (activations): fp32, fp16 or bf16, as
    `loralab train --dtype`. LoRA's trained values, their gradients and AdamW states are fp32; full
    fine-tuning keeps weights and gradients in this dtype (plus an fp32 master copy, `master_weights`)."""
    master_weights: bool = True
    """Full fine-tuning with a 16-bit dtype: keep an fp32 copy of each parameter (standard mixed precision)."""
    attention: str = "eager"
    """"eager": attention probabilities (a·s² per sequence) are kept, as in Korthikanti et al.;
    "flash": a fused kernel (FlashAttention / SDPA) recomputes them and keeps only O(s) statistics."""
    gradient_checkpointing: bool = False
    """Keep only each layer's input and recompute the rest in backward (one layer's activations at a time)."""
    quantize: str = "none"
    """LoRA: the frozen Linear weights stored quantized (a QUANTIZE_CHOICES scheme: "int8", "nf4", ...), as
    `loralab train --quantize`, counted by the scheme's own `weight_bytes`."""
    double_quant: bool = False
    """With a scheme that takes the option (nf4): QLoRA's double quantization of the block scales (8-bit,
    blocks of 256)."""

    def __post_init__(self) -> None:
        for name in ("batch_size", "seq_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise LoraLabError(f"{name} must be a positive integer, got {value!r}")
        choose(self.dtype, DTYPE_BYTES, "dtype")
        choose(self.attention, ATTENTION_MODES, "attention mode")
        choose(self.quantize, QUANTIZE_CHOICES, "quantization")
        if self.double_quant and (self.quantize == "none" or not SCHEMES[self.quantize].takes("double_quant")):
            takers = [name for name in QUANTIZE_CHOICES[1:] if SCHEMES[name].takes("double_quant")]
            raise LoraLabError(f"double quantization applies to {', '.join(takers)} only; add --quantize "
                               f"{takers[0]} or drop --double-quant")

    def scheme(self) -> QuantScheme | None:
        """The quantization scheme the frozen Linear weights are counted in (None for "none"): the scheme's
        `budget_options`, plus double quantization when asked for."""
        if self.quantize == "none":
            return None
        options = {**SCHEMES[self.quantize].budget_options, **({"double_quant": True} if self.double_quant else {})}
        return get_scheme(self.quantize, **options)

    @property
    def value_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def keeps_master(self) -> bool:
        return self.master_weights and self.value_bytes < 4


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one training step needs, by component (no framework overhead, see `assumptions`)."""
    method: str                 # "full" or "lora"
    trained_params: int
    weights: int
    master_weights: int
    gradients: int
    optimizer: int
    activations: int | None     # None when the model's sizes are unknown (then total excludes them)

    @property
    def model_states(self) -> int:
        return self.weights + self.master_weights + self.gradients + self.optimizer

    @property
    def total(self) -> int:
        return self.model_states + (self.activations or 0)

    def to_dict(self) -> dict:
        return dict(method=self.method, trained_params=self.trained_params, weights=self.weights,
                    master_weights=self.master_weights, gradients=self.gradients, optimizer=self.optimizer,
                    activations=self.activations, model_states=self.model_states, total=self.total)


def layer_activation_terms(dims: TransformerDims, setup: TrainingSetup) -> dict[str, int]:
    """Bytes one transformer layer keeps for backward, term by term (Korthikanti et al. 2022 §4.1).

    For GPT (i = 4h, dropout, multi-head attention, 16-bit) the terms sum to s·b·h·(34 + 5·a·s/h)."""
    s, b, h, a = setup.seq_len, setup.batch_size, dims.hidden, dims.heads
    w = setup.value_bytes
    mask = 1 if dims.dropout else 0         # dropout masks: one byte per element
    hq, hkv, i = dims.heads * dims.head_dim, dims.kv_heads * dims.head_dim, dims.intermediate
    sb = s * b
    terms = {
        "attention: QKV input": w * sb * h,
        "attention: Q and K": w * sb * (hq + hkv),
        "attention: V": w * sb * hkv,
        "attention: output-projection input": w * sb * hq,
        "attention: output dropout mask": mask * sb * h,
    }
    if setup.attention == "eager":
        # softmax output, and with dropout also its mask and the dropped-out copy used by P·V
        terms["attention: softmax output"] = w * a * s * s * b
        if dims.dropout:
            terms["attention: probability dropout mask"] = a * s * s * b
            terms["attention: dropped-out probabilities"] = w * a * s * s * b
    else:
        terms["attention: softmax statistics (fp32)"] = 4 * a * sb
    if dims.gated_mlp:
        terms["MLP: gate/up input"] = w * sb * h
        terms["MLP: gate output, its activation, up output"] = 3 * w * sb * i
        terms["MLP: down-projection input"] = w * sb * i
    else:
        terms["MLP: first linear input"] = w * sb * h
        terms["MLP: activation input"] = w * sb * i
        terms["MLP: second linear input"] = w * sb * i
    terms["MLP: dropout mask"] = mask * sb * h
    terms["two norm inputs"] = 2 * w * sb * h
    return {k: v for k, v in terms.items() if v}


def model_activation_bytes(dims: TransformerDims, setup: TrainingSetup) -> int:
    """All layers plus the ends of the model (Korthikanti §4.3): embedding dropout mask, and for a
    language-model head the final norm input, the head's input and the fp32 logits (4·s·b·v).
    With gradient checkpointing each layer keeps only its input (s·b·h values) and one layer at a time
    holds its full activations while it is recomputed (Korthikanti §5, full recomputation)."""
    s, b, w = setup.seq_len, setup.batch_size, setup.value_bytes
    layer = sum(layer_activation_terms(dims, setup).values())
    if setup.gradient_checkpointing:
        total = dims.layers * w * s * b * dims.hidden + layer
    else:
        total = dims.layers * layer
    if dims.dropout:
        total += s * b * dims.hidden
    if dims.lm_head:
        total += 2 * w * s * b * dims.hidden + 4 * s * b * dims.vocab
    return total


def lora_activation_bytes(plan: list, setup: TrainingSetup, lora_dropout: float, layers: int = 1) -> int:
    """What the adapters add: each keeps A·x (s·b·r values) for B's gradient; with LoRA dropout
    also the dropped-out input (s·b·d_in values) and its mask (one byte each). With gradient
    checkpointing they are recomputed with their layer: one layer's share (of `layers`) at a time."""
    sb, w = setup.seq_len * setup.batch_size, setup.value_bytes
    total = 0
    for m in plan:
        total += w * sb * rank_total(m)
        if lora_dropout > 0:
            total += (w + 1) * sb * m.d_in
    return -(-total // layers) if setup.gradient_checkpointing else total


def full_finetune_memory(total_params: int, dims: TransformerDims | None, setup: TrainingSetup) -> MemoryEstimate:
    """Every parameter trained with AdamW."""
    w = setup.value_bytes
    return MemoryEstimate(
        "full", total_params, weights=w * total_params,
        master_weights=4 * total_params if setup.keeps_master else 0,
        gradients=w * total_params, optimizer=8 * total_params,
        activations=model_activation_bytes(dims, setup) if dims else None)


def lora_memory(total_params: int, lora_params: int, extra_trained: int, plan: list, dims: TransformerDims | None,
                setup: TrainingSetup, lora_dropout: float = 0.0,
                quantized: tuple[int, int] = (0, 0)) -> MemoryEstimate:
    """Frozen base (total_params) plus LoRA factors (lora_params) trained with AdamW; `extra_trained`
    are base parameters that train too (biases), already inside total_params. Trained values, their
    gradients and AdamW states are fp32. quantized: (values, bytes) of the frozen weights stored quantized
    (setup.quantize), counted at those bytes instead of the dtype's."""
    w = setup.value_bytes
    trained = lora_params + extra_trained
    quantized_values, quantized_bytes = quantized
    activations = None
    if dims:
        activations = model_activation_bytes(dims, setup) + lora_activation_bytes(plan, setup, lora_dropout,
                                                                                  dims.layers)
    frozen = w * (total_params - extra_trained - quantized_values) + quantized_bytes
    return MemoryEstimate(
        "lora", trained, weights=frozen + 4 * trained, master_weights=0,
        gradients=4 * trained, optimizer=8 * trained, activations=activations)


def assumptions(setup: TrainingSetup, dims: TransformerDims | None) -> list[str]:
    """The assumptions behind the memory numbers, printed with them."""
    w = setup.value_bytes
    lines = [
        f"batch {setup.batch_size} x sequence {setup.seq_len} tokens; frozen weights and activations in "
        f"{setup.dtype} ({w} bytes per value)"
        + (f", the frozen Linear weights of LoRA's base in {setup.quantize}"
           + (" with double quantization" if setup.double_quant else "") + " (scales included; the output "
           "head and embeddings stay in the dtype)" if setup.quantize != "none" else ""),
        "LoRA: trained values, their gradients and AdamW states fp32 (4 + 4 + 8 bytes); full fine-tuning: "
        f"weights and gradients in {setup.dtype}"
        + (", plus an fp32 master copy (4 bytes) of each parameter" if setup.keeps_master else "")
        + ", AdamW states fp32 (8 bytes)",
        "activations: Korthikanti et al. 2022 (arXiv:2205.05198) per-layer accounting, "
        + ("gradient checkpointing (each layer keeps its input; one layer's activations during its recompute)"
           if setup.gradient_checkpointing else "no recomputation (--gradient-checkpointing keeps only each "
           "layer's input)") + ", no parallelism"
        + ("; eager attention keeps the a*s^2 softmax probabilities" if setup.attention == "eager"
           else "; fused (flash) attention keeps no s^2 tensors"),
        "LoRA activations: same as full fine-tuning (frozen layers still store what their input "
        "gradients need) plus each adapter's A*x; an upper bound, since inputs of frozen, unadapted "
        "linear layers need not be kept (up to 12*s*b*h of 34*s*b*h per GPT layer)",
        "not counted: CUDA context and kernels' workspace, allocator fragmentation, temporary buffers, "
        "data loader",
    ]
    if dims is None:
        lines.append("activations not estimated: the config does not describe a single transformer stack")
    else:
        lines.extend(dims.assumed)
        if dims.max_positions and setup.seq_len > dims.max_positions:
            lines.append(f"sequence length {setup.seq_len} exceeds the model's {dims.max_positions} positions")
    return lines
