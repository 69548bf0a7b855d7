# %% [markdown]
# # Lesson 3 — LoRA in a Transformer: its weight matrices, what each choice costs, and r = 1 … 64
#
# Stage 3 of the route. A Transformer block is mostly matrices: four in self-attention (Wq, Wk, Wv, Wo) and
# two or three in the MLP. LoRA can adapt any of them; the paper adapts only **Wq and Wv**. We list the
# matrices of two real models (all-MiniLM-L6-v2, an encoder, and SmolLM2-135M, a LLaMA-style decoder), count
# what each choice of targets costs, check the paper's GPT-3 numbers against `loralab budget`, and end with
# the route's closing practice: **train with r = 1, 2, 4, 8 and 64 side by side and watch convergence.**

# %%
import matplotlib.pyplot as plt
import torch

import loralab
from loralab import LoraConfig
from loralab.budget import estimate_budgets, resolve_targets
from loralab.lessons import kit
from loralab.models import load_model

S = kit.settings()
checks = kit.Checks()

# %% [markdown]
# ## 1. The weight matrices of a Transformer block
#
# In the matrix view W is (d_out, d_in) and a layer computes h = W·x (PyTorch's `nn.Linear.weight` has exactly
# this shape). Self-attention projects each token's hidden vector x (size d_model) to a query, a key and a
# value, and projects the attention result back: Wq, Wk, Wv, Wo. The MLP widens to d_ff and comes back.

# %%
minilm = load_model(S.model, task="base")
if S.quick:   # quick mode: a tiny random LLaMA (hidden 32) stands in for SmolLM2
    from loralab.testing import tiny_model
    smollm = tiny_model("llama")
    print("quick mode: 'SmolLM2' below is a 2-layer random LLaMA of hidden size 32")
else:
    smollm = load_model("smollm2-135m-instruct")


def block_matrices(model: torch.nn.Module, block: str) -> dict[str, tuple[int, int]]:
    """{module name inside the first block: weight shape (d_out, d_in)} for every linear layer of it."""
    return {name.split(block, 1)[1]: tuple(module.weight.shape) for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and block in name}


for title, model, block in (("all-MiniLM-L6-v2 (BERT)", minilm, "encoder.layer.0."),
                            ("SmolLM2-135M (LLaMA)", smollm, "model.layers.0.")):
    config = model.config
    print(f"{title}: {config.num_hidden_layers} blocks, d_model {config.hidden_size}, "
          f"{config.num_attention_heads} heads, MLP width {config.intermediate_size}")
    for name, shape in block_matrices(model, block).items():
        print(f"    {name:28} W {shape}  ->  {shape[0] * shape[1]:>9,} values")

# %% [markdown]
# Two things to notice. MiniLM's attention matrices are all square (384×384), but SmolLM2 uses **grouped-query
# attention**: 9 query heads share 3 key/value heads, so Wk and Wv are only 192×576. And the MLP holds most
# of the values: in MiniLM two 1536×384 matrices against four 384×384 ones. (LLaMA's MLP is *gated*: a gate
# and an up projection side by side, then down.)
#
# ## 2. What each choice of targets costs
#
# LoRA on a (d_out × d_in) matrix trains A (r × d_in) and B (d_out × r): **r·(d_in + d_out)** values per
# matrix, per layer. `loralab.plan_injection` is a dry run: it lists every layer `inject` would adapt.
# `resolve_targets` translates the paper's names (q, k, v, o, up, down, gate) to each family's module names.

# %%
CHOICES = {"Wq": ["q"], "Wq, Wv": ["q", "v"], "Wq, Wk, Wv, Wo": ["q", "k", "v", "o"], "all linear": "all-linear"}


def lora_values(model: torch.nn.Module, roles, r: int = 8) -> int:
    """Values LoRA would train (A and B only, no head) for these targets, from the injection plan."""
    targets = resolve_targets(model.config.model_type, roles if isinstance(roles, list) else [roles]).targets
    return sum(m.num_params for m in loralab.plan_injection(model, LoraConfig(r=r, targets=targets)))


costs = {title: {choice: lora_values(model, roles) for choice, roles in CHOICES.items()}
         for title, model in (("MiniLM", minilm), ("SmolLM2", smollm))}
totals = {"MiniLM": sum(p.numel() for p in minilm.parameters()),
          "SmolLM2": sum(p.numel() for p in smollm.parameters())}
print(f"{'targets at r = 8':18} {'MiniLM':>22} {'SmolLM2':>22}")
for choice in CHOICES:
    cells = [f"{costs[m][choice]:>10,} ({costs[m][choice] / totals[m]:6.2%})" for m in ("MiniLM", "SmolLM2")]
    print(f"{choice:18} {cells[0]:>22} {cells[1]:>22}")

