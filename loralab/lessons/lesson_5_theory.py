# %% [markdown]
# # Lesson 5 — Theory: intrinsic dimension, feature amplification, why low rank suffices
#
# Stage 5 of the route (optional in the route, but it is where the "why" lives). Three ideas:
#
# 1. **Intrinsic dimension** (Li et al. 2018; Aghajanyan et al. 2020): fine-tuning a pretrained model can be
#    done in a tiny random subspace of its parameters, θ = θ0 + P·z with only z trained. The LoRA paper
#    builds on this: if the *change* needs few dimensions, maybe each weight's change needs a low rank.
# 2. **Why low rank suffices**: we take a real *full* fine-tuning update ΔW = W_ft − W0 and look at its
#    spectrum. Is it low-rank by itself? Does LoRA find the same directions?
# 3. **Feature amplification** and the comparison of methods that the route closes with: adapters run in
#    series (latency), prefixes occupy the sequence, LoRA runs in parallel and merges away.

# %%
import math

import matplotlib.pyplot as plt
import torch
import transformers
from safetensors.torch import load_file
from torch.utils.flop_counter import FlopCounterMode

import loralab
from loralab import LoraConfig
from loralab.analysis import amplification_of, effective_rank, load_deltas, make_delta, right_singular_vectors
from loralab.baselines import METHODS
from loralab.lessons import kit
from loralab.models import load_model

S = kit.settings()
checks = kit.Checks()

# %% [markdown]
# ## 1. Intrinsic dimension: θ = θ0 + P·z
#
# Flatten all D trainable values of a network into one vector θ. Instead of training θ, fix a random D×d
# matrix P (columns of unit length) and train only z ∈ R^d, starting at z = 0 so training starts exactly at
# θ0:
#
#     θ = θ0 + P·z          θ, θ0: (D,)   P: (D, d) fixed   z: (d,) trained
#
# The **intrinsic dimension** d90 is the smallest d that reaches 90 % of what training all of θ reaches.
# Aghajanyan et al. found that about 200 values suffice for 90 % of full fine-tuning of RoBERTa on MRPC, and
# that *pretraining lowers the intrinsic dimension*: the better the pretrained starting point, the fewer
# directions fine-tuning needs.
#
# A dense P is out of the question for a real model: for all of MiniLM's 22.7M values and d = 1000 it would
# hold 22.7 billion numbers (91 GB in fp32). Aghajanyan et al. use the **Fastfood transform**, which applies a
# random D×d projection in O(D log d) time without storing it (random signs, a permutation, Gaussian scales
# and two Walsh-Hadamard transforms); `loralab experiment intrinsic-dim` runs that experiment on all of
# MiniLM. Here we keep P dense and the network small enough to watch every step: a two-layer classifier
# trained on frozen sentence embeddings of SST-2, once on top of **pretrained** all-MiniLM-L6-v2 and once on
# top of the **same architecture with random weights** — to see what pretraining does to d90.

# %%
tok = kit.tokenizer(S)
n_train, n_dev = (96, 64) if S.quick else (1200, 400)
train_rows = kit.examples("sst2", "train", n_train, seed=1)
dev_rows = kit.examples("sst2", "dev", n_dev, seed=None)


