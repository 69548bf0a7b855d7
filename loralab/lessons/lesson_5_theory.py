# %% [markdown] lang="en"
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
# 4. **Forgetting** (Biderman et al. 2024, "LoRA Learns Less and Forgets Less"): how much of the base model's
#    own ability survives LoRA, and full fine-tuning — and that switching the adapter off gives the base back.

# %% [markdown] lang="zh"
# # 阶段 5:理论洞察——内在维度、特征放大、为什么低秩就够了
#
# 学习路线的第 5 阶段(路线中是选修,但"为什么"就在这里)。三个想法:
#
# 1. **内在维度**(Li 等,2018;Aghajanyan 等,2020):微调预训练模型可以在参数的一个很小的随机子空间里完成,
#    θ = θ0 + P·z,只训练 z。LoRA 论文以此为基础:如果*变化*只需要很少的维度,也许每个权重的变化只需要低秩。
# 2. **为什么低秩就够了**:我们取一次真实的*全量*微调更新 ΔW = W_ft − W0,看它的谱。它本身是低秩的吗?LoRA 找到的
#    是同样的方向吗?
# 3. **特征放大**,以及路线最后的方法对比:Adapter 串行执行(延迟),前缀占用序列,LoRA 并行执行并可合并掉。
# 4. **遗忘**(Biderman 等,2024,"LoRA Learns Less and Forgets Less"):LoRA 和全量微调之后,基础模型原有的能力还剩
#    多少——以及关掉适配器就能把基础模型原样找回。

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
from loralab.experiments.forgetting import paraphrase_auc, probe_pairs
from loralab.experiments.forgetting import sentence_embeddings as mean_pooled
from loralab.lessons import kit
from loralab.models import load_model

S = kit.settings()
t = S.t                     # t(English, Chinese): every text the code prints or draws, in the page's language
checks = kit.Checks(S)
S.announce()

# %% [markdown] lang="en"
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

# %% [markdown] lang="zh"
# ## 1. 内在维度:θ = θ0 + P·z
#
# 把网络的全部 D 个可训练参数展平成一个向量 θ。不直接训练 θ,而是固定一个随机的 D×d 矩阵 P(列为单位长度),只训练
# z ∈ R^d,从 z = 0 开始,这样训练恰好从 θ0 出发:
#
#     θ = θ0 + P·z          θ, θ0: (D,)   P: (D, d) 固定   z: (d,) 训练
#
# **内在维度** d90 是达到训练全部 θ 所得结果 90% 的最小 d。Aghajanyan 等发现(论文的结果):在 MRPC 上微调 RoBERTa,
# 大约 200 个参数就能达到全量微调的 90%,而且*预训练降低了内在维度*:预训练的起点越好,微调需要的方向越少。
#
# 对真实模型不可能用稠密的 P:对 MiniLM 的全部 2270 万个参数、d = 1000,它有 227 亿个数(fp32 下 91 GB)。
# Aghajanyan 等使用 **Fastfood 变换**,它在 O(D log d) 时间内施加一个随机 D×d 投影而无需存储它(随机符号、一个置换、
# 高斯缩放和两次 Walsh-Hadamard 变换);`loralab experiment intrinsic-dim` 在整个 MiniLM 上运行这个实验。这里我们保持
# P 稠密,网络也足够小,每一步都看得见:一个在冻结的 SST-2 句向量上训练的两层分类器,一次建立在**预训练的**
# all-MiniLM-L6-v2 上,一次建立在**同样架构但随机权重**的模型上——看看预训练对 d90 有什么影响。

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
# what the two feature sets are called (quick mode: the "pretrained" model is the tiny random one too)
PRE = t("tiny random model" if S.quick else "pretrained MiniLM", "微型随机模型" if S.quick else "预训练 MiniLM")
RND = t("random re-init" if S.quick else "random-init MiniLM", "重新随机初始化" if S.quick else "随机初始化 MiniLM")
features = {}
for name, encoder in ((PRE, pretrained), (RND, random_init)):
    X_train, y_train = sentence_embeddings(encoder, train_rows)
    X_dev, y_dev = sentence_embeddings(encoder, dev_rows)
    mean, std = X_train.mean(0), X_train.std(0) + 1e-6                         # standardise each feature
    features[name] = ((X_train - mean) / std, y_train, (X_dev - mean) / std, y_dev)
k = X_train.shape[1]
print(t(f"{n_train} training and {n_dev} dev sentences -> features of size k = {k}",
        f"{n_train} 个训练句子和 {n_dev} 个验证句子 -> 特征维度 k = {k}"))

# %% [markdown] lang="en"
# The network: h = relu(W1·x + b1), logits = W2·h + b2, with W1 (m, k), b1 (m,), W2 (2, m), b2 (2,). All its
# D values live in one vector θ; `unflatten` cuts θ back into the four tensors. W1 starts random and W2 at
# zero — the same trick as LoRA's B = 0: the network starts from "no opinion" (both classes at 50 %).

# %% [markdown] lang="zh"
# 网络:h = relu(W1·x + b1),logits = W2·h + b2,其中 W1 (m, k)、b1 (m,)、W2 (2, m)、b2 (2,)。它的全部 D 个参数都在一个
# 向量 θ 里;`unflatten` 把 θ 切回四个张量。W1 随机初始化,W2 从零开始——与 LoRA 的 B = 0 是同一个技巧:网络从"没有
# 倾向"出发(两类各 50%)。

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
print(t(f"D = {D:,} values in the network; P is ({D:,} × {max(DIMS)})", f"网络共 D = {D:,} 个参数;P 是 ({D:,} × {max(DIMS)})"))

