# %% [markdown]
# # Lesson 1 — Why LoRA, and the linear algebra it rests on
#
# Stage 1 of the route: *understand the problem* (why full fine-tuning is expensive, why switching between
# fine-tuned models is awkward) and the *mathematics* LoRA builds on: the rank of a matrix, low-rank
# factorisation, and the singular value decomposition (SVD) with the Eckart–Young theorem.
#
# You know PyTorch; you do not need to know LoRA. Everything here runs on a real model,
# all-MiniLM-L6-v2 (a 6-layer BERT, hidden size 384, 22.7M parameters), through loralab's public API.
# Run it with `loralab learn 1` (or `--quick` for a tiny random model that only checks the mechanics).

# %%
import math

import matplotlib.pyplot as plt
import torch

from loralab import LoraConfig, plan_injection
from loralab.budget import estimate_budget, format_bytes
from loralab.lessons import kit
from loralab.models import load_model

S = kit.settings()          # normal or quick mode, torch threads, where shared training runs are cached
checks = kit.Checks()       # the "check yourself" answers at the end are recorded here
print("quick mode" if S.quick else "normal mode", "| model:", S.model)

# %% [markdown]
# ## 1. What full fine-tuning costs
#
# Fine-tuning all weights with Adam keeps, for **every** parameter: the weight itself, its gradient and
# Adam's two moment estimates — and in mixed precision an fp32 master copy of the weight. That is
# 2 + 4 + 2 + 4 + 4 = **16 bytes per parameter** (fp16 weight, fp32 master, fp16 gradient, two fp32
# moments). And each task you fine-tune for produces a *complete copy* of the model.
#
# `loralab.budget` computes these numbers from the model's shape alone (the model is built on PyTorch's
# "meta" device: every shape, no memory), for full fine-tuning and for LoRA side by side.

# %%
budgets = {name: estimate_budget(name, r=8, targets=["q", "v"]) for name in ("all-minilm-l6-v2", "gpt3-175b")}


def decimal(n: int) -> str:
    return format_bytes(n).split(" = ")[0]     # "37.7 MB = 36.0 MiB" -> "37.7 MB"


def model_states(memory) -> int:
    """Bytes of weights + master copy + gradients + optimizer moments (activations not included)."""
    return memory.weights + memory.master_weights + memory.gradients + memory.optimizer


print(f"{'model':18} {'parameters':>16} {'full FT states':>15} {'LoRA states':>12} {'one task, full':>15} "
      f"{'one task, LoRA':>15}")
for name, b in budgets.items():
    P = b.skeleton.total_params
    print(f"{name:18} {P:>16,} {decimal(model_states(b.memory_full)):>15} "
          f"{decimal(model_states(b.memory_lora)):>12} {decimal(2 * P):>15} "
          f"{decimal(b.file_sizes['fp16'].tensor_bytes):>15}")

# %% [markdown]
# Read the last two columns as *what you store per task*: a full fp16 copy of the model, or only LoRA's
# factors (rank r = 8 on the attention matrices Wq and Wv, as in the paper). For GPT-3 that is about
# 349 GB against 75 MB: ten tasks are 3.5 TB of checkpoints with full fine-tuning, under 1 GB with LoRA,
# and switching task means loading a few MB instead of a whole model.
#
# LoRA's training memory is not as small as its file: the frozen weights still sit in memory (2 bytes each
# in fp16) and activations are still needed for the backward pass — but gradients, master copy and Adam's
# moments now exist only for the few trained values. The paper reports 1.2 TB → 350 GB for GPT-3.
#
# The existing cures had their own costs (lesson 4 measures them): **adapter layers** (Houlsby et al. 2019)
# add small networks *in series* inside each block, so every forward pass does extra sequential work — they
# add inference latency. **Prefix-tuning** (Li & Liang 2021) learns extra "virtual tokens" that occupy part
# of the sequence length and are hard to optimise. LoRA's answer starts from linear algebra.

# %%
labels = ["full FT,\n1 task", "full FT,\n10 tasks", "LoRA,\n1 task", "LoRA,\n10 tasks"]
fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
for ax, (name, b) in zip(axes, budgets.items()):
    full, lora = 2 * b.skeleton.total_params, b.file_sizes["fp16"].tensor_bytes
    ax.bar(labels, [full, 10 * full, lora, 10 * lora], color=["#c44", "#c44", "#47a", "#47a"])
    ax.set_yscale("log")
    ax.set_ylabel("bytes stored (fp16)")
    ax.set_title(f"{name}: checkpoints per task")
fig.tight_layout()