@torch.no_grad()   # (not inference_mode: the features are used in autograd later)
def sentence_embeddings(encoder: torch.nn.Module, rows) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean-pooled last hidden states (how all-MiniLM-L6-v2 embeds sentences): (N, hidden), labels (N,)."""
    features, labels = [], []
    for batch in kit.batches(rows, tok, 64, S.recipe.max_length):
        hidden = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()                     # (B, T, 1)
        features.append((hidden * mask).sum(1) / mask.sum(1))                    # (B, hidden)
        labels.append(batch["labels"])
    return torch.cat(features), torch.cat(labels)


pretrained = load_model(S.model, task="base")
torch.manual_seed(1)
random_init = transformers.AutoModel.from_config(pretrained.config).eval()      # same architecture, no pretraining
features = {}
for name, encoder in (("pretrained MiniLM", pretrained), ("random-init MiniLM", random_init)):
    X_train, y_train = sentence_embeddings(encoder, train_rows)
    X_dev, y_dev = sentence_embeddings(encoder, dev_rows)
    mean, std = X_train.mean(0), X_train.std(0) + 1e-6                         # standardise each feature
    features[name] = ((X_train - mean) / std, y_train, (X_dev - mean) / std, y_dev)
k = X_train.shape[1]
print(f"{n_train} training and {n_dev} dev sentences -> features of size k = {k}")

# %% [markdown]
# The network: h = relu(W1·x + b1), logits = W2·h + b2, with W1 (m, k), b1 (m,), W2 (2, m), b2 (2,). All its
# D values live in one vector θ; `unflatten` cuts θ back into the four tensors. W1 starts random and W2 at
# zero — the same trick as LoRA's B = 0: the network starts from "no opinion" (both classes at 50 %).

# %%
m = 8 if S.quick else 32
shapes = [(m, k), (m,), (2, m), (2,)]
D = sum(math.prod(shape) for shape in shapes)
torch.manual_seed(0)
theta0 = torch.cat([torch.randn(m * k) / math.sqrt(k), torch.zeros(m),
                    torch.zeros(2 * m), torch.zeros(2)])                         # (D,): the initial weights


def unflatten(theta: torch.Tensor) -> list[torch.Tensor]:
    return [part.view(shape) for part, shape in zip(theta.split([math.prod(s) for s in shapes]), shapes)]


def logits(theta: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    W1, b1, W2, b2 = unflatten(theta)
    return torch.relu(X @ W1.T + b1) @ W2.T + b2                                 # (N, 2)


def train_subspace(P: torch.Tensor | None, X, y, X_dev, y_dev, steps: int = 300, lr: float = 0.05) -> float:
    """Train z with θ = θ0 + P·z (P None: train θ itself), full-batch Adam; returns dev accuracy."""
    z = torch.zeros(D if P is None else P.shape[1], requires_grad=True)
    optimizer = torch.optim.Adam([z], lr=lr)
    for _ in range(steps):
        theta = theta0 + (z if P is None else P @ z)
        loss = torch.nn.functional.cross_entropy(logits(theta, X), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    with torch.no_grad():
        theta = theta0 + (z if P is None else P @ z)
        return float((logits(theta, X_dev).argmax(-1) == y_dev).float().mean())


DIMS = [1, 2, 4, 8, 16, 32, 64] if S.quick else [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
g = torch.Generator().manual_seed(0)
P_all = torch.randn(D, max(DIMS), generator=g)
P_all /= P_all.norm(dim=0, keepdim=True)              # unit columns; P for dimension d = the first d columns
print(f"D = {D:,} values in the network; P is ({D:,} × {max(DIMS)})")

def smallest_d(accuracies: list[float], bar: float) -> int | None:
    """The smallest d of DIMS whose accuracy reaches `bar` (None: none does)."""
    return next((d for d, acc in zip(DIMS, accuracies) if acc >= bar), None)


majority = max(float(y_dev.float().mean()), 1 - float(y_dev.float().mean()))   # always answering one class
curves, full, d90 = {}, {}, {}
for name, (X, y, X_dev, y_dev) in features.items():
    full[name] = train_subspace(None, X, y, X_dev, y_dev)
    curves[name] = [train_subspace(P_all[:, :d], X, y, X_dev, y_dev) for d in DIMS]
    d90[name] = smallest_d(curves[name], 0.9 * full[name])
    print(f"{name:19} all {D:,} values: dev acc {full[name]:.3f}; subspace accuracies "
          f"{[round(a, 3) for a in curves[name]]}; d90 = {d90[name]}")
bar = 0.9 * full["pretrained MiniLM"]
reach = {name: smallest_d(accs, bar) for name, accs in curves.items()}
print(f"always answering the majority class: {majority:.3f}")
print(f"one common bar, 90 % of the pretrained network's {full['pretrained MiniLM']:.3f} = {bar:.3f}: reached at d = "
      + ", ".join(f"{reach[name] if reach[name] else f'> {max(DIMS)}'} ({name})" for name in curves))

# %%
fig, ax = plt.subplots(figsize=(7, 3.8))
for (name, accs), color in zip(curves.items(), ("#47a", "#c44")):
    ax.plot(DIMS, accs, marker="o", color=color, label=f"{name}: subspace of dimension d")
    ax.axhline(full[name], color=color, ls=":", label=f"{name}: all {D:,} values")
    ax.axhline(0.9 * full[name], color=color, ls="--", lw=0.8)
ax.set(xscale="log", xlabel="subspace dimension d", ylabel="dev accuracy", title="intrinsic dimension (dashed: 90 %)")
ax.legend(fontsize=7)
fig.tight_layout()

# %% [markdown]
# Read the two curves against each other. With pretrained features, a subspace of a few dozen dimensions
# gets most of what training all D values gets, and at every d the pretrained curve should lie above the
# random one. A caution about d90 itself: it is measured against each model's *own* full accuracy, and the
# random-feature network barely beats always answering the majority class, so 90 % of its (poor) score is
# cheap to reach — compare on the common bar instead, where the random features need far more dimensions or
# never get there. That is the intuition the LoRA paper borrows: a good pretrained model leaves little to
# change, and the change lives in a small space. (This is a small stand-in for the real experiment: 400 dev
# sentences give a standard error of about 2.5 points, so single points of the curves move with the seed.)
#
# ## 2. Why low rank suffices: the spectrum of a real full fine-tuning update
#
# LoRA *assumes* that each weight's update has a low "intrinsic rank". Test it: fine-tune all of MiniLM on
# SST-2 (the full fine-tuning run of lesson 4, reused from the cache or trained now), form
# ΔW = W_ft − W0 for every attention matrix and look at its singular values. Full fine-tuning is free to
# use all 384 directions.

# %%
full_run = kit.train_run(S, "full")
tuned = load_file(str(full_run.tensors))                                 # every trained tensor, by name
base = kit.classifier(S)
layers = base.config.num_hidden_layers
updates = {}
for layer in range(layers):
    for matrix in ("query", "value"):
        name = f"bert.encoder.layer.{layer}.attention.self.{matrix}"
        W0 = base.get_submodule(name).weight.detach().double()
        updates[name] = tuned[f"{name}.weight"].double() - W0                  # ΔW (d, k), rank up to 384

spectra = {name: torch.linalg.svdvals(delta) for name, delta in updates.items()}
probe = torch.randn(next(iter(updates.values())).shape, generator=g, dtype=torch.float64)
random_spectrum = torch.linalg.svdvals(probe)


def energy_in_top(s: torch.Tensor, r: int) -> float:
    """Fraction of ‖ΔW‖_F² carried by the top r singular values."""
    return float((s[:r] ** 2).sum() / (s ** 2).sum())


print(f"{'ΔW of full fine-tuning':42} {'‖ΔW‖_F':>7} {'eff. rank':>9} {'top-1':>6} {'top-8':>6} {'top-64':>6}")
for name, s in spectra.items():
    print(f"{name:42} {float(s.norm()):7.3f} {effective_rank(s):9.1f} {energy_in_top(s, 1):6.1%} "
          f"{energy_in_top(s, 8):6.1%} {energy_in_top(s, 64):6.1%}")
print(f"{'a random Gaussian matrix, same shape':42} {'':7} {effective_rank(random_spectrum):9.1f} "
      f"{energy_in_top(random_spectrum, 1):6.1%} {energy_in_top(random_spectrum, 8):6.1%} "
      f"{energy_in_top(random_spectrum, 64):6.1%}")

fig, ax = plt.subplots(figsize=(7, 3.6))
for name, s in spectra.items():
    ax.plot((s / s[0]).numpy(), color="#47a" if "query" in name else "#c44", alpha=0.6, lw=1)
ax.plot((random_spectrum / random_spectrum[0]).numpy(), color="black", ls="--", label="random matrix")
ax.plot([], [], color="#47a", label="ΔWq, full fine-tuning")
ax.plot([], [], color="#c44", label="ΔWv, full fine-tuning")
ax.set(yscale="log", xlabel="index i", ylabel="σ_i / σ_1", title="singular values of the full fine-tuning update")
ax.legend()
fig.tight_layout()

# %% [markdown]
# Effective rank (Roy & Vetterli 2007) is exp of the entropy of the normalised singular values: r for r equal
# values, 1 when one direction carries everything. If the full update concentrates in its first singular
# directions far more than a random matrix does, a rank-r LoRA can express most of it — the empirical basis
# of "low intrinsic rank". Does LoRA find those directions? Compare the input directions of the r = 8 LoRA
# adapter's A with the top-8 right-singular vectors of the full update, with the subspace similarity φ of
# lesson 4 (random level: 8/384 ≈ 0.02).

# %%
lora8 = kit.lora_run(S, 8)
deltas, _ = load_deltas(lora8.adapter)
print(f"{'matrix':42} {'φ(LoRA r=8, full FT top-8)':>27} {'random':>7}")
for delta in deltas:
    _, _, Vh_full = torch.linalg.svd(updates[delta.name], full_matrices=False)
    U_lora = right_singular_vectors(delta.A)                                    # (k, 8)
    overlap = float((U_lora.T @ Vh_full[:8].T).pow(2).sum() / 8)                # φ(8, 8)
    print(f"{delta.name:42} {overlap:27.3f} {8 / delta.d_in:7.3f}")

# %% [markdown]
# How to read the overlap: 1 would mean LoRA's eight input directions are exactly the full update's top eight,
# the random column what unrelated directions give. Values several times the random level but far from 1
# say that the two methods, which reach similar accuracy, share part of their directions and not others:
# many different low-rank updates solve the same task.
#
# ## 3. Feature amplification, and the three ways to adapt a model
#
# Lesson 4 measured the amplification factor ‖ΔW‖_F / ‖Uᵀ·W·V‖_F on LoRA's updates. The paper's
# interpretation (§7.3): the low-rank update does not copy W's dominant directions; it picks directions that
# W already contains but *does not emphasise* — task-specific features learned in pretraining — and
# amplifies them by a large factor (≈21.5 for GPT-3 at r = 4). If that is what adaptation is, a handful of
# directions per matrix is all it takes. The same measurement on the rank-8 truncation of the *full*
# fine-tuning update, next to LoRA's own:

# %%
last = f"bert.encoder.layer.{layers - 1}.attention.self.query"
U, sv, Vh = torch.linalg.svd(updates[last], full_matrices=False)
full_top8 = make_delta("full FT, top 8", Vh[:8], U[:, :8] * sv[:8])            # ΔW_8 = (U·Σ)[:, :8] · Vh[:8]
W_last = base.get_submodule(last).weight.detach().double()
lora_delta = next(d for d in deltas if d.name == last)
for label, delta in (("full fine-tuning, top-8 part", full_top8), ("LoRA r = 8", lora_delta)):
    a = amplification_of(delta, W_last)
    print(f"{label:30} ‖ΔW‖_F {a.delta_fro:6.3f}   ‖UᵀWV‖_F: ΔW's dirs {a.proj_delta:6.3f} "
          f"({a.proj_delta / a.proj_random:.1f}× random), W's top-8 {a.proj_w_top:6.2f}, random {a.proj_random:6.3f}"
          f"   amplification {a.amplification:6.1f}")

# %% [markdown]
# Two different things are in these rows. *Alignment* — how much more of W lies in ΔW's directions than in
# random ones (the "× random") — says whether the update works on features W already has. The *amplification
# factor* divides ‖ΔW‖_F by that projection, so it also grows with how far training moved the weights
# (learning rate, steps): full fine-tuning here ran with a 60× smaller learning rate and moved W far less,
# so its factor is small even where its directions are aligned. Within one method and one training recipe,
# as in lesson 4 (r = 8 against r = 64), the factor is the paper's measure.

# %% [markdown]
# The route closes with the comparison this lesson series has measured piece by piece:
#
# | method | where it adds parameters | inference cost | lesson |
# |---|---|---|---|
# | adapter layers | small networks *in series* after sublayers | extra sequential work in every block | 4 |
# | prefix-tuning | l trainable key/value vectors per layer | every attention also reads l more positions | below |
# | LoRA | a low-rank branch *in parallel* to chosen matrices | none once merged (W = W0 + s·B·A) | 2, 4 |
#
# Prefix-tuning's cost is easy to count: with l prefix positions, every query attends to s + l keys instead
# of s, so each layer's attention products (Q·Kᵀ and the weighted sum of V) grow by l/s — and in the
# prefix-embedding variant the virtual tokens take l positions of the input itself.

# %%
prefix_length, tokens = 16, 32


def eager_encoder() -> torch.nn.Module:
    """MiniLM with plain ("eager") attention: FlopCounterMode sees its matrix products (the fused CPU kernel
    of the default attention is not counted)."""
    return load_model(S.model, task="base", attn_implementation="eager")


with_prefix = METHODS["prefix"](eager_encoder(), length=prefix_length)
ids = torch.randint(1000, 2000, (1, tokens), generator=g)
flops = {}
for name, model in (("base", eager_encoder()), ("prefix", with_prefix)):
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    flops[name] = counter.get_total_flops()
print(f"{tokens} tokens: base {flops['base']:,} FLOPs, with a length-{prefix_length} prefix {flops['prefix']:,} "
      f"(+{flops['prefix'] / flops['base'] - 1:.1%})")

# %% [markdown]
# ## Check yourself
#
# 1. How many bytes would a dense fp32 P need for all of all-MiniLM-L6-v2's parameters at d = 1000?
#    (By hand: 4 · D · d.) Compare with what torch allocates for such a tensor (on the meta device).
# 2. The columns of P were normalised: what is the norm of column 1 of P_all? (1, by construction; measure it.)
# 3. The share of ‖ΔW‖_F² in the top-8 directions of the last layer's full-FT ΔWq, two ways: from the
#    singular values, and by projecting ΔW onto its top-8 left singular vectors (‖U8ᵀ·ΔW‖_F² / ‖ΔW‖_F²).
# 4. How many values does LoRA r = 1 on Wq, Wv train in MiniLM (no head)? By hand 2·6·1·(384 + 384).
# 5. Prefix-tuning's extra attention FLOPs by hand: per layer, Q·Kᵀ and probabilities·V each gain
#    2·tokens·l·d_model FLOPs: 2 · L · 2 · tokens · l · d_model in total.

# %%
D_minilm = sum(p.numel() for p in pretrained.parameters())
answer_1 = 4 * D_minilm * 1000
checks.equal("bytes of a dense fp32 P for all of MiniLM at d=1000", answer_1,
             torch.empty(D_minilm, 1000, device="meta").nbytes)

checks.close("norm of a column of P", 1.0, float(P_all[:, 0].norm()), rel=1e-5)

s_last = spectra[last]
answer_3 = energy_in_top(s_last, 8)
U8 = torch.linalg.svd(updates[last], full_matrices=False).U[:, :8]
checks.close("energy of the top-8 directions: σ's vs projection", answer_3,
             float((U8.T @ updates[last]).norm() ** 2 / updates[last].norm() ** 2), rel=1e-9)

config = base.config
answer_4 = 2 * config.num_hidden_layers * 1 * (config.hidden_size + config.hidden_size)
checks.equal("LoRA r=1 on Wq, Wv: by hand vs plan_injection", answer_4,
             sum(p.num_params for p in loralab.plan_injection(pretrained, LoraConfig(r=1))))

answer_5 = 2 * config.num_hidden_layers * 2 * tokens * prefix_length * config.hidden_size
checks.equal("prefix-tuning extra FLOPs: by hand vs FlopCounterMode", answer_5, flops["prefix"] - flops["base"])
