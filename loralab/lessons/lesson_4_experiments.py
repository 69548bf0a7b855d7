# %% [markdown] lang="en"
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
# 5. **Training-set size**: LoRA and full fine-tuning on 100, 300 and 768 examples (Appendix F.3, Table 16).
#
# The LoRA adapters come from lesson 3 (r = 8 and r = 64 on Wq, Wv of all-MiniLM-L6-v2, SST-2); if lesson 3
# has not run, they are trained here.

# %% [markdown] lang="zh"
# # 阶段 4:深入理解实验结果——基线对比、子空间相似性、特征放大、推理延迟
#
# 学习路线的第 4 阶段:以缩小的规模重做解释 LoRA 的实验(Hu 等,2021,§5-§7)。
#
# 1. **与其他方法对比**:全量微调、Adapter 层(Houlsby 等,2019)和 Prefix-tuning(Li & Liang,2021),与 LoRA
#    使用相同的数据、相同的步数训练。
# 2. **子空间相似性**:r = 8 和 r = 64 的适配器学到的是同样的方向吗?(§7.2,图 3)
# 3. **ΔW 与 W**:更新放大了预训练权重的哪些方向,放大多少?(§7.3)
# 4. **推理延迟从哪里来**:Adapter 与它后面的层*串行*执行;LoRA *并行*执行,而且可以被合并掉。我们计数并计时。
# 5. **训练集大小**:LoRA 与全量微调在 100、300 和 768 个样本上的表现(附录 F.3,表 16)。
#
# LoRA 适配器来自第 3 课(all-MiniLM-L6-v2 的 Wq、Wv 上 r = 8 和 r = 64,SST-2);如果第 3 课还没运行,就在这里训练。

# %%
import statistics
from collections import Counter

import matplotlib.pyplot as plt
import torch
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from loralab.analysis import analyze_adapters, load_deltas
from loralab.experiments.data_size import PAPER_SIZES, PAPER_TABLE16
from loralab.lessons import kit
from loralab.models import load_model
from loralab.timing.latency import LatencySettings, build_configurations, make_inputs, measure_latency

S = kit.settings()
t = S.t                     # t(English, Chinese): every text the code prints or draws, in the page's language
checks = kit.Checks(S)
S.announce()
R_SMALL, R_LARGE = 8, (16 if S.quick else 64)

# %% [markdown] lang="en"
# ## 1. LoRA against full fine-tuning, adapters and prefix-tuning
#
# Same recipe for every method: the lessons' seeded SST-2 subset, the same steps and batches, the new
# classifier head trained in every case; only the learning rate is per method (full fine-tuning needs a far
# smaller one). Sizes are matched to LoRA r = 8 on Wq, Wv (73,728 values + the head): Houlsby adapters with a
# bottleneck of m = 8 (two per block) and prefixes of length 16 on the keys and values of every layer.

# %% [markdown] lang="zh"
# ## 1. LoRA 对比全量微调、Adapter 和 Prefix-tuning
#
# 每种方法使用同一套设置:课程固定随机种子的 SST-2 子集,相同的步数和批次,每种情况都训练新分类头;只有学习率因方法
# 而异(全量微调需要小得多的学习率)。规模与 Wq、Wv 上 r = 8 的 LoRA(73,728 个参数 + 分类头)对齐:瓶颈 m = 8 的
# Houlsby Adapter(每块两个),以及每层键和值上长度 16 的前缀。

# %%
runs = {
    f"LoRA r={R_SMALL} (Wq, Wv)": kit.lora_run(S, R_SMALL),
    f"LoRA r={R_LARGE} (Wq, Wv)": kit.lora_run(S, R_LARGE),
    "full fine-tuning": kit.train_run(S, "full"),
    "Houlsby adapters, m=8": kit.train_run(S, "houlsby", bottleneck=8),
    "prefix-tuning, l=16": kit.train_run(S, "prefix", length=16),
}
lora_values = runs[f"LoRA r={R_SMALL} (Wq, Wv)"].trainable
print(t(f"{'method':26} {'lr':>7} {'trained values':>15} {'× LoRA r=8':>10} {'dev acc':>8} {'s/step':>7}",
        f"{'方法':24} {'学习率':>5} {'训练参数':>13} {'× LoRA r=8':>10} {'验证准确率':>6} {'秒/步':>6}"))
for name, run in runs.items():
    print(f"{name:26} {run.lr:>7.0e} {run.trainable:>15,} {run.trainable / lora_values:>10.2f} "
          f"{run.dev_accuracy:>8.3f} {run.seconds_per_step:>7.2f}")

accuracy = runs["full fine-tuning"].dev_accuracy
standard_error = (accuracy * (1 - accuracy) / S.recipe.dev_sentences) ** 0.5
print(t(f"one standard error of a dev accuracy near {accuracy:.2f} on {S.recipe.dev_sentences} sentences: "
        f"{standard_error:.3f}",
        f"{S.recipe.dev_sentences} 个句子上、准确率约 {accuracy:.2f} 时的一个标准误:{standard_error:.3f}"))

fig, ax = plt.subplots(figsize=(7.5, 3.6))
for name, run in runs.items():
    ax.plot(kit.smooth(run.losses), label=name)
ax.set(xlabel=t("optimizer step", "优化步"), ylabel=t("training loss (moving average of 10)", "训练损失(10 步滑动平均)"),
       title=t("the same data, five methods", "同样的数据,五种方法"))
ax.legend(fontsize=8)
fig.tight_layout()

# %%
LEVEL = 0.6                 # a convergence-speed proxy: the first step where the smoothed loss falls below it


def first_below(losses, level: float = LEVEL):
    return next((i for i, value in enumerate(kit.smooth(losses)) if value < level), None)


reached = {name: first_below(run.losses) for name, run in runs.items()}
for name, step in reached.items():
    print(t(f"{name:26} smoothed loss below {LEVEL} at step {step if step is not None else '— (not reached)'}",
            f"{name:26} 平滑损失低于 {LEVEL} 的步数:{step if step is not None else '—(未达到)'}"))
order = sorted((step, name) for name, step in reached.items() if step is not None)
full_name, lora_name = "full fine-tuning", f"LoRA r={R_SMALL} (Wq, Wv)"
full_step, lora_step = reached[full_name], reached[lora_name]
best = max(runs, key=lambda name: runs[name].dev_accuracy)
gap = runs[best].dev_accuracy - min(run.dev_accuracy for run in runs.values())
if full_step is not None and (lora_step is None or full_step < lora_step):
    pace_en, pace_zh = (f"full fine-tuning fitted first (step {full_step}; LoRA r = {R_SMALL}: "
                        f"{lora_step if lora_step is not None else 'not reached'})",
                        f"全量微调最先拟合(第 {full_step} 步;LoRA r = {R_SMALL}:{lora_step if lora_step is not None else '未达到'})")