# %% [markdown]
# ## 2. Rank and low-rank factorisation
#
# A d×k matrix has **rank r** if its columns span an r-dimensional space. Every rank-r matrix can be
# written as a product
#
#     M = B · A        B: d×r,  A: r×k
#
# which needs **r·(d + k)** numbers instead of **d·k**. For d = k = 384 and r = 8 that is 6,144 numbers
# instead of 147,456 — 24 times fewer. LoRA will learn its *weight update* in exactly this form.

# %%
g = torch.Generator().manual_seed(0)
B_small = torch.randn(6, 2, generator=g, dtype=torch.float64)     # (d, r) = (6, 2)
A_small = torch.randn(2, 5, generator=g, dtype=torch.float64)     # (r, k) = (2, 5)
M = B_small @ A_small                                             # (6, 5), but only rank 2
print("M:", tuple(M.shape), "| rank:", int(torch.linalg.matrix_rank(M)),
      "| numbers in B and A:", B_small.numel() + A_small.numel(), "vs in M:", M.numel())

# %% [markdown]
# ## 3. The SVD and the best rank-r approximation (Eckart–Young)
#
# Every real matrix W (d×k) has a **singular value decomposition**
#
#     W = U · diag(σ) · Vᵀ      U: d×q,  σ: q values σ1 ≥ σ2 ≥ … ≥ 0,  Vᵀ: q×k,  q = min(d, k)
#
# with orthonormal columns in U and V. Keeping only the top r singular triplets gives
# W_r = U[:, :r] · diag(σ[:r]) · Vᵀ[:r], a rank-r matrix — already in the factorised form B·A with
# B = U[:, :r]·diag(σ[:r]) and A = Vᵀ[:r]. The **Eckart–Young(–Mirsky) theorem** says no rank-r matrix is
# closer to W in Frobenius norm, and the error is exactly the energy left in the dropped singular values:
#
#     min over rank-r M of ‖W − M‖_F = ‖W − W_r‖_F = sqrt(σ_{r+1}² + … + σ_q²)
#
# Let's look at real weight matrices: the query projection Wq and the MLP's first matrix of MiniLM's
# first layer.

# %%
encoder = load_model(S.model, task="base")      # the pretrained encoder, no task head
layer0 = encoder.encoder.layer[0]
W_q = layer0.attention.self.query.weight.detach().double()       # (d, k) = (384, 384): h = W·x
W_up = layer0.intermediate.dense.weight.detach().double()        # (1536, 384): the MLP's up-projection
print("W_q:", tuple(W_q.shape), "| W_up:", tuple(W_up.shape))

U, sigma, Vh = torch.linalg.svd(W_q, full_matrices=False)       # U (384, 384), σ (384,), Vh (384, 384)
print("U:", tuple(U.shape), "σ:", tuple(sigma.shape), "Vh:", tuple(Vh.shape))
print("largest σ:", [round(v, 2) for v in sigma[:5].tolist()], "| smallest:", round(sigma[-1].item(), 4))


def best_rank_r(W: torch.Tensor, r: int) -> torch.Tensor:
    """The truncated SVD W_r (d, k): Eckart-Young's best rank-r approximation."""
    U, s, Vh = torch.linalg.svd(W, full_matrices=False)
    return U[:, :r] @ torch.diag(s[:r]) @ Vh[:r]


def relative_errors(W: torch.Tensor) -> torch.Tensor:
    """‖W − W_r‖_F / ‖W‖_F for r = 0 .. q, from the singular values alone (Eckart-Young)."""
    s2 = torch.linalg.svdvals(W) ** 2
    tail = torch.cat([s2.flip(0).cumsum(0).flip(0), s2.new_zeros(1)])    # Σ_{i>r} σ_i² for r = 0..q
    return (tail / s2.sum()).sqrt()


# A random Gaussian matrix of the same shape and norm: what "no structure at all" looks like.
noise = torch.randn(W_q.shape, generator=g, dtype=torch.float64)
noise *= torch.linalg.matrix_norm(W_q) / torch.linalg.matrix_norm(noise)

# %%
d, k = W_q.shape
ranks = torch.arange(0, min(d, k) + 1)
fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
axes[0].semilogy(sigma.numpy(), label="Wq, layer 0")
axes[0].semilogy(torch.linalg.svdvals(noise).numpy(), label="random, same norm", ls="--")
axes[0].semilogy(torch.linalg.svdvals(W_up).numpy(), label="W_up (MLP), layer 0", alpha=.7)
axes[0].set(xlabel="index i", ylabel="σ_i", title="singular values")
axes[0].legend()
for W, label, style in ((W_q, "Wq", "-"), (noise, "random", "--"), (W_up, "W_up", "-")):
    axes[1].plot(relative_errors(W).numpy(), style, label=label)
