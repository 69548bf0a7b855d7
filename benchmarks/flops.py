"""Analytic FLOP counts of one training step of a BERT-style sequence classifier (matmuls only).

A matmul of (m, k) by (k, n) costs 2·m·k·n FLOPs (one multiply and one add per term). With
B sequences of T tokens, N = B·T tokens, hidden size h, FFN size I, L layers, C labels, rank r:

  forward, per layer   2·N·(4h² + 2hI)          Q, K, V, attention-output and the two FFN matrices
                       + 4·B·T²·h               Q·Kᵀ and P·V over all heads (heads split h, not the cost)
                       + 2 targets · 4·N·r·h    LoRA: x·Aᵀ (2Nrh) and a·Bᵀ (2Nrh) on Wq and Wv
  forward, head        2·B·h² + 2·B·h·C         pooler (CLS token) and classifier

Backward of a matmul Y = X·Wᵀ needs dX = dY·W (same cost as forward) only if X depends on something
trainable, and dW = dYᵀ·X (same cost again) only if W is trained. So:

  full fine-tuning     backward = 2 × forward (every weight trained; layer 0 still needs dX for the
                       trained embeddings).
  LoRA (frozen W0)     backward = dX only: 2·N·(4h² + 2hI) per layer, 8·B·T²·h for attention
                       (dP = dO·Vᵀ, dV = Pᵀ·dO, dQ = dS·K, dK = dSᵀ·Q), and 8·N·r·h per LoRA target
                       (dB, d(a), dA, dX through A), except in layer 0, whose input (the frozen embeddings)
                       needs no gradient: there Q, K, V need no dX (−6·N·h²), LoRA needs no dX through A
                       (−2·2·N·r·h) and dK is not needed (−2·B·T²·h). The pooler needs dX (2·B·h²), the
                       trained classifier dX and dW (4·B·h·C).

Layer norms, softmax, GELU, dropout, embeddings and the optimizer are elementwise or gathers: memory
bound, not counted. The roofline time of a step is its FLOPs divided by the machine's measured matmul
throughput; a step can only approach it, never beat it.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EncoderShape:
    """The sizes that decide a BERT-style classifier's matmul FLOPs."""
    layers: int
    hidden: int
    intermediate: int
    labels: int

    @classmethod
    def from_config(cls, config) -> "EncoderShape":
        """From a transformers BertConfig-like object."""
        return cls(config.num_hidden_layers, config.hidden_size, config.intermediate_size, config.num_labels)


def forward_flops(shape: EncoderShape, batch: int, seq: int, lora_rank: int = 0, lora_targets: int = 2) -> int:
    """Matmul FLOPs of one forward pass over batch × seq tokens; lora_rank=0 means no LoRA (or merged)."""
    L, h, I, C = shape.layers, shape.hidden, shape.intermediate, shape.labels
    N = batch * seq
    per_layer = 2 * N * (4 * h * h + 2 * h * I) + 4 * batch * seq * seq * h
    per_layer += lora_targets * 4 * N * lora_rank * h
    return L * per_layer + 2 * batch * h * h + 2 * batch * h * C


def backward_flops_lora(shape: EncoderShape, batch: int, seq: int, lora_rank: int, lora_targets: int = 2) -> int:
    """Matmul FLOPs of the backward pass with frozen W0, LoRA on `lora_targets` h×h projections per layer
    (Wq, Wv) and a trained classifier (see the module docstring for each term)."""
    L, h, I, C = shape.layers, shape.hidden, shape.intermediate, shape.labels
    N = batch * seq
    per_layer = 2 * N * (4 * h * h + 2 * h * I) + 8 * batch * seq * seq * h + lora_targets * 8 * N * lora_rank * h
    layer0_saving = 6 * N * h * h + lora_targets * 2 * N * lora_rank * h + 2 * batch * seq * seq * h
    return L * per_layer - layer0_saving + 2 * batch * h * h + 4 * batch * h * C


def training_step_flops(shape: EncoderShape, batch: int, seq: int, lora_rank: int | None,
                        lora_targets: int = 2) -> int:
    """Forward + backward matmul FLOPs of one step; lora_rank=None means full fine-tuning."""
    if lora_rank is None:
        return 3 * forward_flops(shape, batch, seq)
    return (forward_flops(shape, batch, seq, lora_rank, lora_targets)
            + backward_flops_lora(shape, batch, seq, lora_rank, lora_targets))