elif lora_step is not None and (full_step is None or lora_step < full_step):
    pace_en, pace_zh = (f"LoRA r = {R_SMALL}'s loss fell below {LEVEL} first, at step {lora_step}, "
                        f"{'before full fine-tuning (step ' + str(full_step) + ')' if full_step is not None else 'and full fine-tuning never did'}",
                        f"LoRA r = {R_SMALL} 的损失最先降到 {LEVEL} 以下,在第 {lora_step} 步,"
                        f"{'早于全量微调(第 ' + str(full_step) + ' 步)' if full_step is not None else '全量微调始终没有达到'}")
else:
    pace_en, pace_zh = (f"neither full fine-tuning nor LoRA got the smoothed loss below {LEVEL}" if full_step is None
                        else f"full fine-tuning and LoRA crossed {LEVEL} at the same step ({full_step})",
                        f"全量微调和 LoRA 的平滑损失都没有降到 {LEVEL} 以下" if full_step is None
                        else f"全量微调和 LoRA 在同一步({full_step})越过 {LEVEL}")
noise = gap <= 2 * standard_error
S.say(f"Measured here: {pace_en}. The best dev accuracy is {best}'s {runs[best].dev_accuracy:.3f}; the spread between "
      f"methods is {gap:.3f}, " + ("within two standard errors: noise, no ranking." if noise else
                                   f"more than two standard errors ({2 * standard_error:.3f}).")
      + (" (Quick mode: a tiny random model — the curves say nothing about the methods.)" if S.quick else ""),
      f"这里的实测:{pace_zh}。验证准确率最高的是 {best},{runs[best].dev_accuracy:.3f};各方法之间相差 {gap:.3f},"
      + ("在两个标准误以内:是噪声,不能排名。" if noise else f"超过两个标准误({2 * standard_error:.3f})。")
      + ("(快速模式:微型随机模型——这些曲线说明不了各方法的好坏。)" if S.quick else ""))

# %% [markdown] lang="en"
# What the paper found (long, tuned runs; the paper's numbers): on SST-2 with RoBERTa-base (Table 2) full
# fine-tuning scored 94.8, adapters 94.2 and LoRA 95.1. Its low-data study (Appendix F.3) also found LoRA
# holding up best when only a hundred examples are available, where prefix methods fall far behind.
# Prefix-tuning is known as a slow starter: its "virtual tokens" must first learn to matter to every
# attention layer. `loralab experiment methods` runs the full-size comparison.

# %% [markdown] lang="zh"
# 论文的发现(长时间、调过参的训练;以下是论文的数字):在 RoBERTa-base 的 SST-2 上(表 2),全量微调得 94.8,Adapter
# 得 94.2,LoRA 得 95.1。它的低数据量研究(附录 F.3)还发现,只有一百个样本时 LoRA 保持得最好,而前缀类方法落后很多。
# Prefix-tuning 以起步慢著称:它的"虚拟 token"必须先学会对每一层注意力产生影响。`loralab experiment methods` 运行
# 完整规模的对比。

# %% [markdown] lang="en"
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

# %% [markdown] lang="zh"
# ## 2. 子空间相似性:r = 8 和 r = 64 学到的是同样的方向吗?
#
# 取 A 的右奇异向量(适配器读取的输入方向):U8(k × 8)和 U64(k × 64),列按奇异值排序。论文对它们前 i 个和前 j 个
# 方向的归一化相似度是
#
#     φ(i, j) = ‖U8[:, :i]ᵀ · U64[:, :j]‖_F² / min(i, j)       ∈ [0, 1]
#
# 1 表示较小的子空间落在较大的子空间里,0 表示两者正交。R^k 中两个维度为 i 和 j 的*随机*子空间平均给出 max(i, j)/k——
# k = 384 时很小,所以明显高于它的就是共享的结构。`loralab.analysis` 对每个被适配的矩阵计算整个网格,并给出实测的
# 随机基线(同形状的高斯矩阵)。

# %%
base = kit.classifier(S)          # pretrained weights W for section 3 (the head is not analysed)
small, large = runs[f"LoRA r={R_SMALL} (Wq, Wv)"], runs[f"LoRA r={R_LARGE} (Wq, Wv)"]
report = analyze_adapters([small.adapter, large.adapter], base_model=base, trials=20, seed=0)
similarity = {s.name: s for s in report.similarity}
last = base.config.num_hidden_layers - 1
query, value = (f"bert.encoder.layer.{last}.attention.self.{m}" for m in ("query", "value"))
print(t(f"{'matrix':42} {'φ(1,1)':>7} {'random':>7} {'mean φ':>7} {'random':>7}",
        f"{'矩阵':40} {'φ(1,1)':>7} {'随机':>5} {'平均 φ':>6} {'随机':>5}"))
for name, s in similarity.items():
    print(f"{name:42} {s.top_overlap:7.3f} {s.random_mean[0][0]:7.4f} {s.mean_phi:7.3f} {s.mean_expected:7.3f}")

fig, axes = plt.subplots(1, 3, figsize=(14, 3.2))
for ax, (title, grid) in zip(axes, ((t(f"ΔWq, layer {last}", f"ΔWq,第 {last} 层"), similarity[query].phi),
                                    (t(f"ΔWv, layer {last}", f"ΔWv,第 {last} 层"), similarity[value].phi),
                                    (t("two random Gaussian A's", "两个随机高斯 A"), similarity[query].random_mean))):
    image = ax.imshow(torch.tensor(grid).numpy(), vmin=0, vmax=1, aspect="auto", cmap="viridis",
                      extent=(0.5, len(grid[0]) + 0.5, len(grid) + 0.5, 0.5))
    ax.set(title=title, xlabel=t(f"j (top directions of r = {R_LARGE})", f"j(r = {R_LARGE} 的前 j 个方向)"),
           ylabel=t(f"i (top of r = {R_SMALL})", f"i(r = {R_SMALL} 的前 i 个)"))
fig.colorbar(image, ax=axes, label="φ(i, j)")

