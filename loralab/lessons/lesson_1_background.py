# %% [markdown] lang="en"
# # Lesson 1 — Why LoRA, and the linear algebra it rests on
#
# Stage 1 of the route: *understand the problem* (why full fine-tuning is expensive, why switching between
# fine-tuned models is awkward) and the *mathematics* LoRA builds on: the rank of a matrix, low-rank
# factorisation, and the singular value decomposition (SVD) with the Eckart–Young theorem.
#
# You know PyTorch; you do not need to know LoRA. Everything here runs on a real model,
# all-MiniLM-L6-v2 (a 6-layer BERT, hidden size 384, 22.7M parameters), through loralab's public API.
# Run it with `loralab learn 1` (or `--quick` for a tiny random model that only checks the mechanics;
# `--exercises` to answer the questions yourself; `--lang zh` for the Chinese edition).

# %% [markdown] lang="zh"
# # 阶段 1:理解问题背景——为什么需要 LoRA,以及它依赖的线性代数
#
# 学习路线的第 1 阶段:*理解问题*(为什么全量微调成本高,为什么在多个微调模型之间切换很麻烦),以及 LoRA
# 所依赖的*数学*:矩阵的秩、低秩分解、奇异值分解(SVD)与 Eckart–Young 定理。
#
# 你需要会 PyTorch,但不需要了解 LoRA。这里的一切都在真实模型 all-MiniLM-L6-v2(6 层 BERT,隐藏维度 384,
# 2270 万参数)上通过 loralab 的公开 API 运行。用 `loralab learn 1 --lang zh` 运行(加 `--quick` 换成只检验
# 机制的微型随机模型;加 `--exercises` 自己作答)。

# %%
import math

import matplotlib.pyplot as plt
import torch

from loralab import LoraConfig, plan_injection
from loralab.budget import estimate_budget, format_bytes
from loralab.lessons import kit
from loralab.models import load_model

S = kit.settings()          # normal or quick mode, language, torch threads, where shared training runs are cached
t = S.t                     # t(English, Chinese): every text the code prints or draws, in the page's language
checks = kit.Checks(S)      # the "check yourself" answers at the end are recorded here
print(t("quick mode" if S.quick else "normal mode", "快速模式" if S.quick else "正常模式"), "| model:", S.model_name)
S.announce()

# %% [markdown] lang="en"
# ## 1. What full fine-tuning costs
#
# Fine-tuning all weights with Adam keeps, for **every** parameter: the weight itself, its gradient and
# Adam's two moment estimates — and in mixed precision an fp32 master copy of the weight. That is
# 2 + 4 + 2 + 4 + 4 = **16 bytes per parameter** (fp16 weight, fp32 master, fp16 gradient, two fp32
# moments). And each task you fine-tune for produces a *complete copy* of the model.
#
# `loralab.budget` computes these numbers from the model's shape alone (the model is built on PyTorch's
# "meta" device: every shape, no memory), for full fine-tuning and for LoRA side by side.

# %% [markdown] lang="zh"
# ## 1. 全量微调的成本
#
# 用 Adam 微调全部权重时,**每一个**参数都要保存:权重本身、它的梯度、Adam 的两个矩估计——混合精度下还要一份
# fp32 主权重。合计 2 + 4 + 2 + 4 + 4 = **每个参数 16 字节**(fp16 权重、fp32 主权重、fp16 梯度、两个 fp32
# 矩)。而且每微调一个任务,就得到模型的一份*完整拷贝*。
#
# `loralab.budget` 只根据模型的形状就能算出这些数字(模型建在 PyTorch 的 "meta" 设备上:有全部形状,不占内存),
# 全量微调与 LoRA 并排比较。

# %%
budgets = {name: estimate_budget(name, r=8, targets=["q", "v"]) for name in ("all-minilm-l6-v2", "gpt3-175b")}


def decimal(n: int) -> str:
    return format_bytes(n).split(" = ")[0]     # "37.7 MB = 36.0 MiB" -> "37.7 MB"


def model_states(memory) -> int:
    """Bytes of weights + master copy + gradients + optimizer moments (activations not included)."""
    return memory.weights + memory.master_weights + memory.gradients + memory.optimizer