def smallest_d(accuracies: list[float], bar: float) -> int | None:
    """The smallest d of DIMS whose accuracy reaches `bar` (None: none does)."""
    return next((d for d, acc in zip(DIMS, accuracies) if acc >= bar), None)


majority = max(float(y_dev.float().mean()), 1 - float(y_dev.float().mean()))   # always answering one class
curves, full, d90 = {}, {}, {}
for name, (X, y, X_dev, y_dev) in features.items():
    full[name] = train_subspace(None, X, y, X_dev, y_dev)
    curves[name] = [train_subspace(P_all[:, :d], X, y, X_dev, y_dev) for d in DIMS]
    d90[name] = smallest_d(curves[name], 0.9 * full[name])
    print(t(f"{name:19} all {D:,} values: dev acc {full[name]:.3f}; subspace accuracies "
            f"{[round(a, 3) for a in curves[name]]}; d90 = {d90[name]}",
            f"{name:19} 全部 {D:,} 个参数:验证准确率 {full[name]:.3f};子空间准确率 "
            f"{[round(a, 3) for a in curves[name]]};d90 = {d90[name]}"))
bar = 0.9 * full[PRE]
reach = {name: smallest_d(accs, bar) for name, accs in curves.items()}
print(t(f"always answering the majority class: {majority:.3f}", f"总是回答多数类:{majority:.3f}"))
print(t(f"one common bar, 90 % of the first network's {full[PRE]:.3f} = {bar:.3f}: reached at d = ",
        f"共同标准线,第一个网络 {full[PRE]:.3f} 的 90% = {bar:.3f}:达到时的 d = ")
      + ", ".join(f"{reach[name] if reach[name] else f'> {max(DIMS)}'} ({name})" for name in curves))

# %%
fig, ax = plt.subplots(figsize=(7, 3.8))
for (name, accs), color in zip(curves.items(), ("#47a", "#c44")):
    ax.plot(DIMS, accs, marker="o", color=color, label=t(f"{name}: subspace of dimension d", f"{name}:d 维子空间"))
    ax.axhline(full[name], color=color, ls=":", label=t(f"{name}: all {D:,} values", f"{name}:全部 {D:,} 个参数"))
    ax.axhline(0.9 * full[name], color=color, ls="--", lw=0.8)
ax.set(xscale="log", xlabel=t("subspace dimension d", "子空间维度 d"), ylabel=t("dev accuracy", "验证准确率"),
       title=t("intrinsic dimension (dashed: 90 %)", "内在维度(虚线:90%)"))
ax.legend(fontsize=7)
fig.tight_layout()

# %%
above = sum(a > b for a, b in zip(curves[PRE], curves[RND]))
S.say(f"Measured here: the first network's curve lies above the second's at {above} of {len(DIMS)} dimensions; on the "
      f"common bar ({bar:.3f}) the first reaches it at d = {reach[PRE] or f'> {max(DIMS)}'}, the second at "
      f"d = {reach[RND] or f'> {max(DIMS)}'}."
      + (" (Quick mode: both are random models, so no difference is expected.)" if S.quick else ""),
      f"这里的实测:在 {len(DIMS)} 个维度中,第一个网络的曲线有 {above} 个高于第二个;在共同标准线({bar:.3f})上,第一个在 "
      f"d = {reach[PRE] or f'> {max(DIMS)}'} 达到,第二个在 d = {reach[RND] or f'> {max(DIMS)}'} 达到。"
      + ("(快速模式:两个都是随机模型,本来就不该有差别。)" if S.quick else ""))

# %% [markdown] lang="en" mode="normal"
# Read the two curves against each other. With pretrained features, a subspace of a few dozen dimensions
# gets most of what training all D values gets, and at every d the pretrained curve should lie above the
# random one. A caution about d90 itself: it is measured against each model's *own* full accuracy, and the
# random-feature network barely beats always answering the majority class, so 90 % of its (poor) score is
# cheap to reach — compare on the common bar instead, where the random features need far more dimensions or
# never get there. That is the intuition the LoRA paper borrows: a good pretrained model leaves little to
# change, and the change lives in a small space. (This is a small stand-in for the real experiment: 400 dev
# sentences give a standard error of about 2.5 points, so single points of the curves move with the seed.)

# %% [markdown] lang="zh" mode="normal"
# 把两条曲线放在一起读。用预训练特征时,几十维的子空间就能得到训练全部 D 个参数的大部分效果,而且在每个 d 上预训练
# 曲线都应该在随机曲线之上。关于 d90 本身要注意:它是相对每个模型*自己*的完整准确率来测的,而随机特征网络几乎只比总是
# 回答多数类好一点,所以它(很差的)分数的 90% 很容易达到——应该在共同标准线上比较,那里随机特征需要多得多的维度,
# 或者根本达不到。这就是 LoRA 论文借用的直觉:好的预训练模型需要改变的很少,而变化位于一个很小的空间里。(这是真实实验
# 的一个小替身:400 个验证句子的标准误约 2.5 个百分点,所以曲线上的单个点会随随机种子变动。)