# %%
top_phi = similarity[query].top_overlap
random_top = similarity[query].random_mean[0][0]
S.say(f"Measured here, last layer's ΔWq: φ(1, 1) = {top_phi:.3f} against {random_top:.4f} for random subspaces "
      f"(×{top_phi / random_top:.0f}). "
      + ("The top direction of the small adapter is largely shared with the large one, as the paper found (GPT-3, "
         "layer 48): the extra directions of a large r mostly hold noise, so a small r suffices."
         if top_phi > 0.5 else
         "The top directions are shared far more than chance, though less than the paper's GPT-3 adapters share them."
         if top_phi > 5 * random_top else
         "The top directions are not clearly shared here: no better than a few times chance.")
      + (" (Quick mode: a tiny random model, k = 32.)" if S.quick else ""),
      f"这里的实测(最后一层的 ΔWq):φ(1, 1) = {top_phi:.3f},随机子空间为 {random_top:.4f}(×{top_phi / random_top:.0f})。"
      + ("小适配器的首要方向大部分被大适配器共享,与论文的发现一致(GPT-3 第 48 层):大 r 的额外方向多半是噪声,所以小 r 就够了。"
         if top_phi > 0.5 else
         "首要方向的共享程度远高于随机,但不如论文中 GPT-3 适配器那么高。" if top_phi > 5 * random_top else
         "这里首要方向并没有明显被共享:只比随机高几倍。")
      + ("(快速模式:微型随机模型,k = 32。)" if S.quick else ""))

# %% [markdown] lang="en"
# ## 3. ΔW versus W: feature amplification
#
# Does the update point along W's strongest directions, or elsewhere? Take ΔW's top-r singular vectors U
# (d × r) and V (k × r) and measure how much of W lies in that pair of subspaces, ‖Uᵀ·W·V‖_F. Compare with
# W's own top-r directions (the most any r directions can catch: √(σ1² + … + σr²) of W) and with random
# directions. The **amplification factor** ‖ΔW‖_F / ‖Uᵀ·W·V‖_F says how strongly ΔW magnifies what W
# already does in those directions. Paper, GPT-3 Wq at layer 48: 0.32 (ΔW's directions) vs 21.67 (W's top-4)
# vs 0.02 (random) at r = 4, amplification ≈ 21.5; ≈ 2 at r = 64.

# %% [markdown] lang="zh"
# ## 3. ΔW 与 W:特征放大
#
# 更新是沿着 W 最强的方向,还是别的方向?取 ΔW 的前 r 个奇异向量 U(d × r)和 V(k × r),测量 W 落在这对子空间里的
# 部分有多少:‖Uᵀ·W·V‖_F。与 W 自己的前 r 个方向(任何 r 个方向能捕获的最大值:W 的 √(σ1² + … + σr²))以及随机
# 方向比较。**放大因子** ‖ΔW‖_F / ‖Uᵀ·W·V‖_F 表示 ΔW 把 W 在这些方向上已有的作用放大了多少倍。论文(GPT-3 第 48
# 层的 Wq,r = 4):0.32(ΔW 的方向)对 21.67(W 的前 4 个)对 0.02(随机),放大约 21.5 倍;r = 64 时约 2 倍。

# %%
print(t(f"{'matrix':42} {'r':>3} {'‖ΔW‖':>6} {'ΔW dirs':>8} {'W top-r':>8} {'random':>7} {'amplif.':>8}",
        f"{'矩阵':40} {'r':>3} {'‖ΔW‖':>6} {'ΔW 方向':>7} {'W 前 r':>7} {'随机':>5} {'放大':>6}"))
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
ax.set(yscale="log", ylabel="‖ΔW‖_F / ‖UᵀWV‖_F", title=t("amplification factor per adapted matrix", "每个被适配矩阵的放大因子"))
ax.legend()
fig.tight_layout()

# %%
m_small = amplification[(query, R_SMALL)]
alignment = m_small.proj_delta / m_small.proj_random           # how much more of W lies in ΔW's directions than in random ones
PAPER_ALIGNMENT = 0.32 / 0.02                                   # the paper's GPT-3 Wq, r = 4: 16×
smaller_than_top = m_small.proj_delta < m_small.proj_w_top
larger_for_small_r = m_small.amplification > amplification[(query, R_LARGE)].amplification
S.say(f"Measured here, last layer's ΔWq at r = {R_SMALL}: ΔW's directions catch ‖UᵀWV‖ = {m_small.proj_delta:.3f} of W, "
      f"W's own top-{R_SMALL} catch {m_small.proj_w_top:.2f}, random directions {m_small.proj_random:.3f}; amplification "
      f"{m_small.amplification:.1f} (r = {R_LARGE}: {amplification[(query, R_LARGE)].amplification:.1f}). "
      + ("As in the paper, ΔW's directions catch far less of W than W's top directions — the update does not repeat "
         "what W emphasises. " if smaller_than_top else "Unlike the paper, ΔW's directions are W's strongest here. ")
      + ("The smaller rank amplifies more, as in the paper. " if larger_for_small_r else
         "The smaller rank does not amplify more here, unlike the paper. ")
      + f"**But the match is in size only:** ΔW's directions catch {alignment:.2f}× what random directions catch, "
        f"the paper's {PAPER_ALIGNMENT:.0f}× (0.32 vs 0.02). "
      + ("So these short runs amplify directions that are barely W's features at all — the large factor comes from "
         "ΔW's norm, not from alignment (lesson 5 separates the two)." if alignment < 3 else
         "So these directions are features W already has, as the paper's reading says."),
      f"这里的实测(最后一层 ΔWq,r = {R_SMALL}):ΔW 的方向捕获 W 的 ‖UᵀWV‖ = {m_small.proj_delta:.3f},W 自己的前 {R_SMALL} 个方向"
      f"捕获 {m_small.proj_w_top:.2f},随机方向 {m_small.proj_random:.3f};放大因子 {m_small.amplification:.1f}"
      f"(r = {R_LARGE}:{amplification[(query, R_LARGE)].amplification:.1f})。"
      + ("与论文一致,ΔW 的方向捕获的 W 远少于 W 的首要方向——更新没有重复 W 已经强调的东西。" if smaller_than_top else
         "与论文不同,这里 ΔW 的方向就是 W 最强的方向。")
      + ("较小的秩放大得更多,与论文一致。" if larger_for_small_r else "这里较小的秩并没有放大得更多,与论文不同。")
      + f"**但只是数值大小相符:** ΔW 的方向捕获的是随机方向的 {alignment:.2f} 倍,论文是 {PAPER_ALIGNMENT:.0f} 倍(0.32 对 0.02)。"
      + ("所以这些短训练放大的方向几乎不是 W 已有的特征——大的放大因子来自 ΔW 的范数,而不是方向对齐(第 5 课把两者分开)。"
         if alignment < 3 else "所以这些方向正是 W 已有的特征,与论文的解读一致。"))