print(t(f"{'model':18} {'parameters':>16} {'full FT states':>15} {'LoRA states':>12} {'one task, full':>15} "
        f"{'one task, LoRA':>15}",
        f"{'模型':16} {'参数量':>13} {'全量微调状态':>9} {'LoRA 状态':>10} {'每任务(全量)':>9} {'每任务(LoRA)':>9}"))
for name, b in budgets.items():
    P = b.skeleton.total_params
    print(f"{name:18} {P:>16,} {decimal(model_states(b.memory_full)):>15} "
          f"{decimal(model_states(b.memory_lora)):>12} {decimal(2 * P):>15} "
          f"{decimal(b.file_sizes['fp16'].tensor_bytes):>15}")

# %%
gpt3 = budgets["gpt3-175b"]
P3 = gpt3.skeleton.total_params
full_copy, lora_file = 2 * P3, gpt3.file_sizes["fp16"].tensor_bytes
full_states, lora_states = model_states(gpt3.memory_full), model_states(gpt3.memory_lora)
PAPER_FULL, PAPER_LORA = 1.2e12, 350e9      # the paper's GPT-3 training VRAM, full fine-tuning vs LoRA (§4.2)
S.say(f"Read the last two columns as *what you store per task*: a full fp16 copy of the model, or only LoRA's "
      f"factors (rank r = 8 on Wq and Wv, as in the paper). For GPT-3 that is {decimal(full_copy)} against "
      f"{decimal(lora_file)}: ten tasks are {decimal(10 * full_copy)} of checkpoints with full fine-tuning, "
      f"{decimal(10 * lora_file)} with LoRA.\n\n"
      f"**Two counts of training memory.** The table's {decimal(full_states)} → {decimal(lora_states)} counts "
      f"every model-state byte of mixed-precision Adam: {full_states / P3:.0f} bytes per parameter for full "
      f"fine-tuning (no activations). The paper reports 1.2 TB → 350 GB of VRAM for GPT-3 *as measured in its "
      f"setup*, which it does not itemise: 1.2 TB is {PAPER_FULL / P3:.1f} bytes per parameter — less than half "
      f"of our 16, so that setup kept no fp32 master copy or fp32 moments for every weight. On LoRA's side both "
      f"counts agree: the frozen fp16 weights alone are {decimal(gpt3.memory_lora.weights)} "
      f"({gpt3.memory_lora.weights / P3:.0f} bytes per parameter), the paper's 350 GB; what LoRA trains adds "
      f"{decimal(lora_states - gpt3.memory_lora.weights)}.",
      f"最后两列是*每个任务要存的内容*:一份完整的 fp16 模型拷贝,或者只是 LoRA 的因子(秩 r = 8,作用在 Wq 和 Wv 上,"
      f"与论文相同)。对 GPT-3 来说是 {decimal(full_copy)} 对 {decimal(lora_file)}:十个任务用全量微调要存 "
      f"{decimal(10 * full_copy)} 的检查点,用 LoRA 只要 {decimal(10 * lora_file)}。\n\n"
      f"**训练内存的两种算法。** 表中的 {decimal(full_states)} → {decimal(lora_states)} 统计的是混合精度 Adam 的全部"
      f"模型状态字节:全量微调每个参数 {full_states / P3:.0f} 字节(不含激活值)。论文报告 GPT-3 的显存从 1.2 TB 降到"
      f" 350 GB,这是*在它自己的设置下测得的*,没有逐项列出:1.2 TB 相当于每个参数 {PAPER_FULL / P3:.1f} 字节,不到我们"
      f" 16 字节的一半,说明那个设置并没有为每个权重保存 fp32 主权重和 fp32 矩。在 LoRA 一侧两种算法一致:冻结的 fp16"
      f" 权重本身就是 {decimal(gpt3.memory_lora.weights)}(每个参数 {gpt3.memory_lora.weights / P3:.0f} 字节),"
      f"即论文的 350 GB;LoRA 训练的部分只增加 {decimal(lora_states - gpt3.memory_lora.weights)}。")