# %% [markdown] lang="en"
# ## 2. Why low rank suffices: the spectrum of a real full fine-tuning update
#
# LoRA *assumes* that each weight's update has a low "intrinsic rank". Test it: fine-tune all of MiniLM on
# SST-2 (the full fine-tuning run of lesson 4, reused from the cache or trained now), form
# ΔW = W_ft − W0 for every attention matrix and look at its singular values. Full fine-tuning is free to
# use all 384 directions.

# %% [markdown] lang="zh"
# ## 2. 为什么低秩就够了:一次真实全量微调更新的谱
#
# LoRA *假设*每个权重的更新具有很低的"内在秩"。来检验它:在 SST-2 上微调整个 MiniLM(第 4 课的全量微调,从缓存读取
# 或现在训练),对每个注意力矩阵构造 ΔW = W_ft − W0,看它的奇异值。全量微调可以自由使用全部 384 个方向。

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


print(t(f"{'ΔW of full fine-tuning':42}", f"{'全量微调的 ΔW':38}") + f" {'‖ΔW‖_F':>7} " + t(f"{'eff. rank':>9}", f"{'有效秩':>6}")
      + f" {'top-1':>6} {'top-8':>6} {'top-64':>6}")
for name, s in spectra.items():
    print(f"{name:42} {float(s.norm()):7.3f} {effective_rank(s):9.1f} {energy_in_top(s, 1):6.1%} "
          f"{energy_in_top(s, 8):6.1%} {energy_in_top(s, 64):6.1%}")
print(t(f"{'a random Gaussian matrix, same shape':42}", f"{'同形状的随机高斯矩阵':32}") + f" {'':7} {effective_rank(random_spectrum):9.1f} "
      f"{energy_in_top(random_spectrum, 1):6.1%} {energy_in_top(random_spectrum, 8):6.1%} "
      f"{energy_in_top(random_spectrum, 64):6.1%}")

fig, ax = plt.subplots(figsize=(7, 3.6))
for name, s in spectra.items():
    ax.plot((s / s[0]).numpy(), color="#47a" if "query" in name else "#c44", alpha=0.6, lw=1)
ax.plot((random_spectrum / random_spectrum[0]).numpy(), color="black", ls="--", label=t("random matrix", "随机矩阵"))
ax.plot([], [], color="#47a", label=t("ΔWq, full fine-tuning", "ΔWq,全量微调"))
ax.plot([], [], color="#c44", label=t("ΔWv, full fine-tuning", "ΔWv,全量微调"))
ax.set(yscale="log", xlabel=t("index i", "序号 i"), ylabel="σ_i / σ_1",
       title=t("singular values of the full fine-tuning update", "全量微调更新的奇异值"))
ax.legend()
fig.tight_layout()

# %%
top8 = [energy_in_top(s, 8) for s in spectra.values()]
random_top8 = energy_in_top(random_spectrum, 8)
concentrated = sum(value > 2 * random_top8 for value in top8)
S.say(f"Measured here: the top 8 directions carry {min(top8):.1%} to {max(top8):.1%} of each full update's ‖ΔW‖_F², "
      f"a random matrix's top 8 carry {random_top8:.1%}; {concentrated} of {len(top8)} updates concentrate more than "
      f"twice as much as random in their top 8. "
      + ("So the full update is far from low-rank in the strict sense, but its energy is concentrated: the empirical "
         "basis of \"low intrinsic rank\"." if concentrated == len(top8) else
         "So here the evidence for a low intrinsic rank is mixed."),
      f"这里的实测:前 8 个方向承载了每个全量更新 ‖ΔW‖_F² 的 {min(top8):.1%} 到 {max(top8):.1%},随机矩阵的前 8 个方向承载"
      f" {random_top8:.1%};{len(top8)} 个更新中有 {concentrated} 个在前 8 个方向上的集中程度超过随机的两倍。"
      + ("所以全量更新在严格意义上远不是低秩的,但它的能量是集中的:这就是\"低内在秩\"的经验基础。"
         if concentrated == len(top8) else "所以这里支持低内在秩的证据并不一致。"))

# %% [markdown] lang="en"
# Effective rank (Roy & Vetterli 2007) is exp of the entropy of the normalised singular values: r for r equal
# values, 1 when one direction carries everything. If the full update concentrates in its first singular
# directions far more than a random matrix does, a rank-r LoRA can express most of it — the empirical basis
# of "low intrinsic rank". Does LoRA find those directions? Compare the input directions of the r = 8 LoRA
# adapter's A with the top-8 right-singular vectors of the full update, with the subspace similarity φ of
# lesson 4 (random level: 8/384 ≈ 0.02).

# %% [markdown] lang="zh"
# 有效秩(Roy & Vetterli,2007)是归一化奇异值的熵的指数:r 个相等的值给出 r,只有一个方向承载全部时给出 1。如果全量
# 更新集中在前几个奇异方向上、远超随机矩阵,那么秩 r 的 LoRA 就能表达它的大部分。LoRA 找到的是这些方向吗?用第 4 课
# 的子空间相似性 φ,比较 r = 8 LoRA 适配器 A 的输入方向与全量更新的前 8 个右奇异向量(随机水平:8/384 ≈ 0.02)。

# %%
lora8 = kit.lora_run(S, 8)
deltas, _ = load_deltas(lora8.adapter)
print(t(f"{'matrix':42} {'φ(LoRA r=8, full FT top-8)':>27} {'random':>7}",
        f"{'矩阵':40} {'φ(LoRA r=8, 全量前 8)':>24} {'随机':>5}"))