# %% [markdown] lang="en"
# ## 4. Where inference latency comes from: serial adapters vs parallel LoRA
#
# An **adapter** layer sits after a sublayer: h ← h + f(h·W_down)·W_up. It needs the sublayer's output h, so
# it can only start when the sublayer has finished: extra *sequential* steps in every block, which a GPU
# cannot overlap — at batch size 1, where each step is short, they dominate (the paper measured +30 % for
# Houlsby adapters on GPT-2 medium at batch 1 × 128 tokens). **LoRA** computes s·B·A·x from the *same input*
# x as W0·x: a parallel branch, and after merging (W = W0 + s·B·A) no branch at all. We build the four
# configurations (`loralab.timing.latency`: B and the adapters' up-projections set to random values so
# each computes something) and measure three things: matrix multiplications per forward pass, FLOPs, time.

# %% [markdown] lang="zh"
# ## 4. 推理延迟从哪里来:串行的 Adapter 与并行的 LoRA
#
# **Adapter** 层位于子层之后:h ← h + f(h·W_down)·W_up。它需要子层的输出 h,所以只能在子层结束后开始:每个块里多出
# *串行*步骤,GPU 无法把它们重叠——批大小为 1 时每一步都很短,这些步骤就成了主要开销(论文在 GPT-2 medium、批 1 × 128
# token 上测得 Houlsby Adapter 多 30%)。**LoRA** 从与 W0·x *相同的输入* x 计算 s·B·A·x:一条并行支路,合并
# (W = W0 + s·B·A)之后就根本没有支路。我们构造四种配置(`loralab.benchmarking.latency`:B 和 Adapter 的上投影设为
# 随机值,让它们都真正计算点什么),测量三件事:每次前向传播的矩阵乘法次数、FLOPs、时间。

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
    print(t(f"{name:14} {calls:4d} matmul calls  {flops / 1e9:7.3f} GFLOP  "
            f"(+{calls - work['base'][0]} calls, +{(flops - work['base'][1]) / work['base'][1]:.2%} FLOPs vs base)",
            f"{name:14} {calls:4d} 次矩阵乘法  {flops / 1e9:7.3f} GFLOP  "
            f"(比基础模型多 {calls - work['base'][0]} 次调用,FLOPs 多 {(flops - work['base'][1]) / work['base'][1]:.2%})"))

# %%
repeats = 5 if S.quick else 15
rows = measure_latency(encoder, batch_sizes=[1, 16], seq_lens=[32], repeats=repeats, warmup=2,
                       bottleneck=bottleneck, lora_r=lora_r)
base_rows = {row.batch_size: row for row in rows if row.config == "base"}


def within_noise(row) -> bool:
    """A difference from the base no larger than the two measurements' spread (the sum of their IQRs)."""
    base_row = base_rows[row.batch_size]
    return abs(row.median_ms - base_row.median_ms) <= row.iqr_ms + base_row.iqr_ms


for row in rows:
    verdict = "" if row.config == "base" else t(" within noise" if within_noise(row) else " beyond noise",
                                                 "(在噪声范围内)" if within_noise(row) else "(超出噪声)")
    print(t(f"batch {row.batch_size:2d} × {row.seq_len} tokens  {row.config:14} median {row.median_ms:8.2f} ms "
            f"(IQR {row.iqr_ms:6.2f})  {row.overhead_pct:+6.1f} %",
            f"批 {row.batch_size:2d} × {row.seq_len} token  {row.config:14} 中位数 {row.median_ms:8.2f} ms "
            f"(IQR {row.iqr_ms:6.2f})  {row.overhead_pct:+6.1f} %") + verdict)

fig, axes = plt.subplots(1, 2, figsize=(11, 3.2), sharey=False)
for ax, batch_size in zip(axes, (1, 16)):
    shape_rows = [row for row in rows if row.batch_size == batch_size]
    ax.bar([row.config for row in shape_rows], [row.median_ms for row in shape_rows],
           yerr=[row.iqr_ms / 2 for row in shape_rows], color=["#888", "#c44", "#47a", "#4a7"])
    ax.set(ylabel=t("ms per forward (median, ± IQR/2)", "每次前向的毫秒数(中位数,± IQR/2)"),
           title=t(f"batch {batch_size} × 32 tokens", f"批 {batch_size} × 32 token"))
fig.tight_layout()

# %%
noisy = [row for row in rows if row.config != "base" and within_noise(row)]
clear = [row for row in rows if row.config != "base" and not within_noise(row)]
S.say("Of the timed differences from the base, "
      + (f"{len(noisy)} of {len(noisy) + len(clear)} are within noise (no larger than the IQRs): "
         + ", ".join(f"{row.config} at batch {row.batch_size} ({row.overhead_pct:+.1f} %)" for row in noisy)
         + " — read them as no measured difference. " if noisy else "none is within noise. ")
      + ("Beyond noise: " + ", ".join(f"{row.config} at batch {row.batch_size} ({row.overhead_pct:+.1f} %)"
                                      for row in clear) + "." if clear else ""),
      "与基础模型的计时差异中,"
      + (f"{len(noisy) + len(clear)} 个里有 {len(noisy)} 个在噪声范围内(不大于 IQR):"
         + "、".join(f"批 {row.batch_size} 的 {row.config}({row.overhead_pct:+.1f} %)" for row in noisy)
         + "——应读作没有测出差异。" if noisy else "没有一个在噪声范围内。")
      + ("超出噪声的:" + "、".join(f"批 {row.batch_size} 的 {row.config}({row.overhead_pct:+.1f} %)"
                                  for row in clear) + "。" if clear else ""))

# %% [markdown] lang="en"
# The counts and FLOPs are exact; the times are not. Adapters and unmerged LoRA add the same *kind* of work
# (a few small matrix products per adapted layer), but only the adapter's products sit on the critical
# path; the LoRA branch could run alongside W0·x, and merged LoRA runs exactly the base model's operations.
# On a CPU that runs one operation after another, the time differences are a few percent at most and, on a
# machine shared with other jobs, within the noise (look at the IQR) — the paper's large adapter overheads
# come from GPUs at batch 1, where every extra sequential kernel launch costs time even when it does little.
# Merged LoRA is the base architecture: whatever the clock says, it does identical work.