# %% [markdown] lang="en"
# LoRA's training memory is not as small as its file: the frozen weights still sit in memory (2 bytes each
# in fp16) and activations are still needed for the backward pass — but gradients, master copy and Adam's
# moments now exist only for the few trained values.
#
# The existing cures had their own costs (lesson 4 measures them): **adapter layers** (Houlsby et al. 2019)
# add small networks *in series* inside each block, so every forward pass does extra sequential work — they
# add inference latency. **Prefix-tuning** (Li & Liang 2021) learns extra "virtual tokens" that occupy part
# of the sequence length and are hard to optimise. LoRA's answer starts from linear algebra.

# %% [markdown] lang="zh"
# LoRA 的训练内存并不像它的文件那么小:冻结的权重仍然在内存里(fp16 每个 2 字节),反向传播仍然需要激活值——但梯度、
# 主权重和 Adam 的矩现在只为少量被训练的参数存在。
#
# 已有的办法各有代价(第 4 课会测量):**Adapter 层**(Houlsby 等,2019)在每个块里*串行*插入小网络,每次前向
# 传播都多出串行计算——带来推理延迟。**Prefix-tuning**(Li & Liang,2021)学习额外的"虚拟 token",占用一部分
# 序列长度,而且难以优化。LoRA 的答案从线性代数出发。

# %%
labels = [t("full FT,\n1 task", "全量微调,\n1 个任务"), t("full FT,\n10 tasks", "全量微调,\n10 个任务"),
          t("LoRA,\n1 task", "LoRA,\n1 个任务"), t("LoRA,\n10 tasks", "LoRA,\n10 个任务")]
fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
for ax, (name, b) in zip(axes, budgets.items()):
    full, lora = 2 * b.skeleton.total_params, b.file_sizes["fp16"].tensor_bytes
    ax.bar(labels, [full, 10 * full, lora, 10 * lora], color=["#c44", "#c44", "#47a", "#47a"])
    ax.set_yscale("log")
    ax.set_ylabel(t("bytes stored (fp16)", "存储字节数(fp16)"))
    ax.set_title(t(f"{name}: checkpoints per task", f"{name}:每个任务的检查点"))
fig.tight_layout()

# %% [markdown] lang="en"
# ## 2. Rank and low-rank factorisation
#
# A d×k matrix has **rank r** if its columns span an r-dimensional space. Every rank-r matrix can be
# written as a product
#
#     M = B · A        B: d×r,  A: r×k
#
# which needs **r·(d + k)** numbers instead of **d·k**. For d = k = 384 and r = 8 that is 6,144 numbers
# instead of 147,456 — 24 times fewer. LoRA will learn its *weight update* in exactly this form.

# %% [markdown] lang="zh"
# ## 2. 秩与低秩分解
#
# 如果一个 d×k 矩阵的列张成一个 r 维空间,它的**秩就是 r**。每个秩为 r 的矩阵都能写成乘积
#
#     M = B · A        B: d×r,  A: r×k
#
# 只需 **r·(d + k)** 个数,而不是 **d·k** 个。d = k = 384、r = 8 时是 6,144 个数而不是 147,456 个——少 24 倍。
# LoRA 正是用这种形式学习它的*权重更新*。

# %%
g = torch.Generator().manual_seed(0)
B_small = torch.randn(6, 2, generator=g, dtype=torch.float64)     # (d, r) = (6, 2)
A_small = torch.randn(2, 5, generator=g, dtype=torch.float64)     # (r, k) = (2, 5)
M = B_small @ A_small                                             # (6, 5), but only rank 2
print("M:", tuple(M.shape), "| rank:", int(torch.linalg.matrix_rank(M)),
      t("| numbers in B and A:", "| B 和 A 中的数:"), B_small.numel() + A_small.numel(), t("vs in M:", "对比 M 中:"),
      M.numel())

# %% [markdown] lang="en"
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