overlaps = []
for delta in deltas:
    _, _, Vh_full = torch.linalg.svd(updates[delta.name], full_matrices=False)
    U_lora = right_singular_vectors(delta.A)                                    # (k, 8)
    overlap = float((U_lora.T @ Vh_full[:8].T).pow(2).sum() / 8)                # φ(8, 8)
    overlaps.append(overlap / (8 / delta.d_in))
    print(f"{delta.name:42} {overlap:27.3f} {8 / delta.d_in:7.3f}")
S.say(f"Measured here: the overlaps are {min(overlaps):.1f}× to {max(overlaps):.1f}× the random level.",
      f"这里的实测:重合度是随机水平的 {min(overlaps):.1f} 到 {max(overlaps):.1f} 倍。")

# %% [markdown] lang="en" mode="normal"
# How to read the overlap: 1 would mean LoRA's eight input directions are exactly the full update's top eight,
# the random column what unrelated directions give. Values several times the random level but far from 1
# say that the two methods, which reach similar accuracy, share part of their directions and not others:
# many different low-rank updates solve the same task.

# %% [markdown] lang="zh" mode="normal"
# 怎么读重合度:1 表示 LoRA 的八个输入方向恰好是全量更新的前八个,随机列是不相关方向给出的值。比随机水平高几倍但远小于
# 1,说明这两种达到相近准确率的方法共享一部分方向而不是全部:许多不同的低秩更新都能解决同一个任务。

# %% [markdown] lang="en"
# ## 3. Feature amplification, and the three ways to adapt a model
#
# Lesson 4 measured the amplification factor ‖ΔW‖_F / ‖Uᵀ·W·V‖_F on LoRA's updates. The paper's
# interpretation (§7.3): the low-rank update does not copy W's dominant directions; it picks directions that
# W already contains but *does not emphasise* — task-specific features learned in pretraining — and
# amplifies them by a large factor (≈21.5 for GPT-3 at r = 4). If that is what adaptation is, a handful of
# directions per matrix is all it takes. The same measurement on the rank-8 truncation of the *full*
# fine-tuning update, next to LoRA's own:

# %% [markdown] lang="zh"
# ## 3. 特征放大,以及适配模型的三种方式
#
# 第 4 课在 LoRA 的更新上测量了放大因子 ‖ΔW‖_F / ‖Uᵀ·W·V‖_F。论文的解读(§7.3):低秩更新并不复制 W 的主导方向;它挑选
# W 已经包含但*没有强调*的方向——预训练中学到的任务相关特征——并把它们放大很多倍(论文:GPT-3 在 r = 4 时约 21.5 倍)。
# 如果适配就是这么回事,那么每个矩阵几个方向就够了。下面在*全量*微调更新的秩 8 截断上做同样的测量,与 LoRA 自己的并列:

# %%
last = f"bert.encoder.layer.{layers - 1}.attention.self.query"
U, sv, Vh = torch.linalg.svd(updates[last], full_matrices=False)
full_top8 = make_delta("full FT, top 8", Vh[:8], U[:, :8] * sv[:8])            # ΔW_8 = (U·Σ)[:, :8] · Vh[:8]
W_last = base.get_submodule(last).weight.detach().double()
lora_delta = next(d for d in deltas if d.name == last)
for label, delta in ((t("full fine-tuning, top-8 part", "全量微调,前 8 部分"), full_top8), ("LoRA r = 8", lora_delta)):
    a = amplification_of(delta, W_last)
    print(t(f"{label:30} ‖ΔW‖_F {a.delta_fro:6.3f}   ‖UᵀWV‖_F: ΔW's dirs {a.proj_delta:6.3f} "
            f"({a.proj_delta / a.proj_random:.1f}× random), W's top-8 {a.proj_w_top:6.2f}, random {a.proj_random:6.3f}"
            f"   amplification {a.amplification:6.1f}",
            f"{label:24} ‖ΔW‖_F {a.delta_fro:6.3f}   ‖UᵀWV‖_F:ΔW 的方向 {a.proj_delta:6.3f} "
            f"(随机的 {a.proj_delta / a.proj_random:.1f} 倍),W 的前 8 个 {a.proj_w_top:6.2f},随机 {a.proj_random:6.3f}"
            f"   放大因子 {a.amplification:6.1f}"))

# %% [markdown] lang="en"
# Two different things are in these rows. *Alignment* — how much more of W lies in ΔW's directions than in
# random ones (the "× random") — says whether the update works on features W already has. The *amplification
# factor* divides ‖ΔW‖_F by that projection, so it also grows with how far training moved the weights
# (learning rate, steps): full fine-tuning here ran with a 60× smaller learning rate and moved W far less,
# so its factor is small even where its directions are aligned. Within one method and one training recipe,
# as in lesson 4 (r = 8 against r = 64), the factor is the paper's measure.

# %% [markdown] lang="zh"
# 这几行里是两件不同的事。*对齐*——W 落在 ΔW 方向上的部分比落在随机方向上多多少("随机的多少倍")——说明更新是否作用在
# W 已有的特征上。*放大因子*用 ‖ΔW‖_F 除以这个投影,所以它还会随训练把权重移动了多远(学习率、步数)而变大:这里全量
# 微调的学习率小 60 倍,移动 W 少得多,所以即使方向对齐,它的放大因子也很小。在同一种方法、同一套训练设置之内,例如
# 第 4 课(r = 8 对 r = 64),放大因子才是论文的那个度量。