# %% [markdown] lang="zh"
# 次数和 FLOPs 是精确的;时间不是。Adapter 和未合并的 LoRA 增加的是同*一类*工作(每个被适配层几次小矩阵乘法),但只有
# Adapter 的乘法位于关键路径上;LoRA 支路可以与 W0·x 同时运行,而合并后的 LoRA 执行的运算与基础模型完全相同。在一个
# 接一个执行运算的 CPU 上,时间差最多只有百分之几,在与其他任务共享的机器上更是落在噪声里(看 IQR)——论文中 Adapter
# 的大开销来自批大小为 1 的 GPU,在那里每多一次串行的 kernel 启动都要花时间,即使它做的事很少。合并后的 LoRA 就是基础
# 架构:无论时钟怎么说,它做的工作完全相同。

# %% [markdown] lang="en"
# ## 5. How much data? LoRA and full fine-tuning on growing training sets
#
# The paper's Appendix F.3 (Table 16) trains GPT-3 on MNLI subsets of 100, 1,000, 10,000 and all 392,702
# examples and finds LoRA at or above full fine-tuning at every size — most clearly at 100 examples. Here,
# in miniature: LoRA r = 8 on Wq, Wv and full fine-tuning on 100, 300 and all 768 of the lessons' SST-2
# training sentences (the 768 are section 1's runs, from the cache). The subsets are nested (the 100 lie
# inside the 300), and every run takes the recipe's steps, so a small set is passed over several times: the
# sizes differ in data, not in compute. At 100 each method trains with two seeds (the table shows the median
# and the min–max), since one short run on 100 examples says little; the larger sizes have one seed each.
# `loralab experiment data-size` runs the full-size version (100,
# 1,000, 8,000 and all 67,349 sentences, three seeds on the small sets, prefix-tuning and adapters too).
#
# **Predict before you run the next cell:** on the smallest set, will LoRA score at least as high as full
# fine-tuning? Write True or False in `prediction_1`.

# %% [markdown] lang="zh"
# ## 5. 需要多少数据?训练集逐渐增大时的 LoRA 与全量微调
#
# 论文附录 F.3(表 16)在 MNLI 的 100、1,000、10,000 和全部 392,702 个样本的子集上训练 GPT-3,发现 LoRA 在每种规模上
# 都不低于全量微调——在 100 个样本时最明显。这里是缩小版:在课程 SST-2 训练句子中的 100 个、300 个和全部 768 个上,
# 分别训练 Wq、Wv 上 r = 8 的 LoRA 和全量微调(768 个的就是第 1 节的训练,从缓存读取)。子集是嵌套的(那 100 个包含
# 在 300 个里面),每次训练都用课程设置的步数,所以小数据集会被重复学习好几遍:各规模之间不同的是数据,不是计算量。
# 在 100 个样本上每种方法用两个随机种子训练(表中给出中位数和最小–最大),因为 100 个样本上的一次短训练说明不了
# 多少;更大的规模各用一个种子。
# `loralab experiment data-size` 运行完整规模的版本(100、1,000、8,000 和全部 67,349 个句子,小数据集用三个随机种子,
# 还包括 Prefix-tuning 和 Adapter)。
#
# **运行下一个单元之前先预测:** 在最小的数据集上,LoRA 的得分会不会不低于全量微调?把 True 或 False 写进
# `prediction_1`。

# %%
# hint[en]: the paper's Table 16: at 100 examples LoRA 63.8, full fine-tuning 60.2; full fine-tuning moves every weight, so it can also overfit every weight.
# hint[zh]: 论文表 16:100 个样本时 LoRA 63.8,全量微调 60.2;全量微调改动每一个权重,所以也可能让每一个权重过拟合。
prediction_1 = True             # the paper's finding: LoRA holds up at least as well in the low-data regime

# %%
ALL = S.recipe.train_sentences                         # 768 (quick mode: 48)
SIZES = (16, 32, ALL) if S.quick else (100, 300, ALL)
# Seeds per size: two at the smallest set, where one seed says least; one above (each more seed at a size costs
# ≈ 54 CPU s, full fine-tuning 36 and LoRA 18: lessons/README.md's timings). A seed changes the head's and the adapter's
# initialisation, the dropout masks and the batch order, not the subset (kit.train_run).
SEEDS = {n: (2 if n == SIZES[0] else 1) for n in SIZES}   # a third seed: lesson 4 past 5 minutes
by_size = {"LoRA": {}, "full": {}}                     # method -> size -> runs, seed 0 first
for n in SIZES:
    whole = n == ALL                                   # the recipe's whole training set: section 1's runs
    by_size["LoRA"][n] = [runs[f"LoRA r={R_SMALL} (Wq, Wv)"]] if whole else [
        kit.lora_run(S, R_SMALL, train_size=n, seed=seed) for seed in range(SEEDS[n])]
    by_size["full"][n] = [runs["full fine-tuning"]] if whole else [
        kit.train_run(S, "full", train_size=n, seed=seed) for seed in range(SEEDS[n])]


def spread(method: str, n: int) -> tuple[float, float, float]:
    """(median, min, max) of the dev accuracies over the seeds of one cell."""
    values = [run.dev_accuracy for run in by_size[method][n]]
    return statistics.median(values), min(values), max(values)


def span(method: str, n: int) -> str:
    _, low, high = spread(method, n)
    return f"{low:.3f}–{high:.3f}"


def cell(method: str, n: int) -> str:
    median, low, high = spread(method, n)
    return f"{median:.3f}" if SEEDS[n] == 1 else f"{median:.3f} ({low:.3f}–{high:.3f})"


dev_n = S.recipe.dev_sentences
print(t(f"dev accuracy on {dev_n} SST-2 dev sentences ({S.recipe.steps} steps of {S.recipe.batch_size} at every size; "
        "several seeds: median (min–max))",
        f"{dev_n} 个 SST-2 验证句子上的准确率(每种规模都是 {S.recipe.steps} 步,每步 {S.recipe.batch_size} 句;"
        "多个随机种子:中位数(最小–最大))"))
print(f"{t('training examples', '训练样本数'):17}"
      + "".join(f"{f'{n:,}' + (t(f' ({SEEDS[n]} seeds)', f'({SEEDS[n]} 个种子)') if SEEDS[n] > 1 else ''):>22}"
                for n in SIZES)
      + t("      paper (GPT-3, MNLI, Table 16): ", "      论文(GPT-3,MNLI,表 16):") + " / ".join(f"{n:,}" for n in PAPER_SIZES))