# %% [markdown] lang="zh"
# ## 3. SVD 与最优秩 r 近似(Eckart–Young)
#
# 每个实矩阵 W(d×k)都有**奇异值分解**
#
#     W = U · diag(σ) · Vᵀ      U: d×q,  σ: q 个值 σ1 ≥ σ2 ≥ … ≥ 0,  Vᵀ: q×k,  q = min(d, k)
#
# 其中 U 和 V 的列是正交归一的。只保留前 r 组奇异值与奇异向量,得到 W_r = U[:, :r] · diag(σ[:r]) · Vᵀ[:r],
# 一个秩为 r 的矩阵——它已经是分解形式 B·A,其中 B = U[:, :r]·diag(σ[:r]),A = Vᵀ[:r]。**Eckart–Young(–Mirsky)
# 定理**说:在 Frobenius 范数下没有任何秩 r 矩阵比它更接近 W,误差恰好是被丢掉的奇异值的能量:
#
#     min over rank-r M of ‖W − M‖_F = ‖W − W_r‖_F = sqrt(σ_{r+1}² + … + σ_q²)
#
# 来看真实的权重矩阵:MiniLM 第一层的查询投影 Wq 和 MLP 的第一个矩阵。

# %%
encoder = load_model(S.model, task="base")      # the pretrained encoder, no task head
layer0 = encoder.encoder.layer[0]
W_q = layer0.attention.self.query.weight.detach().double()       # (d, k) = (384, 384): h = W·x
W_up = layer0.intermediate.dense.weight.detach().double()        # (1536, 384): the MLP's up-projection
print("W_q:", tuple(W_q.shape), "| W_up:", tuple(W_up.shape))

U, sigma, Vh = torch.linalg.svd(W_q, full_matrices=False)       # U (384, 384), σ (384,), Vh (384, 384)
print("U:", tuple(U.shape), "σ:", tuple(sigma.shape), "Vh:", tuple(Vh.shape))
print(t("largest σ:", "最大的 σ:"), [round(v, 2) for v in sigma[:5].tolist()], t("| smallest:", "| 最小:"),
      round(sigma[-1].item(), 4))


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
axes[0].semilogy(sigma.numpy(), label=t("Wq, layer 0", "Wq,第 0 层"))
axes[0].semilogy(torch.linalg.svdvals(noise).numpy(), label=t("random, same norm", "随机矩阵,同范数"), ls="--")
axes[0].semilogy(torch.linalg.svdvals(W_up).numpy(), label=t("W_up (MLP), layer 0", "W_up(MLP),第 0 层"), alpha=.7)
axes[0].set(xlabel=t("index i", "序号 i"), ylabel="σ_i", title=t("singular values", "奇异值"))
axes[0].legend()
for W, label, style in ((W_q, "Wq", "-"), (noise, t("random", "随机"), "--"), (W_up, "W_up", "-")):
    axes[1].plot(relative_errors(W).numpy(), style, label=label)
axes[1].set(xlabel=t("rank r", "秩 r"), ylabel="‖W − W_r‖_F / ‖W‖_F",
            title=t("best rank-r error (Eckart–Young)", "最优秩 r 近似的误差(Eckart–Young)"))
axes[1].legend()
axes[2].plot(ranks.numpy(), (ranks * (d + k) / (d * k)).numpy(), label="r·(d+k) / d·k")
axes[2].axhline(1.0, color="grey", lw=0.8)
axes[2].set(xlabel=t("rank r", "秩 r"), ylabel=t("fraction of d·k", "占 d·k 的比例"),
            title=t(f"numbers needed, d = k = {d}", f"所需的数,d = k = {d}"))
axes[2].legend()
fig.tight_layout()

# %%
errors = relative_errors(W_q)
for r in (1, 8, 64):
    r = min(r, len(errors) - 1)
    print(t(f"r = {r:3d}: W_q keeps {1 - errors[r].item() ** 2:6.1%} of its energy (Σσ²), "
            f"random keeps {1 - relative_errors(noise)[r].item() ** 2:6.1%}; numbers r·(d+k) = {r * (d + k):,} "
            f"of d·k = {d * k:,}",
            f"r = {r:3d}:W_q 保留 {1 - errors[r].item() ** 2:6.1%} 的能量(Σσ²),随机矩阵保留 "
            f"{1 - relative_errors(noise)[r].item() ** 2:6.1%};需要 r·(d+k) = {r * (d + k):,} 个数,共 d·k = {d * k:,}"))