# %% [markdown] lang="en"
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

# %% [markdown] lang="zh"
# 路线以本系列逐项测量过的对比收尾:
#
# | 方法 | 在哪里增加参数 | 推理代价 | 课程 |
# |---|---|---|---|
# | Adapter 层 | 在子层后*串行*插入小网络 | 每个块都有额外的串行计算 | 4 |
# | Prefix-tuning | 每层 l 个可训练的键/值向量 | 每次注意力都多读 l 个位置 | 下文 |
# | LoRA | 与选定矩阵*并行*的低秩支路 | 合并后没有(W = W0 + s·B·A) | 2, 4 |
#
# Prefix-tuning 的代价很容易数:有 l 个前缀位置时,每个查询要关注 s + l 个键而不是 s 个,所以每层的注意力乘积(Q·Kᵀ 和
# 对 V 的加权和)增加 l/s——在前缀嵌入的变体中,虚拟 token 还会占用输入本身的 l 个位置。

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
print(t(f"{tokens} tokens: base {flops['base']:,} FLOPs, with a length-{prefix_length} prefix {flops['prefix']:,} "
        f"(+{flops['prefix'] / flops['base'] - 1:.1%})",
        f"{tokens} 个 token:基础模型 {flops['base']:,} FLOPs,加长度 {prefix_length} 的前缀后 {flops['prefix']:,} "
        f"(+{flops['prefix'] / flops['base'] - 1:.1%})"))

# %% [markdown] lang="en"
# ## 4. Forgetting: what fine-tuning costs the base model
#
# LoRA trains few values, and the route asks why that works; Biderman et al. (2024, "LoRA Learns Less and
# Forgets Less") asked what it *costs*, and found that LoRA learns the new task less well than full
# fine-tuning but keeps more of what the base model could do before. We measure it the way the lab's
# `loralab experiment forgetting` does. all-MiniLM-L6-v2 was trained for sentence embeddings (the mean of its
# last hidden states), so its original ability is that the cosine similarity of two sentences' embeddings
# separates paraphrases from non-paraphrases. The probe: the first 400 sentence pairs of GLUE MRPC dev, scored by
# ROC-AUC — the chance that a random paraphrase pair scores above a random non-paraphrase pair (0.5 is
# chance). **Forgetting = AUC of the base − AUC after fine-tuning on SST-2**, for the r = 8 LoRA adapter
# (lesson 3) and the full fine-tuning run (lesson 4), both from the cache; the classifier head plays no part.
# A LoRA adapter also leaves W0 untouched, so switching it off (`loralab.disabled`) must give the base
# model back *exactly*: we check that too.
#
# **Predict before you run the next cell:** which forgets more, "LoRA" or "full"? Write it in `prediction_1`.

# %% [markdown] lang="zh"
# ## 4. 遗忘:微调让基础模型付出了什么
#
# LoRA 只训练很少的参数,路线问的是它为什么管用;Biderman 等(2024,"LoRA Learns Less and Forgets Less")问的是它的
# *代价*,发现 LoRA 对新任务学得不如全量微调,但保留了更多基础模型原有的能力。我们按实验室的
# `loralab experiment forgetting` 的方式测量。all-MiniLM-L6-v2 是为句向量(最后一层隐藏状态的平均)训练的,所以它原有
# 的能力是:两个句子句向量的余弦相似度能区分互为释义与不互为释义的句对。探针:GLUE MRPC dev 的前 400 个句对,用
# ROC-AUC 评分——随机一个释义句对的得分高于随机一个非释义句对的概率(0.5 是随机水平)。**遗忘 = 基础模型的 AUC −
# 在 SST-2 上微调后的 AUC**,分别对 r = 8 的 LoRA 适配器(第 3 课)和全量微调(第 4 课)计算,都从缓存读取;分类头
# 不参与。LoRA 适配器不改动 W0,所以把它关掉(`loralab.disabled`)必须*精确地*还原基础模型:我们也检查这一点。
#
# **运行下一个单元之前先预测:** 哪个遗忘得更多,"LoRA" 还是 "full"?写进 `prediction_1`。

# %%
# hint[en]: LoRA changes each adapted matrix by a rank-8 update and leaves everything else frozen; full fine-tuning moves all 22.7M values.
# hint[zh]: LoRA 只用秩 8 的更新改动被适配的矩阵,其余全部冻结;全量微调改动全部 2270 万个参数。
prediction_1 = "full"           # Biderman et al.: LoRA forgets less

# %%
PROBE_PAIRS = 400                                  # a small probe: about 20 CPU seconds for three encoders
pairs = probe_pairs(S.quick)[:PROBE_PAIRS]         # MRPC dev's first 400 pairs (quick mode: the first 64)
probe_key = {"model": S.model, "probe": "mrpc dev", "pairs": len(pairs)}
plain = kit.classifier(S)                          # the base (its new head plays no part)
with_lora = kit.classifier(S)
loralab.load_adapter(with_lora, lora8.adapter)     # W0 frozen + s·B·A on Wq, Wv


def full_encoder() -> torch.nn.Module:
    model = kit.classifier(S)
    model.load_state_dict(tuned, strict=False)     # every trained tensor of lesson 4's full fine-tuning
    return model.base_model


