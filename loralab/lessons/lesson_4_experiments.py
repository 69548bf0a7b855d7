# %% [markdown]
# # Lesson 4 — Understanding the experiments: baselines, subspace similarity, amplification, latency
#
# Stage 4 of the route: reproduce, in miniature, the experiments that explain LoRA (Hu et al. 2021, §5-§7).
#
# 1. **vs the alternatives**: full fine-tuning, adapter layers (Houlsby et al. 2019) and prefix-tuning
#    (Li & Liang 2021), trained on the same data for the same number of steps as LoRA.
# 2. **Subspace similarity**: do the r = 8 and r = 64 adapters learn the same directions? (§7.2, Fig. 3)
# 3. **ΔW versus W**: which directions of the pretrained weight does the update amplify, and how much? (§7.3)
# 4. **Where inference latency comes from**: adapters run *in series* with the layer they follow; LoRA runs
#    *in parallel* and can be merged away. We count the work and time it.
#
# The LoRA adapters come from lesson 3 (r = 8 and r = 64 on Wq, Wv of all-MiniLM-L6-v2, SST-2); if lesson 3
# has not run, they are trained here.

# %%
from collections import Counter

import matplotlib.pyplot as plt
import torch
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from loralab.analysis import analyze_adapters, load_deltas, right_singular_vectors
from loralab.timing.latency import LatencySettings, build_configurations, make_inputs, measure_latency
from loralab.lessons import kit
from loralab.models import load_model

S = kit.settings()
checks = kit.Checks()
R_SMALL, R_LARGE = 8, (16 if S.quick else 64)

# %% [markdown]
# ## 1. LoRA against full fine-tuning, adapters and prefix-tuning
#
# Same recipe for every method: the lessons' seeded SST-2 subset, the same steps and batches, the new
# classifier head trained in every case; only the learning rate is per method (full fine-tuning needs a far
# smaller one). Sizes are matched to LoRA r = 8 on Wq, Wv (73,728 values + the head): Houlsby adapters with a
# bottleneck of m = 8 (two per block) and prefixes of length 16 on the keys and values of every layer.

# %%
runs = {
    f"LoRA r={R_SMALL} (Wq, Wv)": kit.lora_run(S, R_SMALL),
    f"LoRA r={R_LARGE} (Wq, Wv)": kit.lora_run(S, R_LARGE),
    "full fine-tuning": kit.train_run(S, "full"),
    "Houlsby adapters, m=8": kit.train_run(S, "houlsby", bottleneck=8),
    "prefix-tuning, l=16": kit.train_run(S, "prefix", length=16),
}
lora_values = runs[f"LoRA r={R_SMALL} (Wq, Wv)"].trainable
print(f"{'method':26} {'lr':>7} {'trained values':>15} {'× LoRA r=8':>10} {'dev acc':>8} {'s/step':>7}")
for name, run in runs.items():
    print(f"{name:26} {run.lr:>7.0e} {run.trainable:>15,} {run.trainable / lora_values:>10.2f} "
          f"{run.dev_accuracy:>8.3f} {run.seconds_per_step:>7.2f}")

accuracy = runs["full fine-tuning"].dev_accuracy
print(f"one standard error of a dev accuracy near {accuracy:.2f} on {S.recipe.dev_sentences} sentences: "
      f"{(accuracy * (1 - accuracy) / S.recipe.dev_sentences) ** 0.5:.3f}")

fig, ax = plt.subplots(figsize=(7.5, 3.6))
for name, run in runs.items():
    ax.plot(kit.smooth(run.losses), label=name)
ax.set(xlabel="optimizer step", ylabel="training loss (moving average of 10)", title="the same data, five methods")
ax.legend(fontsize=8)
fig.tight_layout()