r90 = int((errors ** 2 <= 0.1).nonzero()[0])
r90_noise = int((relative_errors(noise) ** 2 <= 0.1).nonzero()[0])
faster = r90 < r90_noise
S.say(f"**What this tells us.** Keeping 90 % of Wq's energy takes r = {r90} of {min(d, k)} directions "
      f"(factors of {r90 * (d + k):,} numbers for a matrix of {d * k:,}); a random matrix of the same norm needs "
      f"r = {r90_noise}. " + ("So the spectrum decays faster than a random matrix's, but slowly: the weight "
                              "is *not* low-rank." if faster else
                              "Here the spectrum decays no faster than a random matrix's: no low-rank structure at all.")
      + (" (Quick mode: this is the tiny random model's matrix, so no structure is expected.)" if S.quick else "")
      + " So LoRA does **not** compress W. Its hypothesis is about the *change* that fine-tuning makes: that "
      "ΔW = W_finetuned − W0 has a low \"intrinsic rank\", so it can be learned as B·A with a small r while W0 "
      "stays frozen. Lesson 2 builds that update; lesson 5 measures the spectrum of a real full fine-tuning "
      "update to test the hypothesis.",
      f"**这说明什么。** 要保留 Wq 90% 的能量,需要 {min(d, k)} 个方向中的 r = {r90} 个(因子共 {r90 * (d + k):,} 个数,"
      f"而矩阵本身有 {d * k:,} 个);同范数的随机矩阵需要 r = {r90_noise}。"
      + ("所以它的谱比随机矩阵衰减得快,但很慢:权重矩阵本身*不是*低秩的。" if faster else
         "这里它的谱并不比随机矩阵衰减得快:完全没有低秩结构。")
      + ("(快速模式:这是微型随机模型的矩阵,本来就不该有结构。)" if S.quick else "")
      + "所以 LoRA **不是**在压缩 W。它的假设针对的是微调带来的*变化*:ΔW = W_finetuned − W0 的\"内在秩\"很低,"
      "因此可以在冻结 W0 的同时,用小 r 的 B·A 来学习它。第 2 课构造这个更新;第 5 课测量一次真实全量微调更新的谱来检验"
      "这个假设。")

# %% [markdown] lang="en"
# ## Check yourself
#
# Work out each answer by hand first: in `loralab learn 1 --exercises` every answer is `None` until you
# write it (the hint folds open above the cell). The lesson compares your value with one computed a
# *different* way and says right, wrong or missing for each; none of them stops the lesson.
#
# 1. How many numbers does a rank-8 factorisation B·A of MiniLM's MLP matrix W_up (1536×384) need?
# 2. Eckart–Young: predict ‖W_q − W_q,8‖_F from the singular values alone (`sigma`), then the lesson
#    measures it by forming W_q,8.
# 3. What is the rank of B·A for a random B (384×8) and A (8×384)?
# 4. Full fine-tuning of GPT-3 175B with mixed-precision Adam: how many bytes of weights, master copy,
#    gradients and moments? (`P` holds its parameter count; `loralab budget` adds them up term by term.)
# 5. Up to which rank is a factorisation of a 384×384 matrix smaller than the matrix itself?

# %% [markdown] lang="zh"
# ## 自我检查
#
# 先手算每个答案:在 `loralab learn 1 --exercises --lang zh` 中,每个答案在你写下之前都是 `None`(提示在代码
# 上方,可以展开)。课程会用*另一种*方法算出的值与你的答案比较,逐题给出对、错或未答;任何一题都不会让课程中断。
#
# 1. MiniLM 的 MLP 矩阵 W_up(1536×384)做秩 8 分解 B·A,需要多少个数?
# 2. Eckart–Young:只用奇异值(`sigma`)预测 ‖W_q − W_q,8‖_F,课程再构造 W_q,8 实际测量。
# 3. 随机的 B(384×8)与 A(8×384)的乘积 B·A 的秩是多少?
# 4. 用混合精度 Adam 全量微调 GPT-3 175B:权重、主权重、梯度和矩一共多少字节?(`P` 是它的参数量;
#    `loralab budget` 会逐项相加。)
# 5. 384×384 矩阵的分解在秩不超过多少时比矩阵本身小?