for method, paper_key in (("LoRA", "lora"), ("full", "full")):
    label = t({"LoRA": "LoRA r=8", "full": "full fine-tuning"}[method], {"LoRA": "LoRA r=8", "full": "全量微调"}[method])
    print(f"{label:17}" + "".join(f"{cell(method, n):>22}" for n in SIZES)
          + "      " + " / ".join(f"{v}" for v in PAPER_TABLE16[paper_key]))
passes = {n: S.recipe.steps * S.recipe.batch_size / n for n in SIZES}
print(t("passes over the data: ", "遍历数据的次数:") + ", ".join(f"{n:,}: {p:.1f}" for n, p in passes.items()))

fig, ax = plt.subplots(figsize=(7, 3.6))
for method, color in (("LoRA", "C0"), ("full", "C1")):
    cells = [spread(method, n) for n in SIZES]
    below, above = [], []                              # bars: the seeds' min–max, or ± one standard error (one seed)
    for n, (median, low, high) in zip(SIZES, cells):
        error = (median * (1 - median) / dev_n) ** 0.5
        below.append(median - low if SEEDS[n] > 1 else error)
        above.append(high - median if SEEDS[n] > 1 else error)
    ax.errorbar(list(SIZES), [c[0] for c in cells], yerr=[below, above], marker="o", capsize=3, color=color,
                label=t({"LoRA": "LoRA r = 8 (Wq, Wv)", "full": "full fine-tuning"}[method],
                        {"LoRA": "LoRA r = 8(Wq、Wv)", "full": "全量微调"}[method]))
lowest_5 = min(run.dev_accuracy for runs_of in by_size.values() for seeds in runs_of.values() for run in seeds)
ax.set(xscale="log", ylim=(min(0.45, lowest_5 - 0.1), 1.0), xlabel=t("training examples (log scale)", "训练样本数(对数刻度)"),
       ylabel=t("dev accuracy (median)", "验证准确率(中位数)"),
       title=t(f"accuracy against training-set size (bars: min–max of {SEEDS[SIZES[0]]} seeds at {SIZES[0]:,}, "
               "± one standard error elsewhere)",
               f"准确率与训练集大小(误差棒:{SIZES[0]:,} 个样本时为 {SEEDS[SIZES[0]]} 个种子的最小–最大,其余为 ± 一个标准误)"),
       )
ax.title.set_fontsize(9)
ax.set_xticks(list(SIZES), [f"{n:,}" for n in SIZES])
ax.minorticks_off()
ax.legend(loc="lower right")
fig.tight_layout()

# %%
smallest = SIZES[0]
lora_small, full_small = spread("LoRA", smallest)[0], spread("full", smallest)[0]
checks.predict("prediction_1", prediction_1, lora_small >= full_small,
               t(f"LoRA at least as good as full fine-tuning on {smallest} examples "
                 f"(medians of {SEEDS[smallest]} seeds)",
                 f"{smallest} 个样本时 LoRA 不低于全量微调({SEEDS[smallest]} 个种子的中位数)"),
               t(f"LoRA {cell('LoRA', smallest)}, full fine-tuning {cell('full', smallest)}",
                 f"LoRA {cell('LoRA', smallest)},全量微调 {cell('full', smallest)}"))
gaps_5 = {n: spread("LoRA", n)[0] - spread("full", n)[0] for n in SIZES}      # medians
noise_5 = {n: 2 * sum((a * (1 - a) / dev_n) for a in (spread("LoRA", n)[0], spread("full", n)[0])) ** 0.5
           for n in SIZES}


def lead(n: int) -> str:
    """"ahead" / "behind" (LoRA against full fine-tuning) or "within": with several seeds, ahead only when the seed
    ranges do not overlap; with one seed, when the gap is over two standard errors of the difference."""
    (_, lora_low, lora_high), (_, full_low, full_high) = spread("LoRA", n), spread("full", n)
    if SEEDS[n] > 1:
        return "ahead" if lora_low > full_high else "behind" if lora_high < full_low else "within"
    return "within" if abs(gaps_5[n]) <= noise_5[n] else "ahead" if gaps_5[n] > 0 else "behind"


leads_5 = {n: lead(n) for n in SIZES}
paper_gap = PAPER_TABLE16["lora"][0] - PAPER_TABLE16["full"][0]
medians_5 = {m: {n: spread(m, n)[0] for n in SIZES} for m in by_size}
grows = all(medians_5[m][SIZES[-1]] > medians_5[m][SIZES[0]] for m in by_size)
dips = [(m, a, b) for m in by_size for a, b in zip(SIZES, SIZES[1:])
        if medians_5[m][b] < medians_5[m][a]]                                  # more data, lower accuracy
dips_en = ", ".join(f"{m} at {b:,} ({medians_5[m][b]:.3f}) below {a:,} ({medians_5[m][a]:.3f})" for m, a, b in dips)
zh_names = {"LoRA": "LoRA", "full": "全量微调"}
dips_zh = ",".join(f"{zh_names[m]} 在 {b:,} 个样本时({medians_5[m][b]:.3f})低于 "
                   f"{a:,} 个时({medians_5[m][a]:.3f})" for m, a, b in dips)
if grows and not dips:
    more_en, more_zh = "More data helped both methods here, at every step. ", "更多的数据在每一步都对两种方法有帮助。"
elif grows:
    more_en = (f"From the smallest set to the whole one both methods gained, but not at every step: {dips_en} — one "
               "subset per size and few seeds, so such a dip may be the draw rather than the size. ")
    more_zh = f"从最小数据集到全部数据,两种方法都有提高,但并非每一步都提高:{dips_zh}——每种规模只有一个子集、很少的随机种子,这样的下降可能来自抽样而不是规模。"
else:
    more_en = ("More data did not help both methods here: on runs this short, the subset drawn and the seed matter as "
               "much as the size. ")
    more_zh = "更多的数据并没有对两种方法都有帮助:训练这么短时,抽到哪个子集、用哪个随机种子和子集大小一样重要。"
LEAD_EN = {"ahead": "LoRA ahead", "behind": "full fine-tuning ahead"}
LEAD_ZH = {"ahead": "LoRA 领先", "behind": "全量微调领先"}
gap_en = "; ".join(f"{n:,}: {gaps_5[n]:+.3f} ("
                   + (LEAD_EN.get(leads_5[n]) or ("within the seed spread" if SEEDS[n] > 1 else "within noise"))
                   + (f", seed ranges LoRA {span('LoRA', n)}, full {span('full', n)}" if SEEDS[n] > 1 else "")
                   + ")" for n in SIZES)