# %% [markdown]
# What to expect at this tiny scale: full fine-tuning updates 300× more values and usually fits fastest;
# LoRA and adapters of the same size land close to each other; prefix-tuning is the slowest starter (its
# "virtual tokens" must first learn to matter to every attention layer, and it is known to be hard to
# optimise). The paper's numbers come from long, tuned runs: on SST-2 with RoBERTa-base (Table 2) full
# fine-tuning scored 94.8, adapters 94.2 and LoRA 95.1. Its low-data study (Appendix F.3) also found LoRA
# holding up best when only a hundred examples are available, where prefix methods fall far behind.
# Here, read accuracy differences smaller than about two standard errors (printed above) as noise;
# `loralab experiment methods` runs the full-size comparison.
#
# ## 2. Subspace similarity: do r = 8 and r = 64 learn the same directions?
#
# Take the right-singular vectors of A (the input directions an adapter reads): U8 (k × 8) and U64 (k × 64),
# columns ordered by singular value. The paper's normalised similarity of their top-i and top-j directions is
#
#     φ(i, j) = ‖U8[:, :i]ᵀ · U64[:, :j]‖_F² / min(i, j)       ∈ [0, 1]
#
# 1 means the smaller subspace lies inside the larger, 0 that they are orthogonal. Two *random* subspaces of
# dimensions i and j in R^k give max(i, j)/k on average — tiny for k = 384, so anything clearly above it is
# shared structure. `loralab.analysis` computes the grid for every adapted matrix, with a measured random
# baseline (Gaussian matrices of the same shapes).

# %%
base = kit.classifier(S)          # pretrained weights W for section 3 (the head is not analysed)
small, large = runs[f"LoRA r={R_SMALL} (Wq, Wv)"], runs[f"LoRA r={R_LARGE} (Wq, Wv)"]
report = analyze_adapters([small.adapter, large.adapter], base_model=base, trials=20, seed=0)
similarity = {s.name: s for s in report.similarity}
last = base.config.num_hidden_layers - 1
query, value = (f"bert.encoder.layer.{last}.attention.self.{m}" for m in ("query", "value"))
print(f"{'matrix':42} {'φ(1,1)':>7} {'random':>7} {'mean φ':>7} {'random':>7}")
for name, s in similarity.items():
    print(f"{name:42} {s.top_overlap:7.3f} {s.random_mean[0][0]:7.4f} {s.mean_phi:7.3f} {s.mean_expected:7.3f}")

fig, axes = plt.subplots(1, 3, figsize=(14, 3.2))
for ax, (title, grid) in zip(axes, ((f"ΔWq, layer {last}", similarity[query].phi),
                                    (f"ΔWv, layer {last}", similarity[value].phi),
                                    ("two random Gaussian A's", similarity[query].random_mean))):
    image = ax.imshow(torch.tensor(grid).numpy(), vmin=0, vmax=1, aspect="auto", cmap="viridis",
                      extent=(0.5, len(grid[0]) + 0.5, len(grid) + 0.5, 0.5))
    ax.set(title=title, xlabel=f"j (top directions of r = {R_LARGE})", ylabel=f"i (top of r = {R_SMALL})")
fig.colorbar(image, ax=axes, label="φ(i, j)")

# %% [markdown]
# The paper's reading (GPT-3, layer 48): the **top** direction of the r = 8 adapter is largely contained in
# the r = 64 adapter's top directions (φ(1, ·) bright), while the rest fades towards the random level: the
# extra directions of a large r mostly hold noise picked up in training. That is why a small r suffices.
# On our short runs, look at the first row of the heatmaps and compare it with the random panel.
#
# ## 3. ΔW versus W: feature amplification
#
# Does the update point along W's strongest directions, or elsewhere? Take ΔW's top-r singular vectors U
# (d × r) and V (k × r) and measure how much of W lies in that pair of subspaces, ‖Uᵀ·W·V‖_F. Compare with
# W's own top-r directions (the most any r directions can catch: √(σ1² + … + σr²) of W) and with random
# directions. The **amplification factor** ‖ΔW‖_F / ‖Uᵀ·W·V‖_F says how strongly ΔW magnifies what W
# already does in those directions. Paper, GPT-3 Wq at layer 48: 0.32 (ΔW's directions) vs 21.67 (W's top-4)
# vs 0.02 (random) at r = 4, amplification ≈ 21.5; ≈ 2 at r = 64.

# %%
print(f"{'matrix':42} {'r':>3} {'‖ΔW‖':>6} {'ΔW dirs':>8} {'W top-r':>8} {'random':>7} {'amplif.':>8}")
amplification = {}
for analysis, r in zip(report.adapters, (R_SMALL, R_LARGE)):
    for m in analysis.amplification:
        amplification[(m.name, r)] = m
        if m.name in (query, value):
            print(f"{m.name:42} {r:>3} {m.delta_fro:6.3f} {m.proj_delta:8.3f} {m.proj_w_top:8.2f} "
                  f"{m.proj_random:7.3f} {m.amplification:8.1f}")