# %%
d_up, k_up = W_up.shape
# hint[en]: a rank-r factorisation of a d×k matrix holds B (d×r) and A (r×k); use d_up and k_up.
# hint[zh]: d×k 矩阵的秩 r 分解包含 B(d×r)和 A(r×k);用 d_up 和 k_up。
answer_1 = 8 * (d_up + k_up)                                   # r·(d + k) = 8·(1536 + 384) = 15,360
plan = plan_injection(encoder, LoraConfig(r=8, targets=["encoder.layer.0.intermediate.dense"]))
checks.equal("answer_1", answer_1, sum(module.num_params for module in plan),
             t("numbers in a rank-8 factorisation of W_up (vs loralab's injection plan)",
               "W_up 的秩 8 分解中的数(对比 loralab 的注入计划)"),
             t("B is d×r and A is r×k: r·(d + k) numbers", "B 是 d×r,A 是 r×k:共 r·(d + k) 个数"), "low-rank")

r = min(8, min(W_q.shape))
# hint[en]: Eckart–Young: the error is the square root of the sum of the squared singular values you drop (sigma[r:]).
# hint[zh]: Eckart–Young:误差等于被丢掉的奇异值平方和的平方根(Python 中是 sigma[r:])。
answer_2 = math.sqrt(float((sigma[r:] ** 2).sum()))            # sqrt(σ9² + … + σ384²)
checks.close("answer_2", answer_2, float(torch.linalg.matrix_norm(W_q - best_rank_r(W_q, r))),
             t("‖W_q − W_q,8‖_F from σ vs measured", "由 σ 算出的 ‖W_q − W_q,8‖_F 对比实测"), rel=1e-9,
             why=t("the error of the best rank-8 approximation is sqrt(σ9² + … + σq²)",
                   "最优秩 8 近似的误差是 sqrt(σ9² + … + σq²)"), concept="svd")

# hint[en]: rank(B·A) ≤ min(rank B, rank A); random factors have full rank.
# hint[zh]: 秩(B·A) ≤ min(秩 B, 秩 A);随机矩阵是满秩的。
answer_3 = 8                                                   # rank(B·A) ≤ min(rank B, rank A) = 8
product = torch.randn(d, 8, generator=g, dtype=torch.float64) @ torch.randn(8, k, generator=g, dtype=torch.float64)
checks.equal("answer_3", answer_3, int(torch.linalg.matrix_rank(product)),
             t(f"rank of a random ({d}×8)·(8×{k}) product", f"随机 ({d}×8)·(8×{k}) 乘积的秩"),
             t(f"the product of a {d}×8 and an 8×{k} matrix has rank ≤ 8, and random factors reach it",
               f"{d}×8 与 8×{k} 矩阵的乘积秩 ≤ 8,随机因子恰好达到 8"), "low-rank")

P = budgets["gpt3-175b"].skeleton.total_params
# hint[en]: bytes per parameter: fp16 weight 2, fp32 master copy 4, fp16 gradient 2, two fp32 moments 4 + 4.
# hint[zh]: 每个参数的字节数:fp16 权重 2、fp32 主权重 4、fp16 梯度 2、两个 fp32 矩 4 + 4。
answer_4 = 16 * P                                              # (2 + 4 + 2 + 4 + 4) bytes × 174.6B
checks.equal("answer_4", answer_4, model_states(budgets["gpt3-175b"].memory_full),
             t("GPT-3 full fine-tuning model states (bytes)", "GPT-3 全量微调的模型状态(字节)"),
             t("16 bytes for each of the 174.6B parameters", "1746 亿个参数,每个 16 字节"), "peft")

# hint[en]: solve r·(384 + 384) < 384·384 for the largest whole r.
# hint[zh]: 求满足 r·(384 + 384) < 384·384 的最大整数 r。
answer_5 = 191                                                 # r·(384+384) < 384·384  ⇔  r < 192
smaller = [r for r in range(1, 385) if r * (384 + 384) < 384 * 384]
checks.equal("answer_5", answer_5, max(smaller),
             t("largest r whose factors are smaller than a 384×384 matrix", "因子比 384×384 矩阵小的最大 r"),
             t("r·768 < 147,456 ⇔ r < 192", "r·768 < 147,456 ⇔ r < 192"), "low-rank")
checks.summary()