fig, ax = plt.subplots(figsize=(7, 3.4))
width = 0.38
for i, model_name in enumerate(("MiniLM", "SmolLM2")):
    ax.bar([j + i * width for j in range(len(CHOICES))], list(costs[model_name].values()), width, label=model_name)
ax.set_xticks([j + width / 2 for j in range(len(CHOICES))], list(CHOICES))
ax.set(yscale="log", ylabel="trainable LoRA values (r = 8)", title="what each choice of target matrices costs")
ax.legend()
fig.tight_layout()

# %% [markdown]
# Why Wq and Wv? The paper (Table 5) fixed the budget at 18M values on GPT-3 and compared where to spend it:
# Wq alone at r = 8 scored 70.4 / 91.0 (WikiSQL / MNLI), Wv alone 73.0 / 91.0, **Wq and Wv at r = 4
# 73.7 / 91.3**, all four at r = 2 73.7 / 91.7. Spreading a budget over more matrix types at a lower rank
# beats one type at a higher rank; Wq + Wv is the cheapest pair that reaches the top. (MLP and LayerNorm
# adaptation were left for future work.) `loralab experiment targets` repeats Table 5 on MiniLM.
#
# ## 3. GPT-3 175B, by hand and by `loralab budget`
#
# The paper's formula is |Θ| = 2 · L̂ · d_model · r, where L̂ counts the adapted matrices: a square d×d matrix
# costs r·(d + d) = 2·d·r. GPT-3 has 96 layers and d_model = 12288; adapting Wq and Wv gives L̂ = 192.

# %%
gpt3 = dict(zip((1, 4, 8), estimate_budgets("gpt3-175b", ranks=(1, 4, 8), targets=["q", "v"])))   # one skeleton
for r, budget in gpt3.items():
    fp16 = budget.file_sizes["fp16"].tensor_bytes
    print(f"r = {r}: {budget.trainable_params:>12,} trainable values of {budget.skeleton.total_params:,} "
          f"({budget.trainable_params / budget.skeleton.total_params:.1e}); {fp16 / 1e6:.1f} MB in fp16")
print("the paper: 4.7M at r = 1, 37.7M at r = 8; 'the 18M budget' at r = 4")

# %% [markdown]
# ## 4. Try different r and watch convergence
#
# The route ends with practice: train on a small model with several ranks and watch the training process.
# We fine-tune all-MiniLM-L6-v2 on GLUE SST-2 (is a movie-review sentence positive?) with LoRA on Wq, Wv at
# r = 1, 2, 4, 8 and 64, α = 16 for every r (so the scale α/r shrinks as r grows, as in the paper), the same
# seeded data, learning rate and number of steps. The classifier head is new, so it trains too. Runs are
# cached in the lessons' cache folder: lesson 4 analyses these same adapters.

# %%
RANKS = (1, 2, 4, 8, 16) if S.quick else (1, 2, 4, 8, 64)
runs = {r: kit.lora_run(S, r) for r in RANKS}
head_only = kit.train_run(S, "head")          # the reference point "r = 0": only the classifier head trains
recipe = S.recipe
print(f"{recipe.steps} steps of {recipe.batch_size} sentences, lr {runs[1].lr:g}, dev = first "
      f"{recipe.dev_sentences} SST-2 dev sentences")
print(f"{'r':>3} {'trained values':>15} {'s = α/r':>8} {'final loss':>11} {'dev acc':>8} {'s/step':>7}")
for r, run in [(0, head_only), *runs.items()]:
    final = sum(run.losses[-10:]) / len(run.losses[-10:])
    scale = f"{16 / r:>8.3g}" if r else f"{'—':>8}"
    print(f"{r:>3} {run.trainable:>15,} {scale} {final:>11.3f} {run.dev_accuracy:>8.3f} "
          f"{run.seconds_per_step:>7.2f}")
print("(r = 0: no LoRA, only the classifier head trains)")

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
for r, run in runs.items():
    axes[0].plot(kit.smooth(run.losses), label=f"r = {r}")
axes[0].plot(kit.smooth(head_only.losses), color="black", ls="--", label="head only (no LoRA)")
axes[0].set(xlabel="optimizer step", ylabel="training loss (moving average of 10)",
            title="convergence at different ranks (α = 16)")
axes[0].legend()
accuracies = [run.dev_accuracy for run in runs.values()]
standard_errors = [(a * (1 - a) / recipe.dev_sentences) ** 0.5 for a in accuracies]     # binomial
axes[1].errorbar(list(runs), accuracies, yerr=standard_errors, marker="o", capsize=3)
axes[1].axhline(head_only.dev_accuracy, color="black", ls="--", label="head only (no LoRA)")
axes[1].legend(loc="lower right")
for r, run in runs.items():
    axes[1].annotate(f"{run.trainable:,}", (r, run.dev_accuracy), textcoords="offset points", xytext=(0, 6),
                     ha="center", fontsize=8)