names = [m.name for m in report.adapters[0].amplification]
fig, ax = plt.subplots(figsize=(10, 3.4))
for i, r in enumerate((R_SMALL, R_LARGE)):
    ax.bar([j + 0.4 * i for j in range(len(names))], [amplification[(n, r)].amplification for n in names], 0.4,
           label=f"r = {r}")
ax.set_xticks([j + 0.2 for j in range(len(names))],
              [n.replace("bert.encoder.layer.", "L").replace(".attention.self.", " ") for n in names], rotation=60)
ax.set(yscale="log", ylabel="‖ΔW‖_F / ‖UᵀWV‖_F", title="amplification factor per adapted matrix")
ax.legend()
fig.tight_layout()

# %% [markdown]
# As in the paper, expect ΔW's directions to catch far less of W than W's own top directions do — the update
# does not repeat what W already emphasises — and the amplification to be larger for the smaller rank: a
# low-rank update concentrates its whole norm on a few directions. How far above random ΔW's column lies
# tells how much those directions are *features W already has*; at our scale (short runs, a 384-wide model)
# this is weaker than in the paper (docs/experiments.md has the full-size numbers).
#
# ## 4. Where inference latency comes from: serial adapters vs parallel LoRA
#
# An **adapter** layer sits after a sublayer: h ← h + f(h·W_down)·W_up. It needs the sublayer's output h, so
# it can only start when the sublayer has finished: extra *sequential* steps in every block, which a GPU
# cannot overlap — at batch size 1, where each step is short, they dominate (the paper measured +30 % for
# Houlsby adapters on GPT-2 medium at batch 1 × 128 tokens). **LoRA** computes s·B·A·x from the *same input*
# x as W0·x: a parallel branch, and after merging (W = W0 + s·B·A) no branch at all. We build the four
# configurations (`loralab.timing.latency`: B and the adapters' up-projections set to random values so
# each computes something) and measure three things: matrix multiplications per forward pass, FLOPs, time.

# %%
class CountMatmuls(TorchFunctionMode):
    """Counts the calls of torch's matrix-multiply functions during a forward pass."""

    NAMES = ("linear", "addmm", "mm", "matmul", "bmm", "__matmul__")

    def __init__(self) -> None:
        super().__init__()
        self.calls = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.NAMES:
            self.calls[name] += 1
        return func(*args, **(kwargs or {}))


def encoder() -> torch.nn.Module:
    """MiniLM with plain ("eager") attention, so that FlopCounterMode sees every matrix product (the fused
    attention kernel PyTorch uses on CPUs by default is not counted)."""
    return load_model(S.model, task="base", attn_implementation="eager")


bottleneck, lora_r = 16, 8
configurations = build_configurations(encoder, LatencySettings((1,), (32,), bottleneck=bottleneck, lora_r=lora_r))
tokens = 32
inputs = make_inputs(configurations["base"], 1, tokens)
work = {}
for name, model in configurations.items():
    counter, flops = CountMatmuls(), FlopCounterMode(display=False)
    with torch.inference_mode(), counter, flops:
        model(**inputs)
    work[name] = (sum(counter.calls.values()), flops.get_total_flops())
for name, (calls, flops) in work.items():
    print(f"{name:14} {calls:4d} matmul calls  {flops / 1e9:7.3f} GFLOP  "
          f"(+{calls - work['base'][0]} calls, +{(flops - work['base'][1]) / work['base'][1]:.2%} FLOPs vs base)")

# %%
repeats = 5 if S.quick else 15
rows = measure_latency(encoder, batch_sizes=[1, 16], seq_lens=[32], repeats=repeats, warmup=2,
                       bottleneck=bottleneck, lora_r=lora_r)
for row in rows:
    print(f"batch {row.batch_size:2d} × {row.seq_len} tokens  {row.config:14} median {row.median_ms:8.2f} ms "
          f"(IQR {row.iqr_ms:6.2f})  {row.overhead_pct:+6.1f} %")

fig, axes = plt.subplots(1, 2, figsize=(11, 3.2), sharey=False)
for ax, batch_size in zip(axes, (1, 16)):
    shape_rows = [row for row in rows if row.batch_size == batch_size]
    ax.bar([row.config for row in shape_rows], [row.median_ms for row in shape_rows],
           yerr=[row.iqr_ms / 2 for row in shape_rows], color=["#888", "#c44", "#47a", "#4a7"])
    ax.set(ylabel="ms per forward (median, ± IQR/2)", title=f"batch {batch_size} × 32 tokens")