auc = {"base": kit.remembered(S.cache / "probe-base.json", probe_key,
                              lambda: paraphrase_auc(plain.base_model, tok, pairs)),
       "LoRA": kit.remembered(lora8.folder / "probe.json", probe_key,
                              lambda: paraphrase_auc(with_lora.base_model, tok, pairs)),
       "full": kit.remembered(full_run.folder / "probe.json", probe_key,
                              lambda: paraphrase_auc(full_encoder(), tok, pairs))}
forgetting = {method: auc["base"] - auc[method] for method in ("LoRA", "full")}
target = {"LoRA": lora8.dev_accuracy, "full": full_run.dev_accuracy}


def auc_standard_error(a: float, positives: int, negatives: int) -> float:
    """Hanley & McNeil (1982): the standard error of an AUC a from `positives` and `negatives` examples."""
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    return math.sqrt((a * (1 - a) + (positives - 1) * (q1 - a * a) + (negatives - 1) * (q2 - a * a))
                     / (positives * negatives))


positives = sum(str(p.label) == "1" for p in pairs)
se_auc = max(auc_standard_error(a, positives, len(pairs) - positives) for a in auc.values())
print(t(f"MRPC dev paraphrase AUC ({len(pairs)} pairs, {positives} paraphrases); one standard error ≈ {se_auc:.3f}",
        f"MRPC dev 释义 AUC({len(pairs)} 个句对,其中 {positives} 个互为释义);一个标准误 ≈ {se_auc:.3f}"))
print(t(f"{'encoder':26} {'AUC':>6} {'forgetting':>11} {'SST-2 dev acc':>14}",
        f"{'编码器':24} {'AUC':>6} {'遗忘':>9} {'SST-2 验证准确率':>10}"))
print(f"{t('base (before)', '基础模型(微调前)'):26} {auc['base']:>6.3f} {'—':>11} {'—':>14}")
for method, run in (("LoRA", lora8), ("full", full_run)):
    label = t({"LoRA": "LoRA r = 8 (Wq, Wv)", "full": "full fine-tuning"}[method],
              {"LoRA": "LoRA r = 8(Wq、Wv)", "full": "全量微调"}[method])
    print(f"{label:26} {auc[method]:>6.3f} {forgetting[method]:>+11.3f} {run.dev_accuracy:>14.3f}")

# Switching the adapter off: the same sentences through the base and through the LoRA model with its adapter disabled.
texts = [p.text for p in pairs[:64]]
base_embeddings = mean_pooled(plain.base_model, tok, texts)
with loralab.disabled(with_lora):
    off_embeddings = mean_pooled(with_lora.base_model, tok, texts)
on_embeddings = mean_pooled(with_lora.base_model, tok, texts)
off_gap = (off_embeddings - base_embeddings).abs().max().item()
on_gap = (on_embeddings - base_embeddings).abs().max().item()
print(t(f"adapter disabled: max |embedding − base embedding| = {off_gap} over {len(texts)} sentences "
        f"(adapter on: {on_gap:.3g})",
        f"关掉适配器:max |句向量 − 基础模型句向量| = {off_gap}({len(texts)} 个句子;适配器打开时:{on_gap:.3g})"))

fig, ax = plt.subplots(figsize=(6.5, 3.6))
for method, color in (("LoRA", "C0"), ("full", "C1")):
    ax.scatter(forgetting[method], target[method], s=60, color=color)
    ax.annotate(t({"LoRA": "LoRA r = 8", "full": "full fine-tuning"}[method], {"LoRA": "LoRA r = 8", "full": "全量微调"}[method]),
                (forgetting[method], target[method]), textcoords="offset points", xytext=(6, 6))
ax.axvline(0.0, color="black", lw=0.8, ls="--")
span = max(abs(v) for v in forgetting.values()) + 0.02
ax.set_xlim(min(-0.02, min(forgetting.values()) - 0.02), span + 0.03)           # room for the labels
ax.set_ylim(min(0.45, min(target.values()) - 0.1), 1.0)                          # the accuracy scale of lessons 3 and 4
ax.set(xlabel=t("forgetting (MRPC paraphrase AUC, before − after)", "遗忘(MRPC 释义 AUC,微调前 − 微调后)"),
       ylabel=t("SST-2 dev accuracy (the new task)", "SST-2 验证准确率(新任务)"),
       title=t("learning the new task against forgetting the old", "学会新任务与忘掉旧能力"))
fig.tight_layout()

# %%
measured_more = "full" if forgetting["full"] > forgetting["LoRA"] else "LoRA"
checks.predict("prediction_1", prediction_1, measured_more, t("which forgets more", "哪个遗忘得更多"),
               t(f"forgetting: LoRA {forgetting['LoRA']:+.3f}, full {forgetting['full']:+.3f}",
                 f"遗忘:LoRA {forgetting['LoRA']:+.3f},全量 {forgetting['full']:+.3f}"))
difference = forgetting["full"] - forgetting["LoRA"]
clear = abs(difference) > 2 * math.sqrt(2) * se_auc
if difference > 0:
    direction_en = (f"full fine-tuning forgot more than LoRA (by {difference:.3f} AUC): the direction Biderman et al. "
                    "report, " + ("beyond two standard errors of the difference" if clear else
                                  "but within two standard errors of the difference, so no more than a hint"))
    direction_zh = (f"全量微调比 LoRA 遗忘得更多(AUC 多降 {difference:.3f}):与 Biderman 等报告的方向一致,"
                    + ("超出了差值的两个标准误" if clear else "但在差值的两个标准误以内,只能算一个迹象"))