gap_zh = ";".join(f"{n:,}:{gaps_5[n]:+.3f}("
                  + (LEAD_ZH.get(leads_5[n]) or ("在种子的波动范围以内" if SEEDS[n] > 1 else "在噪声以内"))
                  + (f",种子范围 LoRA {span('LoRA', n)}、全量微调 {span('full', n)}" if SEEDS[n] > 1 else "")
                  + ")" for n in SIZES)
many = SEEDS[smallest] > 1
if leads_5[smallest] == "ahead":
    agree_en = "as in the paper, LoRA is ahead on the smallest set" + (" in every seed" if many else "")
    agree_zh = "与论文一致,LoRA 在最小数据集上领先" + ("(每个种子都是)" if many else "")
elif leads_5[smallest] == "behind":
    agree_en = "unlike the paper, full fine-tuning is ahead on the smallest set" + (" in every seed" if many else "")
    agree_zh = "与论文不同,全量微调在最小数据集上领先" + ("(每个种子都是)" if many else "")
else:
    agree_en = ("on the smallest set the two are within " + ("the seed spread of" if many else "noise of")
                + " each other, so these runs neither confirm nor contradict it")
    agree_zh = "在最小数据集上两者相差在" + ("种子的波动范围" if many else "噪声") + "以内,所以这些训练既不证实也不否定论文"
one_seed = [n for n in SIZES if SEEDS[n] == 1]
S.say(f"Measured here (LoRA − full fine-tuning, medians; {SEEDS[smallest]} seeds at {smallest:,} — one side counts as "
      f"ahead only when the seed ranges do not overlap — and one seed at {', '.join(f'{n:,}' for n in one_seed)}, "
      f"where the noise is two standard errors of the difference, about {noise_5[one_seed[0]]:.3f}): {gap_en}. "
      f"The paper's Table 16 has LoRA {paper_gap:+.1f} points ahead at 100 examples "
      f"({PAPER_TABLE16['lora'][0]} vs {PAPER_TABLE16['full'][0]}, GPT-3 on MNLI, the paper's numbers); {agree_en}. "
      + more_en
      + "A standard error covers only which dev sentences were scored, not the seed; the seed spread at "
      f"{smallest:,} shows how far the seed alone moves a run this short. `loralab experiment data-size` "
      "(200 steps of 16, all 872 dev sentences, three seeds) measured LoRA 65.3 against full fine-tuning 61.8 at 100 "
      "SST-2 sentences (medians; LoRA's seeds spread over 63.1–67.2), and full fine-tuning ahead from 1,000 on "
      "(docs/experiments.md)."
      + (" (Quick mode: a tiny random model — the lines say nothing about data size.)" if S.quick else ""),
      f"这里的实测(LoRA − 全量微调,中位数;{smallest:,} 个样本时 {SEEDS[smallest]} 个随机种子——只有种子范围不重叠时才算"
      f"一方领先——{'、'.join(f'{n:,}' for n in one_seed)} 个样本时一个种子,噪声为差值的两个标准误,约 "
      f"{noise_5[one_seed[0]]:.3f}):{gap_zh}。"
      f"论文的表 16 中 100 个样本时 LoRA 领先 {paper_gap:+.1f} 个百分点({PAPER_TABLE16['lora'][0]} 对 "
      f"{PAPER_TABLE16['full'][0]},GPT-3 在 MNLI 上,论文的数字);{agree_zh}。"
      + more_zh
      + f"标准误只反映了评分用的是哪些验证句子,不包括随机种子的影响;{smallest:,} 个样本时种子的波动范围说明了,训练这么短时"
      "单是随机种子就能让结果移动多少。`loralab experiment data-size`(200 步,每步 16 句,"
      "全部 872 个验证句子,三个随机种子)在 100 个 SST-2 句子上测得 LoRA 65.3、全量微调 61.8(中位数;LoRA 各种子在 "
      "63.1–67.2 之间),从 1,000 个起全量微调领先(docs/experiments.md)。"
      + ("(快速模式:微型随机模型——这些线说明不了数据量的影响。)" if S.quick else ""))

# %% [markdown] lang="en"
# ## Check yourself
#
# 1. Compute φ(1, 1) between the r = 8 and r = 64 Wq adapters of the last layer yourself: read A from both
#    files, take each one's top right-singular vector (`torch.linalg.svd`), square their dot product.
# 2. For random subspaces, what is E φ(1, 1)? (Here k = 384.) Compare with the measured random baseline.
# 3. Recompute the amplification factor of the last layer's ΔWq (r = 8) from the *dense* ΔW = s·B·A and a
#    dense SVD, and compare with loralab's value (which never forms ΔW).
# 4. Unmerged LoRA's extra FLOPs by hand: each adapted d×k layer adds A·x (r·k multiply-adds per token) and
#    B·(A·x) (d·r): 2·tokens·r·(d + k) FLOPs; 12 such layers in MiniLM.
# 5. How many FLOPs does merged LoRA add?
# 6. Houlsby's extra FLOPs by hand: 2 adapters per block, each two m×d products.
# 7. Section 5: how many times does the 100-example run pass over its training data?

# %% [markdown] lang="zh"
# ## 自我检查
#
# 1. 自己计算最后一层 r = 8 与 r = 64 的 Wq 适配器之间的 φ(1, 1):从两个文件读出 A,各取最大的右奇异向量
#    (`torch.linalg.svd`),把它们点积的平方算出来。
# 2. 对随机子空间,E φ(1, 1) = ?(这里 k = 384。)与实测的随机基线比较。
# 3. 用*稠密*的 ΔW = s·B·A 和稠密 SVD 重新计算最后一层 ΔWq(r = 8)的放大因子,与 loralab 的值(它从不构造 ΔW)比较。
# 4. 手算未合并 LoRA 多出的 FLOPs:每个被适配的 d×k 层增加 A·x(每个 token r·k 次乘加)和 B·(A·x)(d·r 次);
#    MiniLM 中共 12 个这样的层。
# 5. 合并后的 LoRA 多出多少 FLOPs?
# 6. 手算 Houlsby 多出的 FLOPs:每块 2 个 Adapter,每个两个 m×d 乘积。
# 7. 第 5 节:100 个样本的训练把它的训练数据遍历了多少遍?