axes[1].set(xlabel="rank r", ylabel="‖W − W_r‖_F / ‖W‖_F", title="best rank-r error (Eckart–Young)")
axes[1].legend()
axes[2].plot(ranks.numpy(), (ranks * (d + k) / (d * k)).numpy(), label="r·(d+k) / d·k")
axes[2].axhline(1.0, color="grey", lw=0.8)
axes[2].set(xlabel="rank r", ylabel="fraction of d·k", title=f"numbers needed, d = k = {d}")
axes[2].legend()
fig.tight_layout()

# %%
errors = relative_errors(W_q)
for r in (1, 8, 64):
    r = min(r, len(errors) - 1)
    print(f"r = {r:3d}: W_q keeps {1 - errors[r].item() ** 2:6.1%} of its energy (Σσ²), "
          f"random keeps {1 - relative_errors(noise)[r].item() ** 2:6.1%}; numbers r·(d+k) = {r * (d + k):,} "
          f"of d·k = {d * k:,}")
r90 = int((errors ** 2 <= 0.1).nonzero()[0])
print(f"W_q needs r = {r90} of {min(d, k)} to keep 90 % of its energy: factors of {r90 * (d + k):,} numbers "
      f"for a matrix of {d * k:,}")

# %% [markdown]
# **What this tells us.** A pretrained weight matrix is *not* low-rank: its spectrum decays faster than a
# random matrix's, but slowly — keeping 90 % of Wq's energy takes a large fraction of all directions, and
# factors almost as large as W itself. So LoRA does **not** compress W. Its hypothesis
# is about the *change* that fine-tuning makes: that ΔW = W_finetuned − W0 has a low "intrinsic rank", so
# it can be learned as B·A with a small r while W0 stays frozen and untouched. Lesson 2 builds that update,
# and lesson 5 measures the spectrum of a real full fine-tuning update to test the hypothesis.

# %% [markdown]
# ## Check yourself
#
# Work out each answer by hand first (the formula is in the comment), then run the cell: the lesson
# compares your value with one computed a *different* way.
#
# 1. How many numbers does a rank-8 factorisation B·A of MiniLM's MLP matrix W_up (1536×384) need?
# 2. Eckart–Young: predict ‖W_q − W_q,8‖_F from the singular values alone, then measure it by forming W_q,8.
# 3. What is the rank of B·A for a random B (384×8) and A (8×384)?
# 4. Full fine-tuning of GPT-3 175B with mixed-precision Adam: how many bytes of weights, master copy,
#    gradients and moments? (16 bytes per parameter; `loralab budget` adds them up term by term.)
# 5. Up to which rank is a factorisation of a 384×384 matrix smaller than the matrix itself?

# %%
d_up, k_up = W_up.shape
answer_1 = 8 * (d_up + k_up)                                   # by hand: r·(d + k) = 8·(1536 + 384) = 15,360
plan = plan_injection(encoder, LoraConfig(r=8, targets=["encoder.layer.0.intermediate.dense"]))
checks.equal("numbers in a rank-8 factorisation of W_up (vs loralab's injection plan)", answer_1,
             sum(module.num_params for module in plan))

r = min(8, min(W_q.shape))
answer_2 = math.sqrt(float((sigma[r:] ** 2).sum()))            # by hand: sqrt(σ9² + … + σ384²)
checks.close("‖W_q − W_q,8‖_F from σ vs measured", answer_2,
             float(torch.linalg.matrix_norm(W_q - best_rank_r(W_q, r))), rel=1e-9)

answer_3 = 8                                                   # rank(B·A) ≤ min(rank B, rank A) = 8
product = torch.randn(d, 8, generator=g, dtype=torch.float64) @ torch.randn(8, k, generator=g, dtype=torch.float64)
checks.equal("rank of a random (384×8)·(8×384) product", answer_3, int(torch.linalg.matrix_rank(product)))

P = budgets["gpt3-175b"].skeleton.total_params
answer_4 = 16 * P                                              # by hand: (2 + 4 + 2 + 4 + 4) bytes × 174.6B
checks.equal("GPT-3 full fine-tuning model states (bytes)", answer_4, model_states(budgets["gpt3-175b"].memory_full))

answer_5 = 191                                                 # r·(384+384) < 384·384  ⇔  r < 192
smaller = [r for r in range(1, 385) if r * (384 + 384) < 384 * 384]
checks.equal("largest r whose factors are smaller than a 384×384 matrix", answer_5, max(smaller))