fig.tight_layout()

# %% [markdown]
# The counts and FLOPs are exact; the times are not. Adapters and unmerged LoRA add the same *kind* of work
# (a few small matrix products per adapted layer), but only the adapter's products sit on the critical
# path; the LoRA branch could run alongside W0·x, and merged LoRA runs exactly the base model's operations.
# On a CPU that runs one operation after another, the time differences are a few percent at most and, on a
# machine shared with other jobs, within the noise (look at the IQR) — the paper's large adapter overheads
# come from GPUs at batch 1, where every extra sequential kernel launch costs time even when it does little.
# Merged LoRA is the base architecture: whatever the clock says, it does identical work.
#
# ## Check yourself
#
# 1. Compute φ(1, 1) between the r = 8 and r = 64 Wq adapters of the last layer yourself: read A from both
#    files, take each one's top right-singular vector (`torch.linalg.svd`), square their dot product.
# 2. For random subspaces, E φ(1, 1) = 1/k (here k = 384). Compare with the measured random baseline.
# 3. Recompute the amplification factor of the last layer's ΔWq (r = 8) from the *dense* ΔW = s·B·A and a
#    dense SVD, and compare with loralab's value (which never forms ΔW).
# 4. Unmerged LoRA's extra FLOPs by hand: each adapted d×k layer adds A·x (r·k multiply-adds per token) and
#    B·(A·x) (d·r): 2·tokens·r·(d + k) FLOPs; 12 such layers in MiniLM.
# 5. How many FLOPs does merged LoRA add? (None: same matrices as the base.)
# 6. Houlsby's extra FLOPs by hand: 2 adapters per block, each two m×d products: 2·tokens·L·2·(2·d·m).

# %%
deltas_small, _ = load_deltas(small.adapter)
deltas_large, _ = load_deltas(large.adapter)
A_small = next(d.A for d in deltas_small if d.name == query)                 # (8, k)
A_large = next(d.A for d in deltas_large if d.name == query)                 # (64, k)
top_small = torch.linalg.svd(A_small, full_matrices=False).Vh[0]             # (k,): top right-singular vector
top_large = torch.linalg.svd(A_large, full_matrices=False).Vh[0]
answer_1 = float(top_small @ top_large) ** 2
checks.close(f"φ(1,1) of ΔWq, layer {last}: by hand vs loralab.analysis", answer_1, similarity[query].top_overlap,
             rel=1e-9, abs_=1e-12)

k = A_small.shape[1]
answer_2 = 1 / k                                                             # E φ(1,1) = max(1, 1)/k
trials = 20                      # the random mean over 20 draws has a standard deviation of about √2/(k·√20)
checks.close("E φ(1,1) of random subspaces = 1/k vs the measured baseline", answer_2,
             similarity[query].random_mean[0][0], rel=0.0, abs_=4 * (2 ** 0.5) / (k * trials ** 0.5))

delta = next(d for d in deltas_small if d.name == query)
dense = delta.dense()                                                        # s·B·A as a (d, k) float64 matrix
U, sv, Vh = torch.linalg.svd(dense)
W = base.bert.encoder.layer[last].attention.self.query.weight.detach().double()
r = delta.r
answer_3 = float(torch.linalg.matrix_norm(dense) / torch.linalg.matrix_norm(U[:, :r].T @ W @ Vh[:r].T))
checks.close(f"amplification of ΔWq, layer {last}, r={r}: dense SVD vs loralab", answer_3,
             amplification[(query, R_SMALL)].amplification, rel=1e-6)

config = configurations["base"].config
L, d_model, ffn = config.num_hidden_layers, config.hidden_size, config.intermediate_size
answer_4 = 2 * tokens * L * 2 * lora_r * (d_model + d_model)                # Wq and Wv in every layer
checks.equal("unmerged LoRA extra FLOPs: by hand vs FlopCounterMode", answer_4,
             work["lora_unmerged"][1] - work["base"][1])
checks.equal("merged LoRA extra FLOPs", 0, work["lora_merged"][1] - work["base"][1])
answer_6 = 2 * tokens * L * 2 * (2 * d_model * bottleneck)
checks.equal("Houlsby extra FLOPs: by hand vs FlopCounterMode", answer_6, work["houlsby"][1] - work["base"][1])