# %%
deltas_small, _ = load_deltas(small.adapter)
deltas_large, _ = load_deltas(large.adapter)
A_small = next(d.A for d in deltas_small if d.name == query)                 # (8, k)
A_large = next(d.A for d in deltas_large if d.name == query)                 # (64, k)
top_small = torch.linalg.svd(A_small, full_matrices=False).Vh[0]             # (k,): top right-singular vector
top_large = torch.linalg.svd(A_large, full_matrices=False).Vh[0]
# hint[en]: φ(1, 1) of two single directions u, v is (u·v)²: square the dot product of top_small and top_large.
# hint[zh]: 两个单一方向 u、v 的 φ(1, 1) 是 (u·v)²:把 top_small 与 top_large 的点积平方。
answer_1 = float(top_small @ top_large) ** 2
checks.close("answer_1", answer_1, similarity[query].top_overlap,
             t(f"φ(1,1) of ΔWq, layer {last}: by hand vs loralab.analysis", f"第 {last} 层 ΔWq 的 φ(1,1):手算对比 loralab.analysis"),
             rel=1e-9, abs_=1e-12, why=t("φ(1,1) = (u·v)² for the two top right-singular vectors", "φ(1,1) = 两个首要右奇异向量点积的平方"),
             concept="subspace")

k = A_small.shape[1]
trials = 20                      # the random mean over 20 draws has a standard deviation of about √2/(k·√20)
# hint[en]: two random subspaces of dimensions i and j in R^k give max(i, j)/k on average; use k.
# hint[zh]: R^k 中维度为 i 和 j 的两个随机子空间平均给出 max(i, j)/k;用 k。
answer_2 = 1 / k                                                             # E φ(1,1) = max(1, 1)/k
checks.close("answer_2", answer_2, similarity[query].random_mean[0][0],
             t("E φ(1,1) of random subspaces vs the measured baseline", "随机子空间的 E φ(1,1) 对比实测基线"),
             rel=0.0, abs_=4 * (2 ** 0.5) / (k * trials ** 0.5),
             why=t("E φ(1,1) = max(1, 1)/k = 1/k", "E φ(1,1) = max(1, 1)/k = 1/k"), concept="subspace")

delta = next(d for d in deltas_small if d.name == query)
dense = delta.dense()                                                        # s·B·A as a (d, k) float64 matrix
U, sv, Vh = torch.linalg.svd(dense)
W = base.bert.encoder.layer[last].attention.self.query.weight.detach().double()
r = delta.r
# hint[en]: ‖ΔW‖_F divided by ‖Uᵀ·W·V‖_F with U = U[:, :r] and V = Vh[:r].T from the dense SVD of ΔW.
# hint[zh]: ‖ΔW‖_F 除以 ‖Uᵀ·W·V‖_F,其中 U = U[:, :r]、V = Vh[:r].T 来自 ΔW 的稠密 SVD。
answer_3 = float(torch.linalg.matrix_norm(dense) / torch.linalg.matrix_norm(U[:, :r].T @ W @ Vh[:r].T))
checks.close("answer_3", answer_3, amplification[(query, R_SMALL)].amplification,
             t(f"amplification of ΔWq, layer {last}, r={r}: dense SVD vs loralab", f"第 {last} 层 ΔWq(r={r})的放大因子:稠密 SVD 对比 loralab"),
             rel=1e-6, why=t("‖ΔW‖_F / ‖U_rᵀ·W·V_r‖_F with ΔW's own top-r singular vectors", "‖ΔW‖_F / ‖U_rᵀ·W·V_r‖_F,用 ΔW 自己的前 r 个奇异向量"),
             concept="amplification")

config = configurations["base"].config
L, d_model, ffn = config.num_hidden_layers, config.hidden_size, config.intermediate_size
# hint[en]: 2 FLOPs per multiply-add; per token and adapted layer r·(d + k) multiply-adds; 2 adapted layers in each of L layers.
# hint[zh]: 每次乘加算 2 个 FLOP;每个 token、每个被适配层 r·(d + k) 次乘加;L 层中每层 2 个被适配层。
answer_4 = 2 * tokens * L * 2 * lora_r * (d_model + d_model)                # Wq and Wv in every layer
checks.equal("answer_4", answer_4, work["lora_unmerged"][1] - work["base"][1],
             t("unmerged LoRA extra FLOPs: by hand vs FlopCounterMode", "未合并 LoRA 多出的 FLOPs:手算对比 FlopCounterMode"),
             t("2·tokens·L·2·r·(d + k)", "2·tokens·L·2·r·(d + k)"), "latency")
# hint[en]: after merging, which matrices does the model multiply by?
# hint[zh]: 合并之后,模型乘的是哪些矩阵?
answer_5 = 0                                                                 # W = W0 + s·B·A: the base's matrices
checks.equal("answer_5", answer_5, work["lora_merged"][1] - work["base"][1],
             t("merged LoRA extra FLOPs", "合并后 LoRA 多出的 FLOPs"),
             t("merged LoRA multiplies by the same matrices as the base", "合并后的 LoRA 与基础模型乘的是同样的矩阵"), "latency")
# hint[en]: each adapter multiplies by W_down (d×m) and W_up (m×d): 2·d·m multiply-adds per token; 2 adapters per block.
# hint[zh]: 每个 Adapter 乘 W_down(d×m)和 W_up(m×d):每个 token 2·d·m 次乘加;每块 2 个 Adapter。
answer_6 = 2 * tokens * L * 2 * (2 * d_model * bottleneck)
checks.equal("answer_6", answer_6, work["houlsby"][1] - work["base"][1],
             t("Houlsby extra FLOPs: by hand vs FlopCounterMode", "Houlsby 多出的 FLOPs:手算对比 FlopCounterMode"),
             t("2·tokens·L·2·(2·d·m)", "2·tokens·L·2·(2·d·m)"), "latency")

run_small = by_size["LoRA"][smallest][0]
# hint[en]: every step takes batch_size examples and the run takes S.recipe.steps steps; divide by the set's size (smallest).
# hint[zh]: 每一步取 batch_size 个样本,共 S.recipe.steps 步;除以数据集大小(smallest)。
answer_7 = S.recipe.steps * S.recipe.batch_size / smallest
checks.close("answer_7", answer_7, len(run_small.losses) * run_small.settings["recipe"]["batch_size"]
             / run_small.settings["train_size"],
             t(f"passes over the data of the {smallest}-example run", f"{smallest} 个样本的训练遍历数据的次数"),
             rel=1e-9, why=t("steps × batch size / examples: the same compute spread over less data",
                             "步数 × 批大小 / 样本数:同样的计算量分摊到更少的数据上"), concept="peft")
checks.summary()