else:
    direction_en = (f"LoRA forgot at least as much as full fine-tuning (by {-difference:.3f} AUC): the opposite of what "
                    "Biderman et al. report, " + ("beyond two standard errors of the difference" if clear else
                                                  "within two standard errors of the difference, so no finding either way"))
    direction_zh = (f"LoRA 遗忘得不比全量微调少(AUC 多降 {-difference:.3f}):与 Biderman 等报告的方向相反,"
                    + ("超出了差值的两个标准误" if clear else "在差值的两个标准误以内,两个方向都不能下结论"))
exact = off_gap == 0.0
moved = {"LoRA": float(torch.linalg.matrix_norm(lora_delta.dense())), "full": float(updates[last].norm())}   # §3's Wq
if difference <= 0 and moved["LoRA"] > moved["full"]:
    why_en = (f" Why, here: on the last layer's Wq, LoRA's update has ‖ΔW‖_F = {moved['LoRA']:.2f} against full fine-tuning's "
              f"{moved['full']:.2f} (section 3) — at its learning rate ({lora8.lr:g} against {full_run.lr:g}) this short LoRA "
              f"run moved that matrix {moved['LoRA'] / moved['full']:.0f}× as far as full fine-tuning did. How much is forgotten "
              "follows how far the weights move; Biderman et al. trained each method long, at its own tuned learning rate.")
    why_zh = (f"原因(这里):在最后一层的 Wq 上,LoRA 更新的 ‖ΔW‖_F = {moved['LoRA']:.2f},全量微调只有 {moved['full']:.2f}"
              f"(第 3 节)——在各自的学习率下({lora8.lr:g} 对 {full_run.lr:g}),这次短的 LoRA 训练把这个矩阵移动的距离是"
              f"全量微调的 {moved['LoRA'] / moved['full']:.0f} 倍。遗忘多少取决于权重移动了多远;Biderman 等对每种方法都长时间"
              "训练,并各自调好学习率。")
else:
    why_en = why_zh = ""
S.say(f"Measured here: the base separates MRPC paraphrases with AUC {auc['base']:.3f}; after SST-2, LoRA's encoder "
      f"{auc['LoRA']:.3f} (forgetting {forgetting['LoRA']:+.3f}), full fine-tuning's {auc['full']:.3f} "
      f"(forgetting {forgetting['full']:+.3f}); {direction_en}.{why_en} On the new task, full fine-tuning reached "
      f"{target['full']:.3f} and LoRA {target['LoRA']:.3f} SST-2 dev accuracy "
      + ("(LoRA learned less here too, as in the paper's title). " if target["full"] > target["LoRA"] else
         "(here LoRA did not learn less: a short run, one seed). ")
      + (f"With the adapter switched off the embeddings equal the base's exactly (max |difference| {off_gap}): "
         "LoRA never touched W0, so the base model is one switch away." if exact else
         f"With the adapter switched off the embeddings differ from the base's by up to {off_gap:.2e}: not exact, "
         "which would be a bug — W0 should be untouched.")
      + (" (Quick mode: a tiny random model has no ability to forget — the AUCs mean nothing.)" if S.quick else ""),
      f"这里的实测:基础模型区分 MRPC 释义的 AUC 是 {auc['base']:.3f};在 SST-2 上微调后,LoRA 的编码器是 {auc['LoRA']:.3f}"
      f"(遗忘 {forgetting['LoRA']:+.3f}),全量微调的是 {auc['full']:.3f}(遗忘 {forgetting['full']:+.3f});{direction_zh}。{why_zh}"
      f"在新任务上,全量微调的 SST-2 验证准确率是 {target['full']:.3f},LoRA 是 {target['LoRA']:.3f}"
      + ("(这里 LoRA 在新任务上也学得更少,正如论文标题所说)。" if target["full"] > target["LoRA"] else
         "(这里 LoRA 并没有学得更少:训练短,只有一个随机种子)。")
      + (f"关掉适配器后句向量与基础模型完全相同(最大差 {off_gap}):LoRA 从未改动 W0,基础模型只差一个开关。" if exact else
         f"关掉适配器后句向量与基础模型最多相差 {off_gap:.2e}:不精确,这是个错误——W0 本应保持不变。")
      + ("(快速模式:微型随机模型没有可遗忘的能力——这些 AUC 没有意义。)" if S.quick else ""))

# %% [markdown] lang="en"
# ## Check yourself
#
# 1. How many bytes would a dense fp32 P need for all of all-MiniLM-L6-v2's parameters at d = 1000?
#    Compare with what torch allocates for such a tensor (on the meta device).
# 2. The columns of P were normalised: what is the norm of column 1 of P_all?
# 3. The share of ‖ΔW‖_F² in the top-8 directions of the last layer's full-FT ΔWq, from the singular values;
#    the lesson compares it with projecting ΔW onto its top-8 left singular vectors (‖U8ᵀ·ΔW‖_F² / ‖ΔW‖_F²).
# 4. How many values does LoRA r = 1 on Wq, Wv train in MiniLM (no head)?
# 5. Prefix-tuning's extra attention FLOPs, by hand.
# 6. Section 4: with the LoRA adapter switched off, how far are the sentence embeddings from the base model's
#    (max |difference|)?

