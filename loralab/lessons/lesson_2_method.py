# %% [markdown]
# # Lesson 2 — The method: LoRA's forward pass, B = 0, α/r, merging and task switching
#
# Stage 2 of the route: LoRA from the mathematical side. A pretrained layer computes h = W0·x. LoRA freezes
# W0 and adds a trainable low-rank update (Hu et al. 2021, eq. 3):
#
#     h = W0·x + ΔW·x = W0·x + s·B·A·x        W0: d×k (frozen)   B: d×r   A: r×k   s = α/r
#
# We compute this by hand on small matrices, see why B starts at zero, measure what the scale α/r does when
# r changes, and then merge and switch real adapters trained on all-MiniLM-L6-v2 for two GLUE tasks.

# %%
import copy
import random
import time

import matplotlib.pyplot as plt
import torch
from torch import nn

import loralab
from loralab import LoraConfig
from loralab.lessons import kit
from loralab.models import load_model

S = kit.settings()
checks = kit.Checks()


class OneLayer(nn.Module):
    """The smallest model LoRA can adapt: one linear layer called `proj` (nn.Linear stores W as (d, k))."""

    def __init__(self, k: int, d: int) -> None:
        super().__init__()
        self.proj = nn.Linear(k, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def factors(model: nn.Module, adapter: str = "default"):
    """The LoRA factors (A, B, scale s) of the model's only adapted layer."""
    (_, layer), = loralab.lora_layers(model)
    return layer.lora_adapters[adapter]


# %% [markdown]
# ## 1. The forward pass by hand
#
# Take d = 4 outputs, k = 3 inputs and rank r = 1, with small integers so you can follow along on paper:

# %%
W0 = torch.tensor([[1., 0., 2.],
                   [0., 1., 0.],
                   [1., 1., 1.],
                   [2., 0., 0.]])            # (d, k) = (4, 3), frozen
x = torch.tensor([1., 2., 3.])               # (k,) = (3,)
A = torch.tensor([[1., 0., 1.]])             # (r, k) = (1, 3)
B = torch.tensor([[1.], [0.], [2.], [-1.]])  # (d, r) = (4, 1)
alpha, r = 2.0, 1
s = alpha / r                                # the scale: 2

h_base = W0 @ x                              # (4,)  = [7, 2, 6, 2]
a = A @ x                                    # (1,)  = [4]: x squeezed through r = 1 dimension
h = h_base + s * (B @ a)                     # (4,)  = [7, 2, 6, 2] + 2·[4, 0, 8, -4] = [15, 2, 22, -6]
print("W0·x =", h_base.tolist(), "| A·x =", a.tolist(), "| h =", h.tolist())
print("ΔW = s·B·A, shape", tuple((s * B @ A).shape), "— a d×k matrix of rank", int(torch.linalg.matrix_rank(B @ A)))

# %% [markdown]
# The cost: W0·x is d·k multiply-adds, the LoRA path r·k + d·r = r·(d + k) — and since the two paths are
# *parallel* (both read x, their results are added), a GPU can compute them side by side. Now the same with
# loralab: `inject` wraps the layer, freezes W0 and creates A (r×k) and B (d×r) for us.

# %%
tiny = OneLayer(3, 4)
with torch.no_grad():
    tiny.proj.weight.copy_(W0)
loralab.inject(tiny, LoraConfig(r=1, alpha=2.0, targets=["proj"]))
f = factors(tiny)
print("A:", tuple(f.A.shape), "B:", tuple(f.B.shape), "scale:", f.scale, "| B at init:", f.B.flatten().tolist())
print("trainable:", [name for name, p in tiny.named_parameters() if p.requires_grad])
with torch.no_grad():
    f.A.copy_(A)
    f.B.copy_(B)
    print("loralab's h =", tiny(x).tolist())

# %% [markdown]
# ## 2. Why B = 0 at the start
#
# loralab (like the paper) initialises A randomly and **B = 0**, so ΔW = s·B·A = 0: the adapted model starts
# *exactly* at the pretrained model. Fine-tuning begins from what pre-training learned, not from a random
# perturbation of it. Check it on the real model: the output with a freshly injected adapter is the base
# output, bit for bit.

# %%
tok = kit.tokenizer(S)
sst2_train, sst2_dev = kit.task_batches(S, "sst2", tok)
batch = {k: v for k, v in sst2_dev[0].items() if k != "labels"}        # input_ids (64, T), attention_mask ...
base_model = kit.classifier(S)
with torch.no_grad():
    base_logits = base_model(**batch).logits                            # (64, 2)
adapted = loralab.inject(copy.deepcopy(base_model), LoraConfig(r=8, alpha=16, modules_to_save=["classifier"]))
with torch.no_grad():
    init_gap = (adapted(**batch).logits - base_logits).abs().max().item()
print(loralab.trainable_summary(adapted))
print("max |logits(adapted at init) − logits(base)| =", init_gap)

# %% [markdown]
# B = 0 has a second consequence, visible in the gradients. With a = A·x, the chain rule gives
#
#     ∂L/∂B = s · (∂L/∂h) · aᵀ         (d×r: non-zero as soon as A·x ≠ 0)
#     ∂L/∂A = s · Bᵀ · (∂L/∂h) · xᵀ    (r×k: zero while B = 0)
#
# So the first step moves only B; from then on both factors learn. If A were zero too, *both* gradients
# would vanish and LoRA would never leave ΔW = 0 — that is why one factor has to be random.

# %%
def lora_gradients(a_init: torch.Tensor) -> tuple[float, float]:
    """‖∂L/∂A‖, ‖∂L/∂B‖ at B = 0 for the small example, with L = ‖h − target‖²."""
    model = loralab.inject(OneLayer(3, 4), LoraConfig(r=1, alpha=2.0, targets=["proj"]))
    with torch.no_grad():
        model.proj.base_layer.weight.copy_(W0)
        factors(model).A.copy_(a_init)
    loss = ((model(x) - torch.tensor([0., 1., 0., 1.])) ** 2).sum()
    loss.backward()
    g = factors(model)
    return g.A.grad.norm().item(), g.B.grad.norm().item()


grad_A, grad_B = lora_gradients(A)
print(f"B = 0, A random: ‖∂L/∂A‖ = {grad_A:.3f}, ‖∂L/∂B‖ = {grad_B:.3f}")
print("B = 0, A = 0:      ‖∂L/∂A‖ = {:.3f}, ‖∂L/∂B‖ = {:.3f}".format(*lora_gradients(torch.zeros(1, 3))))

# %% [markdown]
# ## 3. The scale s = α/r, and changing r at fixed α
#
# Why divide by r? The paper: "we simply set α to the first r we try and do not tune it", because scaling by
# α/r "helps to reduce the need to retune hyperparameters when we vary r". With Adam, each step moves every
# entry of A and B by roughly the learning rate, whatever the gradient's size — so with more columns in B
# (larger r) the product B·A grows faster. Let's measure it on a real matrix: MiniLM's query projection,
# fitted for 20 Adam steps to a target that needs a small low-rank change, at r = 1 … 64, with three scales:
# the paper's **α/r**, a constant **α** (no division), and rsLoRA's **α/√r** (Kalajdzievic 2023).

# %%
encoder = load_model(S.model, task="base")
query = encoder.encoder.layer[0].attention.self.query                    # nn.Linear: W0 (d, k)
d_model = query.weight.shape[0]
with torch.no_grad():                                                    # real inputs: the token embeddings of
    X = encoder.embeddings(input_ids=batch["input_ids"]).reshape(-1, d_model)   # 64 sentences, (tokens, k)
g = torch.Generator().manual_seed(0)
target_change = 0.05 * torch.randn(d_model, 4, generator=g) @ torch.randn(4, d_model, generator=g)   # rank 4
with torch.no_grad():
    Y = query(X) + X @ target_change.T                                   # (tokens, d)

RANKS = [1, 2, 4, 8, 16, 64] if not S.quick else [1, 2, 4, 8, 16]
SCALES = {"α/r (the paper)": lambda r: dict(alpha=16.0),                 # s = 16/r
          "α (no division)": lambda r: dict(alpha=16.0 * r),             # s = 16
          "α/√r (rsLoRA)": lambda r: dict(alpha=16.0, rslora=True)}      # s = 16/√r
delta_norms = {name: [] for name in SCALES}
for name, scale_options in SCALES.items():
    for rank in RANKS:
        layer_model = OneLayer(d_model, d_model)
        layer_model.proj = copy.deepcopy(query)
        torch.manual_seed(0)
        loralab.inject(layer_model, LoraConfig(r=rank, targets=["proj"], **scale_options(rank)))
        optimizer = torch.optim.Adam([p for p in layer_model.parameters() if p.requires_grad], lr=1e-3)
        for _ in range(20):
            loss = ((layer_model(X) - Y) ** 2).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        delta_norms[name].append(factors(layer_model).delta_weight().norm().item())   # ‖ΔW‖_F = ‖s·B·A‖_F
    values = delta_norms[name]
    print(f"{name:16} ‖ΔW‖_F after 20 steps, r = {RANKS}: {[round(v, 2) for v in values]}  "
          f"(r = {RANKS[-1]} vs r = 1: ×{values[-1] / values[0]:.2f})")

fig, ax = plt.subplots(figsize=(6, 3.6))
for name, values in delta_norms.items():
    ax.plot(RANKS, values, marker="o", label=name)
ax.set(xscale="log", yscale="log", xlabel="rank r", ylabel="‖ΔW‖_F after 20 Adam steps",
       title="how far one learning rate moves ΔW, by scale rule")
ax.legend()
fig.tight_layout()

# %% [markdown]
# With a constant scale s = α the update grows several-fold from r = 1 to r = 64, so every new r would need a
# new learning rate. Dividing by r removes that growth: with α/r the size stays within a small factor across
# the whole range, drifting *down* at large r (a large-r adapter moves a little more slowly at the same
# learning rate). rsLoRA's α/√r (Kalajdzievic 2023) argues that 1/r over-corrects for large r; here it drifts
# slightly up instead. The practical rule from the paper: fix α once (loralab's default is 16) and compare
# ranks at that α — which is what lesson 3 does.
#
# ## 4. Merging, and switching tasks
#
# For inference the update can be folded into the weight: **W = W0 + s·B·A**. The merged layer is an ordinary
# d×k matrix, so the model costs exactly what the base model costs — no extra latency. To switch task,
# subtract one update and add another: W0 + s·B1·A1 → W0 + s·B2·A2. We train (or reuse from the cache) two
# rank-8 adapters on Wq and Wv of all-MiniLM-L6-v2: one for SST-2 (sentiment of a movie-review sentence) and
# one for MRPC (are two sentences paraphrases?). Each also trains its own copy of the 2-way classifier head.

# %%
sst2_run = kit.lora_run(S, r=8)
mrpc_run = kit.train_run(S, "lora", data="mrpc", r=8, alpha=16.0)
mrpc_train, mrpc_dev = kit.task_batches(S, "mrpc", tok)

model = kit.classifier(S)
loralab.load_adapter(model, sst2_run.adapter, adapter="sst2")
loralab.load_adapter(model, mrpc_run.adapter, adapter="mrpc")
print("adapters:", loralab.list_adapters(model))


def task_accuracy(active: str) -> dict[str, float]:
    loralab.set_adapter(model, active)
    return {"SST-2": kit.accuracy(model, sst2_dev), "MRPC": kit.accuracy(model, mrpc_dev)}


table = {name: task_accuracy(name) for name in ("sst2", "mrpc")}
print(f"dev accuracy ({S.recipe.dev_sentences} examples per task)   on SST-2   on MRPC")
for name, row in table.items():
    print(f"  active adapter {name:5}                      {row['SST-2']:7.3f}  {row['MRPC']:7.3f}")

# %% [markdown]
# Each adapter is best on its own task (with this little training the MRPC adapter may do no better than always
# answering "paraphrase", which is right for 68 % of MRPC pairs). Now merge: the outputs must not change, only
# the cost of computing them.

# %%
loralab.set_adapter(model, "sst2")
with torch.no_grad():
    unmerged_logits = model(**batch).logits
started = time.perf_counter()
loralab.merge(model)                                  # W0 += s·B·A in all 12 adapted matrices
merge_ms = (time.perf_counter() - started) * 1000
with torch.no_grad():
    merged_logits = model(**batch).logits
print(f"merge took {merge_ms:.1f} ms; max |merged − unmerged| logits = "
      f"{(merged_logits - unmerged_logits).abs().max().item():.2e} (float32 rounding)")

name, layer = next(iter(loralab.lora_layers(model)))
W_sst2 = layer.base_layer.weight.detach().clone()     # W0 + ΔW_sst2, as stored in the merged layer
switch_ms = []
for _ in range(5):                                    # sst2 -> mrpc -> sst2, five times, on the merged model
    for target in ("mrpc", "sst2"):
        started = time.perf_counter()
        loralab.set_adapter(model, target)            # unmerge the old ΔW, merge the new one
        switch_ms.append((time.perf_counter() - started) * 1000)
drift = (layer.base_layer.weight - W_sst2).abs().max().item()
started = time.perf_counter()
load_model(S.model, task="sequence-classification", num_labels=2)
load_s = time.perf_counter() - started
adapter_bytes = (sst2_run.adapter / "adapter_model.safetensors").stat().st_size
model_bytes = 4 * sum(p.numel() for p in base_model.parameters())
print(f"task switch on the merged model: median {sorted(switch_ms)[len(switch_ms) // 2]:.1f} ms; "
      f"loading a whole model instead: {load_s:.2f} s")
print(f"after 10 switches {name} differs from W0 + ΔW_sst2 by at most {drift:.1e}")
print(f"one task on disk: adapter {adapter_bytes / 1e6:.2f} MB vs a full fp32 model {model_bytes / 1e6:.1f} MB")

# %% [markdown]
# Switching task is arithmetic on the 12 adapted matrices — no second model in memory, nothing but a small
# file on disk per task — and every switch leaves the weights where they should be, up to float32 rounding.
# (Loading a whole model can be quick too when its file sits in the operating system's cache, as here; it
# still means one full-size copy per task.) This is the paper's deployment story: one frozen base in
# memory, one small file per task.
#
# ## Check yourself
#
# 1. Compute h = W0·x + s·B·A·x for the small example by hand (done in section 1) and compare with loralab.
# 2. Predict the shapes of A, B and ΔW for LoRA with r = 4 on the MLP's down-projection of MiniLM's first
#    layer, `nn.Linear(1536, 384)` (d = 384 outputs, k = 1536 inputs).
# 3. At B = 0, what is ∂L/∂A? (Section 2's formula, by hand: zero.) Compare with autograd.
# 4. Two outputs of the first adapted layer for the same input; one came from the merged model, one from the
#    base. Which is the merged one? Rule: merged − base = s·B·A·x, with A, B read from the adapter *file*.
# 5. How many parameters does the model have after `merge_and_unload`? (Count by hand: the base encoder
#    plus a 2-way head on the 384-wide pooled output: 22,713,216 + 384·2 + 2 for MiniLM.)

# %%
answer_1 = [15.0, 2.0, 22.0, -6.0]                     # by hand, section 1 (small integers: exact in float32)
checks.equal("h by hand vs loralab's layer", answer_1, tiny(x).detach().tolist())

config = base_model.config
d_out, d_in, rank = config.hidden_size, config.intermediate_size, 4     # by hand: Linear(1536, 384) -> W (384, 1536)
answer_2 = {"A": (rank, d_in), "B": (d_out, rank), "ΔW": (d_out, d_in)}
probe = loralab.inject(copy.deepcopy(base_model), LoraConfig(r=rank, targets=[r"re:.*layer\.0\.output\.dense"]))
f_probe = factors(probe)
checks.equal("shapes of A, B, ΔW on the MLP down-projection", answer_2,
             {"A": tuple(f_probe.A.shape), "B": tuple(f_probe.B.shape), "ΔW": tuple(f_probe.delta_weight().shape)})

checks.equal("‖∂L/∂A‖ at B = 0", 0.0, grad_A)

A_file, B_file, s_file = loralab.read_adapter(sst2_run.adapter).factors[name]
x_in = torch.randn(layer.base_layer.weight.shape[1], generator=g)
with torch.no_grad():
    merged_out = layer(x_in)                           # the merged model's layer (sst2 is merged)
    with loralab.disabled(model):
        base_out = layer(x_in)                         # adapters off: W0·x
coin = random.Random(2).random() < 0.5
first, second = (merged_out, base_out) if coin else (base_out, merged_out)
predicted_change = s_file * (B_file.float() @ (A_file.float() @ x_in))       # s·B·A·x from the file
# the merged output is the one from which the other differs by +s·B·A·x (not by −s·B·A·x)
answer_4 = "first" if (first - second - predicted_change).norm() < (second - first - predicted_change).norm() \
    else "second"
checks.equal("which output came from the merged model", answer_4, "first" if coin else "second")

plain = loralab.merge_and_unload(model)
answer_5 = sum(p.numel() for p in encoder.parameters()) + config.hidden_size * 2 + 2
checks.equal("parameters after merge_and_unload", answer_5, sum(p.numel() for p in plain.parameters()))