axes[1].set(xscale="log", xlabel="rank r", ylabel="dev accuracy (± one standard error)", ylim=(0.45, 1.0),
            title="dev accuracy (labels: trained values incl. head)")
fig.tight_layout()


def first_step_below(losses, level: float) -> int | None:
    """First step where the smoothed loss is below `level` (a convergence-speed proxy), None if never."""
    return next((i for i, value in enumerate(kit.smooth(losses)) if value < level), None)


level = 0.6
for label, run in [*((f"r = {r}", run) for r, run in runs.items()), ("head only", head_only)]:
    step = first_step_below(run.losses, level)
    print(f"{label + ':':10} smoothed loss below {level} at step {step if step is not None else '— (not reached)'}")

# %% [markdown]
# How to read it. The rank multiplies the trained values by 64 from r = 1 to r = 64, but the curves do not
# separate by anything like that: a handful of directions per matrix is enough to start fitting the task.
# The dashed line is the floor — the same run with no LoRA at all, only the new head trained on the frozen
# encoder: what LoRA's low-rank updates add is the gap between it and the coloured curves.
# That is the paper's Table 6 (on GPT-3, r = 1 already matches r = 64 on WikiSQL and MNLI). With α fixed,
# the scale α/r makes each step's change of ΔW *smaller* at large r (lesson 2, section 3), so a large rank
# can even converge a little more slowly at the same learning rate. The error bars are one binomial standard
# error of the dev accuracy: with a few hundred dev sentences, differences of a few points are noise;
# `loralab experiment rank` runs the full-size version (500 steps of 16, the whole dev set).
#
# ## Check yourself
#
# 1. GPT-3 175B, LoRA r = 8 on Wq and Wv: compute the trainable values by hand, 2·96·8·(12288 + 12288),
#    and compare with `loralab budget`.
# 2. MiniLM, LoRA r = 8 on Wq and Wv, plus the new head (384·2 weights + 2 biases): how many values does the
#    trained adapter *file* hold? (By hand: 2·6·8·(384 + 384) + 770.)
# 3. SmolLM2-135M, LoRA r = 8 on Wk only, all 30 layers: by hand 30·8·(576 + 192) — Wk is 192×576.
# 4. Table 5's equal budgets: is Wq, Wv at r = 8 cheaper than Wq, Wk, Wv, Wo at r = 4 on MiniLM?
# 5. How many times more LoRA values does r = 64 train than r = 1 (head excluded)?

# %%
answer_1 = 2 * 96 * 8 * (12288 + 12288)                     # = 37,748,736
checks.equal("GPT-3 Wq,Wv r=8: by hand vs loralab budget", answer_1, gpt3[8].trainable_params)

config = minilm.config
L, d = config.num_hidden_layers, config.hidden_size
answer_2 = 2 * L * 8 * (d + d) + (d * 2 + 2)                # LoRA factors + classifier head
adapter_file = loralab.read_adapter(runs[8].adapter)
saved = sum(A.numel() + B.numel() for A, B, _ in adapter_file.factors.values()) \
    + sum(t.numel() for module in adapter_file.saved_modules.values() for t in module.values())
checks.equal("MiniLM Wq,Wv r=8 + head: by hand vs the saved adapter file", answer_2, saved)

sconfig = smollm.config
kv_width = sconfig.num_key_value_heads * (sconfig.hidden_size // sconfig.num_attention_heads)   # 3·64 = 192
answer_3 = sconfig.num_hidden_layers * 8 * (sconfig.hidden_size + kv_width)
checks.equal("SmolLM2 Wk r=8 over all layers: by hand vs plan_injection", answer_3, lora_values(smollm, ["k"]))

answer_4 = "equal"                                          # per layer: 2 matrices·8·2d = 4 matrices·4·2d = 32·d
two_at_8, four_at_4 = lora_values(minilm, ["q", "v"], r=8), lora_values(minilm, ["q", "k", "v", "o"], r=4)
checks.equal("Wq,Wv r=8 vs Wq,Wk,Wv,Wo r=4", answer_4, "equal" if two_at_8 == four_at_4 else "different")

head = d * 2 + 2
big, small = max(RANKS), min(RANKS)
answer_5 = big // small                                     # LoRA values grow linearly in r
checks.equal(f"LoRA values r={big} / r={small}", answer_5, (runs[big].trainable - head) // (runs[small].trainable - head))