# %% [markdown] lang="zh"
# ## 自我检查
#
# 1. 对 all-MiniLM-L6-v2 的全部参数、d = 1000,稠密的 fp32 P 需要多少字节?与 torch 为这样的张量分配的字节数比较
#    (在 meta 设备上)。
# 2. P 的列做过归一化:P_all 第 1 列的范数是多少?
# 3. 最后一层全量微调 ΔWq 在前 8 个方向上的 ‖ΔW‖_F² 占比,由奇异值算出;课程把它与把 ΔW 投影到前 8 个左奇异向量上
#    的结果(‖U8ᵀ·ΔW‖_F² / ‖ΔW‖_F²)比较。
# 4. 在 MiniLM 的 Wq、Wv 上用 r = 1 的 LoRA 训练多少个参数(不含分类头)?
# 5. 手算 Prefix-tuning 多出的注意力 FLOPs。
# 6. 第 4 节:关掉 LoRA 适配器后,句向量与基础模型的句向量相差多少(max |差|)?

# %%
D_minilm = sum(p.numel() for p in pretrained.parameters())
# hint[en]: a D×d matrix of 4-byte floats; D_minilm holds D.
# hint[zh]: 一个 D×d 的 4 字节浮点矩阵;D_minilm 就是 D。
answer_1 = 4 * D_minilm * 1000
checks.equal("answer_1", answer_1, torch.empty(D_minilm, 1000, device="meta").nbytes,
             t("bytes of a dense fp32 P for all of MiniLM at d=1000", "d=1000 时覆盖 MiniLM 全部参数的稠密 fp32 P 的字节数"),
             t("4 bytes · D · d", "4 字节 · D · d"), "intrinsic-dim")

# hint[en]: P_all /= P_all.norm(dim=0, keepdim=True) was applied above.
# hint[zh]: 上面执行过 P_all /= P_all.norm(dim=0, keepdim=True)。
answer_2 = 1.0                                                               # normalised by construction
checks.close("answer_2", answer_2, float(P_all[:, 0].norm()), t("norm of a column of P", "P 一列的范数"), rel=1e-5,
             why=t("every column was divided by its norm", "每一列都除以了自己的范数"), concept="intrinsic-dim")

s_last = spectra[last]
# hint[en]: (σ1² + … + σ8²) / Σσ²: energy_in_top(s_last, 8) computes it, or write it with s_last.
# hint[zh]: (σ1² + … + σ8²) / Σσ²:可以用 energy_in_top(s_last, 8),或者直接用 s_last 写出来。
answer_3 = energy_in_top(s_last, 8)
U8 = torch.linalg.svd(updates[last], full_matrices=False).U[:, :8]
checks.close("answer_3", answer_3, float((U8.T @ updates[last]).norm() ** 2 / updates[last].norm() ** 2),
             t("energy of the top-8 directions: σ's vs projection", "前 8 个方向的能量:由 σ 对比投影"), rel=1e-9,
             why=t("the top-8 share is (σ1² + … + σ8²) / Σσ²", "前 8 的占比是 (σ1² + … + σ8²) / Σσ²"), concept="svd")

config = base.config
# hint[en]: 2 matrices per layer, num_hidden_layers layers, r·(d + d) values each with d = hidden_size.
# hint[zh]: 每层 2 个矩阵,共 num_hidden_layers 层,每个 r·(d + d) 个参数,d = hidden_size。
answer_4 = 2 * config.num_hidden_layers * 1 * (config.hidden_size + config.hidden_size)
checks.equal("answer_4", answer_4, sum(p.num_params for p in loralab.plan_injection(pretrained, LoraConfig(r=1))),
             t("LoRA r=1 on Wq, Wv: by hand vs plan_injection", "Wq、Wv 上 r=1 的 LoRA:手算对比 plan_injection"),
             t("2·L·1·(d + d)", "2·L·1·(d + d)"), "low-rank")

# hint[en]: per layer, Q·Kᵀ and probabilities·V each gain 2·tokens·l·d_model FLOPs.
# hint[zh]: 每层中 Q·Kᵀ 和 概率·V 各增加 2·tokens·l·d_model 个 FLOP。
answer_5 = 2 * config.num_hidden_layers * 2 * tokens * prefix_length * config.hidden_size
checks.equal("answer_5", answer_5, flops["prefix"] - flops["base"],
             t("prefix-tuning extra FLOPs: by hand vs FlopCounterMode", "Prefix-tuning 多出的 FLOPs:手算对比 FlopCounterMode"),
             t("2 · L · 2 · tokens · l · d_model", "2 · L · 2 · tokens · l · d_model"), "latency")

# hint[en]: a disabled adapter's layer computes only W0·x, and W0 is the base model's weight, untouched by training; write a float.
# hint[zh]: 关掉的适配器层只计算 W0·x,而 W0 就是基础模型的权重,训练从未改动它;写一个浮点数。
answer_6 = 0.0                                          # exactly the base: the same operations on the same W0
checks.equal("answer_6", answer_6, off_gap, t("adapter off: max |embedding − base|", "关掉适配器:max |句向量 − 基础模型|"),
             t("W0 is frozen, so with B·A switched off every operation is the base model's", "W0 被冻结,关掉 B·A 后每个运算都与基础模型相同"),
             "peft")
checks.summary()
