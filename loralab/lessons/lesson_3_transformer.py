# %% [markdown] lang="en"
# # Lesson 3 — LoRA in a Transformer: its weight matrices, what each choice costs, and r = 1 … 64
#
# Stage 3 of the route. A Transformer block is mostly matrices: four in self-attention (Wq, Wk, Wv, Wo) and
# two or three in the MLP. LoRA can adapt any of them; the paper adapts only **Wq and Wv**. We list the
# matrices of two real models (all-MiniLM-L6-v2, an encoder, and SmolLM2-135M, a LLaMA-style decoder), count
# what each choice of targets costs, check the paper's GPT-3 numbers against `loralab budget`, and end with
# the route's closing practice: **train with r = 1, 2, 4, 8 and 64 side by side and watch convergence**; then
# measure the route's "compare combinations of weight matrices" the way the paper's Table 5 did: Wq, Wv, both,
# or all four attention matrices, at one budget of trainable values.

# %% [markdown] lang="zh"
# # 阶段 3:应用到 Transformer——权重矩阵、各种选择的代价,以及 r = 1 … 64
#
# 学习路线的第 3 阶段。Transformer 的一个块主要由矩阵组成:自注意力里四个(Wq、Wk、Wv、Wo),MLP 里两到三个。
# LoRA 可以适配其中任何一个;论文只适配 **Wq 和 Wv**。我们列出两个真实模型(编码器 all-MiniLM-L6-v2 和
# LLaMA 风格的解码器 SmolLM2-135M)的矩阵,计算每种目标选择的代价,用 `loralab budget` 核对论文中 GPT-3 的数字,
# 然后完成路线的收尾练习:**用 r = 1、2、4、8、64 并排训练,观察收敛过程**;最后像论文表 5 那样实测路线中的"比较不同
# 权重矩阵组合":在同一个可训练参数预算下,适配 Wq、Wv、两者,或全部四个注意力矩阵。

# %%
import matplotlib.pyplot as plt
import torch

import loralab
from loralab import LoraConfig
from loralab.budget import estimate_budgets, resolve_targets
from loralab.experiments.targets import GRID, lora_targets
from loralab.lessons import kit
from loralab.models import load_model

S = kit.settings()
t = S.t                     # t(English, Chinese): every text the code prints or draws, in the page's language
checks = kit.Checks(S)
S.announce()

# %% [markdown] lang="en"
# ## 1. The weight matrices of a Transformer block
#
# In the matrix view W is (d_out, d_in) and a layer computes h = W·x (PyTorch's `nn.Linear.weight` has exactly
# this shape). Self-attention projects each token's hidden vector x (size d_model) to a query, a key and a
# value, and projects the attention result back: Wq, Wk, Wv, Wo. The MLP widens to d_ff and comes back.

# %% [markdown] lang="zh"
# ## 1. Transformer 块中的权重矩阵
#
# 在矩阵视角下 W 的形状是 (d_out, d_in),层计算 h = W·x(PyTorch 的 `nn.Linear.weight` 正是这个形状)。自注意力把
# 每个 token 的隐藏向量 x(大小 d_model)投影成查询、键和值,再把注意力结果投影回来:Wq、Wk、Wv、Wo。MLP 先扩宽
# 到 d_ff 再变回来。

# %%
minilm = load_model(S.model, task="base")
if S.quick:   # quick mode: a tiny random LLaMA (hidden 32) stands in for SmolLM2
    from loralab.testing import tiny_model
    smollm = tiny_model("llama")
    print(t("quick mode: 'SmolLM2' below is a 2-layer random LLaMA of hidden size 32",
            "快速模式:下面的 'SmolLM2' 是一个 2 层、隐藏维度 32 的随机 LLaMA"))
else:
    smollm = load_model("smollm2-135m-instruct")


def block_matrices(model: torch.nn.Module, block: str) -> dict[str, tuple[int, int]]:
    """{module name inside the first block: weight shape (d_out, d_in)} for every linear layer of it."""
    return {name.split(block, 1)[1]: tuple(module.weight.shape) for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and block in name}


for title, model, block in (("all-MiniLM-L6-v2 (BERT)", minilm, "encoder.layer.0."),
                            ("SmolLM2-135M (LLaMA)", smollm, "model.layers.0.")):
    config = model.config
    print(t(f"{title}: {config.num_hidden_layers} blocks, d_model {config.hidden_size}, "
            f"{config.num_attention_heads} heads, MLP width {config.intermediate_size}",
            f"{title}:{config.num_hidden_layers} 个块,d_model {config.hidden_size},"
            f"{config.num_attention_heads} 个注意力头,MLP 宽度 {config.intermediate_size}"))
    for name, shape in block_matrices(model, block).items():
        print(f"    {name:28} W {shape}  ->  {shape[0] * shape[1]:>9,}" + t(" values", " 个参数"))

# %% [markdown] lang="en"
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

# %% [markdown] lang="zh"
# 有两点值得注意。MiniLM 的注意力矩阵都是方阵(384×384),而 SmolLM2 使用**分组查询注意力**:9 个查询头共享 3 个
# 键/值头,所以 Wk 和 Wv 只有 192×576。并且 MLP 占了大部分参数:MiniLM 中是两个 1536×384 矩阵对四个 384×384 矩阵。
# (LLaMA 的 MLP 是*门控*的:gate 和 up 两个投影并排,然后是 down。)
#
# ## 2. 每种目标选择的代价
#
# 在一个 (d_out × d_in) 矩阵上,LoRA 训练 A(r × d_in)和 B(d_out × r):每层每个矩阵 **r·(d_in + d_out)** 个
# 参数。`loralab.plan_injection` 是一次演练:列出 `inject` 将会适配的每一层。`resolve_targets` 把论文中的名字
# (q、k、v、o、up、down、gate)翻译成各模型家族的模块名。

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
print(t(f"{'targets at r = 8':18}", f"{'r = 8 时的目标':14}") + f" {'MiniLM':>22} {'SmolLM2':>22}")
for choice in CHOICES:
    cells = [f"{costs[m][choice]:>10,} ({costs[m][choice] / totals[m]:6.2%})" for m in ("MiniLM", "SmolLM2")]
    print(f"{choice:18} {cells[0]:>22} {cells[1]:>22}")

fig, ax = plt.subplots(figsize=(7, 3.4))
width = 0.38
for i, model_name in enumerate(("MiniLM", "SmolLM2")):
    ax.bar([j + i * width for j in range(len(CHOICES))], list(costs[model_name].values()), width, label=model_name)
ax.set_xticks([j + width / 2 for j in range(len(CHOICES))], list(CHOICES))
ax.set(yscale="log", ylabel=t("trainable LoRA values (r = 8)", "LoRA 可训练参数(r = 8)"),
       title=t("what each choice of target matrices costs", "每种目标矩阵选择的代价"))
ax.legend()
fig.tight_layout()

# %% [markdown] lang="en"
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

# %% [markdown] lang="zh"
# 为什么是 Wq 和 Wv?论文(表 5)在 GPT-3 上把预算固定为 1800 万个参数,比较花在哪里最好(以下是论文的数字):单独 Wq
# 在 r = 8 时得 70.4 / 91.0(WikiSQL / MNLI),单独 Wv 得 73.0 / 91.0,**Wq 和 Wv 在 r = 4 时得 73.7 / 91.3**,
# 四个矩阵在 r = 2 时得 73.7 / 91.7。把预算以较低的秩分散到更多种矩阵上,胜过把它集中在一种矩阵上用较高的秩;
# Wq + Wv 是达到最高水平的最便宜组合。(MLP 与 LayerNorm 的适配留给了未来工作。)`loralab experiment targets`
# 在 MiniLM 上重做表 5。
#
# ## 3. GPT-3 175B:手算与 `loralab budget`
#
# 论文的公式是 |Θ| = 2 · L̂ · d_model · r,其中 L̂ 是被适配矩阵的个数:一个 d×d 方阵的代价是 r·(d + d) = 2·d·r。
# GPT-3 有 96 层,d_model = 12288;适配 Wq 和 Wv 得 L̂ = 192。

# %%
gpt3 = dict(zip((1, 4, 8), estimate_budgets("gpt3-175b", ranks=(1, 4, 8), targets=["q", "v"])))   # one skeleton
for r, budget in gpt3.items():
    fp16 = budget.file_sizes["fp16"].tensor_bytes
    print(t(f"r = {r}: {budget.trainable_params:>12,} trainable values of {budget.skeleton.total_params:,} "
            f"({budget.trainable_params / budget.skeleton.total_params:.1e}); {fp16 / 1e6:.1f} MB in fp16",
            f"r = {r}:{budget.skeleton.total_params:,} 个参数中可训练 {budget.trainable_params:>12,} 个"
            f"({budget.trainable_params / budget.skeleton.total_params:.1e});fp16 下 {fp16 / 1e6:.1f} MB"))
print(t("the paper: 4.7M at r = 1, 37.7M at r = 8; 'the 18M budget' at r = 4",
        "论文:r = 1 时 4.7M,r = 8 时 37.7M;r = 4 时即\"1800 万预算\""))

# %% [markdown] lang="en"
# ## 4. Try different r and watch convergence
#
# The route ends with practice: train on a small model with several ranks and watch the training process.
# We fine-tune all-MiniLM-L6-v2 on GLUE SST-2 (is a movie-review sentence positive?) with LoRA on Wq, Wv at
# r = 1, 2, 4, 8 and 64, α = 16 for every r (so the scale α/r shrinks as r grows, as in the paper), the same
# seeded data, learning rate and number of steps. The classifier head is new, so it trains too. Runs are
# cached in the lessons' cache folder: lesson 4 analyses these same adapters.
#
# **Predict before you run the next cell:** which r will reach the lowest training loss at the end (the mean
# of the last ten steps)? Write one of the ranks in `prediction_1` (quick mode trains r = 16 instead of 64).
# And will LoRA beat training only the new head (the dashed line)? Write True or False in `prediction_2`.

# %% [markdown] lang="zh"
# ## 4. 尝试不同的 r,观察收敛
#
# 路线以实践收尾:在小模型上用几种秩训练,观察训练过程。我们在 GLUE SST-2(影评句子是否正面?)上微调
# all-MiniLM-L6-v2,LoRA 作用于 Wq、Wv,r = 1、2、4、8 和 64,每个 r 都用 α = 16(所以缩放因子 α/r 随 r 增大而变小,
# 与论文相同),数据、学习率和步数都相同。分类头是新的,所以也要训练。训练结果缓存在课程的缓存目录中:第 4 课会分析
# 同样这些适配器。
#
# **运行下一个单元之前先预测:** 哪个 r 最后的训练损失(最后十步的平均)最低?把一个秩写进 `prediction_1`(快速模式
# 训练 r = 16 而不是 64)。LoRA 会不会胜过只训练新分类头(虚线)?把 True 或 False 写进 `prediction_2`。

# %%
RANKS = S.knob("r", 3)        # (1, 2, 4, 8, 64); quick mode 16 for 64; `loralab learn 3 r=1,4,16` tries others
LR = S.knob("lr", 3)          # the learning rate of the LoRA runs (`loralab learn 3 lr=1e-3`)
# hint[en]: lesson 2, section 3: at fixed α the scale α/r shrinks as r grows, so in a short run a large r moves ΔW less per step.
# hint[zh]: 第 2 课第 3 节:α 固定时缩放因子 α/r 随 r 增大而变小,所以在短训练中大的 r 每一步移动 ΔW 更少。
prediction_1 = 1               # α/r: the smallest r takes the largest steps in a short run (the paper: r = 1 already suffices)
# hint[en]: the head alone sees only the frozen encoder's features; LoRA also changes the attention of every layer.
# hint[zh]: 只训练分类头时,它只能看到冻结编码器的特征;LoRA 还会改变每一层的注意力。
prediction_2 = True            # LoRA adapts the encoder's features; the head alone cannot

# %%
runs = {r: kit.lora_run(S, r, lr=LR) for r in RANKS}
head_only = kit.train_run(S, "head")          # the reference point "r = 0": only the classifier head trains
recipe = S.recipe
print(t(f"{recipe.steps} steps of {recipe.batch_size} sentences, lr {LR:g}, dev = first "
        f"{recipe.dev_sentences} SST-2 dev sentences",
        f"{recipe.steps} 步,每步 {recipe.batch_size} 个句子,学习率 {LR:g},验证集 = SST-2 dev 的前 "
        f"{recipe.dev_sentences} 个句子"))
print(f"{'r':>3} " + t(f"{'trained values':>15} {'s = α/r':>8} {'final loss':>11} {'dev acc':>8} {'s/step':>7}",
                       f"{'训练参数':>13} {'s = α/r':>8} {'最终损失':>9} {'验证准确率':>6} {'秒/步':>6}"))
for r, run in [(0, head_only), *runs.items()]:
    final = sum(run.losses[-10:]) / len(run.losses[-10:])
    scale = f"{16 / r:>8.3g}" if r else f"{'—':>8}"
    print(f"{r:>3} {run.trainable:>15,} {scale} {final:>11.3f} {run.dev_accuracy:>8.3f} "
          f"{run.seconds_per_step:>7.2f}")
print(t("(r = 0: no LoRA, only the classifier head trains)", "(r = 0:没有 LoRA,只训练分类头)"))

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
for r, run in runs.items():
    axes[0].plot(kit.smooth(run.losses), label=f"r = {r}")
axes[0].plot(kit.smooth(head_only.losses), color="black", ls="--", label=t("head only (no LoRA)", "只训练分类头(无 LoRA)"))
axes[0].set(xlabel=t("optimizer step", "优化步"), ylabel=t("training loss (moving average of 10)", "训练损失(10 步滑动平均)"),
            title=t("convergence at different ranks (α = 16)", "不同秩的收敛(α = 16)"))
axes[0].legend()
accuracies = [run.dev_accuracy for run in runs.values()]
standard_errors = [(a * (1 - a) / recipe.dev_sentences) ** 0.5 for a in accuracies]     # binomial
axes[1].errorbar(list(runs), accuracies, yerr=standard_errors, marker="o", capsize=3)
axes[1].axhline(head_only.dev_accuracy, color="black", ls="--", label=t("head only (no LoRA)", "只训练分类头(无 LoRA)"))
axes[1].legend(loc="lower right")
for r, run in runs.items():
    axes[1].annotate(f"{run.trainable:,}", (r, run.dev_accuracy), textcoords="offset points", xytext=(0, 6),
                     ha="center", fontsize=8)
axes[1].set(xscale="log", xlabel=t("rank r", "秩 r"), ylabel=t("dev accuracy (± one standard error)", "验证准确率(± 一个标准误)"),
            ylim=(0.45, 1.0), title=t("dev accuracy (labels: trained values incl. head)", "验证准确率(标注:含分类头的训练参数量)"))
fig.tight_layout()


def first_step_below(losses, level: float) -> int | None:
    """First step where the smoothed loss is below `level` (a convergence-speed proxy), None if never."""
    return next((i for i, value in enumerate(kit.smooth(losses)) if value < level), None)


level = 0.6
for label, run in [*((f"r = {r}", run) for r, run in runs.items()), ("head only", head_only)]:
    step = first_step_below(run.losses, level)
    print(t(f"{label + ':':10} smoothed loss below {level} at step {step if step is not None else '— (not reached)'}",
            f"{label + ':':10} 平滑损失低于 {level} 的步数:{step if step is not None else '—(未达到)'}"))

# %%
final_loss = {r: sum(run.losses[-10:]) / len(run.losses[-10:]) for r, run in runs.items()}
lowest = min(final_loss, key=final_loss.get)
checks.predict("prediction_1", prediction_1, lowest, t("which r reaches the lowest final loss", "哪个 r 的最终损失最低"),
               t(f"final losses {', '.join(f'r={r}: {v:.3f}' for r, v in final_loss.items())}",
                 f"最终损失 {','.join(f'r={r}:{v:.3f}' for r, v in final_loss.items())}"))
best_lora = max(run.dev_accuracy for run in runs.values())
se = (best_lora * (1 - best_lora) / recipe.dev_sentences) ** 0.5
beats_head = best_lora - head_only.dev_accuracy > 2 * se        # more than two standard errors: not noise
checks.predict("prediction_2", prediction_2, beats_head, t("LoRA beats the head alone", "LoRA 胜过只训练分类头"),
               t(f"best LoRA {best_lora:.3f} vs head only {head_only.dev_accuracy:.3f} (two standard errors: {2 * se:.3f})",
                 f"最好的 LoRA {best_lora:.3f},只训练分类头 {head_only.dev_accuracy:.3f}(两个标准误:{2 * se:.3f})"))
dev_labels = [int(label) for batch in kit.task_batches(S, "sst2")[1] for label in batch["labels"]]
majority = max(sum(dev_labels), len(dev_labels) - sum(dev_labels)) / len(dev_labels)
at_chance = abs(head_only.dev_accuracy - majority) <= 2 * se
spread = max(final_loss.values()) - min(final_loss.values())
S.say(f"Measured here: the lowest final loss came from r = {lowest} ({final_loss[lowest]:.3f}); the final losses of "
      f"all ranks lie within {spread:.3f} of each other, while the trained values grow ×{max(RANKS) // min(RANKS)}. "
      f"The head alone reached {head_only.dev_accuracy:.3f} dev accuracy, the best LoRA run {best_lora:.3f} "
      f"(always answering the majority class: {majority:.3f}). "
      + (f"**Why the head alone sits at chance:** the new head reads the frozen encoder's *pooler* output (a "
         f"tanh layer on the [CLS] token), and all-MiniLM-L6-v2 was trained for *mean-pooled* sentence embeddings: "
         f"its pooler is a leftover of BERT pre-training that its training never used, so in {recipe.steps} steps "
         f"a linear head finds little sentiment there. The same frozen encoder's mean-pooled features do carry "
         f"sentiment (lesson 5 trains on them, well above chance); LoRA changes what the encoder computes, so the "
         f"[CLS] output becomes useful — the head alone cannot do that." if at_chance and not S.quick else
         "The head alone is above chance: the frozen features already carry some sentiment." if not at_chance else ""),
      f"这里的实测:最终损失最低的是 r = {lowest}({final_loss[lowest]:.3f});所有秩的最终损失相差不超过 {spread:.3f},"
      f"而训练参数量增长了 ×{max(RANKS) // min(RANKS)}。只训练分类头的验证准确率是 {head_only.dev_accuracy:.3f},最好的"
      f" LoRA 是 {best_lora:.3f}(总是回答多数类:{majority:.3f})。"
      + (f"**为什么只训练分类头只有随机水平:** 新分类头读取的是冻结编码器的 *pooler* 输出([CLS] token 上的一个 tanh 层),"
         f"而 all-MiniLM-L6-v2 是为*平均池化*的句向量训练的:它的 pooler 是 BERT 预训练留下的,后续训练从未用到,所以 "
         f"{recipe.steps} 步里线性分类头在那里找不到多少情感信息。同一个冻结编码器的平均池化特征确实带有情感信息(第 5 课在"
         f"它们上面训练,远高于随机水平);LoRA 改变了编码器本身的计算,让 [CLS] 输出变得有用——只训练分类头做不到这一点。"
         if at_chance and not S.quick else
         "只训练分类头就高于随机水平:冻结的特征里已经带有一些情感信息。" if not at_chance else ""))

# %% [markdown] lang="en" mode="normal"
# How to read it. The rank multiplies the trained values by 64 from r = 1 to r = 64, but the curves do not
# separate by anything like that: a handful of directions per matrix is enough to start fitting the task.
# The dashed line is the floor — the same run with no LoRA at all, only the new head trained on the frozen
# encoder: what LoRA's low-rank updates add is the gap between it and the coloured curves.
# That is the paper's Table 6 (on GPT-3, r = 1 already matches r = 64 on WikiSQL and MNLI). With α fixed,
# the scale α/r makes each step's change of ΔW *smaller* at large r (lesson 2, section 3), so a large rank
# can even converge a little more slowly at the same learning rate. The error bars are one binomial standard
# error of the dev accuracy: with a few hundred dev sentences, differences of a few points are noise;
# `loralab experiment rank` runs the full-size version (500 steps of 16, the whole dev set).

# %% [markdown] lang="zh" mode="normal"
# 怎么读这些图。从 r = 1 到 r = 64,秩让训练参数量增加了 64 倍,但曲线并没有相应地拉开:每个矩阵几个方向就足以
# 开始拟合任务。虚线是底线——同样的训练,但没有 LoRA,只在冻结编码器上训练新分类头:LoRA 的低秩更新带来的,就是它和
# 彩色曲线之间的差距。这就是论文的表 6(在 GPT-3 上,r = 1 在 WikiSQL 和 MNLI 上已经追平 r = 64)。α 固定时,缩放
# 因子 α/r 让大 r 每一步对 ΔW 的改变*更小*(第 2 课第 3 节),所以在同样学习率下大秩甚至可能收敛得稍慢。误差棒是验证
# 准确率的一个二项标准误:只有几百个验证句子时,几个百分点的差距都是噪声;`loralab experiment rank` 运行完整规模的
# 版本(500 步,每步 16 句,完整验证集)。

# %% [markdown] lang="en"
# ## 5. Which matrices, at an equal budget: the paper's Table 5, measured
#
# Section 2 counted what each choice costs; now we measure what it buys, the way the paper's Table 5 did:
# fix the budget and choose where to spend it. Every row below trains the same number of LoRA values,
# 2·L·d·r·(matrix types) = 16·L·d: Wq alone at r = 8, Wv alone at r = 8, Wq and Wv at r = 4, and all four
# attention matrices (Wq, Wk, Wv, Wo) at r = 2 — the rank scaled down as the matrix types go up. The rows and
# their ranks are `loralab experiment targets`' grid (`loralab.experiments.targets.GRID`, four of its seven
# rows); the data, steps and learning rate are this lesson's (section 4), and the Wq, Wv row at r = 4 *is*
# section 4's r = 4 run, read back from the cache.
#
# **Predict before you run the next cell:** which of the four rows reaches the highest dev accuracy? Write its
# label ("Wq", "Wv", "Wq,Wv" or "Wq,Wk,Wv,Wo") in `prediction_3`.

# %% [markdown] lang="zh"
# ## 5. 等预算下适配哪些矩阵:实测论文的表 5
#
# 第 2 节计算了每种选择的代价;现在像论文表 5 那样测量它能换来什么:固定预算,选择把它花在哪里。下面每一行训练的
# LoRA 参数量都相同,2·L·d·r·(矩阵种类数) = 16·L·d:单独 Wq 用 r = 8,单独 Wv 用 r = 8,Wq 和 Wv 用 r = 4,四个注意力
# 矩阵(Wq、Wk、Wv、Wo)用 r = 2——矩阵种类越多,秩越低。这些行及其秩取自 `loralab experiment targets` 的网格
# (`loralab.experiments.targets.GRID`,七行中的四行);数据、步数和学习率与本课第 4 节相同,Wq、Wv 在 r = 4 的那一行
# *就是*第 4 节 r = 4 的训练,从缓存读取。
#
# **运行下一个单元之前先预测:** 四行中哪一行的验证准确率最高?把它的标签("Wq"、"Wv"、"Wq,Wv" 或 "Wq,Wk,Wv,Wo")
# 写进 `prediction_3`。

# %%
# hint[en]: the paper's Table 5 (section 2): at a fixed budget, more matrix types at a lower rank did best; on a short noisy run any row can win.
# hint[zh]: 论文表 5(第 2 节):预算固定时,更多种矩阵配较低的秩效果最好;在短而嘈杂的训练中哪一行都可能胜出。
prediction_3 = "Wq,Wv"          # the paper's choice; Table 5 puts it (with all four) at the top

# %%
ROWS = ("Wq", "Wv", "Wq,Wv", "Wq,Wk,Wv,Wo")
TABLE_5 = {"Wq": (70.4, 91.0), "Wv": (73.0, 91.0), "Wq,Wv": (73.7, 91.3), "Wq,Wk,Wv,Wo": (73.7, 91.7)}  # the paper's
grid = {label: (roles, r) for label, roles, r in GRID if label in ROWS}
fields = lora_targets(S.model)                  # each row's module names in this model's family
target_runs = {}
for label, (roles, r) in grid.items():
    if roles == ("q", "v"):                     # the preset: section 4's run at this rank, from the cache
        target_runs[label] = kit.lora_run(S, r, lr=LR)
    else:
        target_runs[label] = kit.train_run(S, "lora", lr=LR, tag=f"targets-{label.replace(',', '')}-r{r}",
                                           r=r, alpha=16.0, **fields[label])
head_values = minilm.config.hidden_size * 2 + 2             # the 2-way head: d·2 weights + 2 biases
budget = {label: run.trainable - head_values for label, run in target_runs.items()}   # LoRA values, head excluded
print(t(f"{'adapted':14} {'r':>2} {'LoRA values':>12} {'dev acc':>8} {'final loss':>11}   paper (GPT-3, Table 5): WikiSQL / MNLI",
        f"{'适配的矩阵':12} {'r':>2} {'LoRA 参数':>11} {'验证准确率':>6} {'最终损失':>9}   论文(GPT-3,表 5):WikiSQL / MNLI"))
for label, run in target_runs.items():
    final = sum(run.losses[-10:]) / len(run.losses[-10:])
    print(f"{label:14} {grid[label][1]:>2} {budget[label]:>12,} {run.dev_accuracy:>8.3f} {final:>11.3f}   "
          f"{TABLE_5[label][0]} / {TABLE_5[label][1]}")

fig, ax = plt.subplots(figsize=(7, 3.4))
accuracies_5 = [run.dev_accuracy for run in target_runs.values()]
errors_5 = [(a * (1 - a) / recipe.dev_sentences) ** 0.5 for a in accuracies_5]
ax.bar(range(len(ROWS)), accuracies_5, yerr=errors_5, capsize=3, color="#7aa6c2")
ax.set_xticks(range(len(ROWS)), [f"{label}\nr = {grid[label][1]}" for label in ROWS])
ax.set(ylim=(min(0.45, min(accuracies_5) - 0.1), 1.0), ylabel=t("dev accuracy (± one standard error)", "验证准确率(± 一个标准误)"),
       title=t(f"one budget ({budget['Wq']:,} LoRA values), four ways to spend it",
               f"同一预算({budget['Wq']:,} 个 LoRA 参数),四种花法"))
fig.tight_layout()

# %%
best_5 = max(target_runs, key=lambda label: target_runs[label].dev_accuracy)
if prediction_3 in target_runs and target_runs[prediction_3].dev_accuracy == target_runs[best_5].dev_accuracy:
    best_5 = prediction_3                       # a tie for the top: the predicted row is among the best
checks.predict("prediction_3", prediction_3, best_5, t("which targets reach the best dev accuracy", "哪组目标矩阵的验证准确率最高"),
               t(", ".join(f"{k}: {v.dev_accuracy:.3f}" for k, v in target_runs.items()),
                 ",".join(f"{k}:{v.dev_accuracy:.3f}" for k, v in target_runs.items())))
acc_5 = {label: run.dev_accuracy for label, run in target_runs.items()}
se_5 = max(errors_5)
loss_5 = {label: sum(run.losses[-10:]) / len(run.losses[-10:]) for label, run in target_runs.items()}
# a row that did not learn: its final loss still near ln 2 (a coin flip's) and its accuracy at the majority class
failed_5 = [label for label in target_runs if loss_5[label] > 0.65 and acc_5[label] <= majority + 2 * se_5]
learned_5 = [label for label in target_runs if label not in failed_5] or list(target_runs)
worst_5 = min(learned_5, key=acc_5.get)
spread_5 = max(acc_5[label] for label in learned_5) - acc_5[worst_5]
pair_gain = acc_5["Wq,Wv"] - max(acc_5["Wq"], acc_5["Wv"])   # two types at r = 4 against the better single type at r = 8
other_lr = 1e-3 if LR != 1e-3 else kit.LEARNING_RATES["lora"]    # 1e-3: the rate of `loralab experiment targets`
if failed_5 and not S.quick:
    failed_en = (f"{', '.join(failed_5)} did not learn in this run (final loss {', '.join(f'{loss_5[x]:.3f}' for x in failed_5)}, "
                 f"near ln 2 = 0.693, a coin flip's; dev accuracy {', '.join(f'{acc_5[x]:.3f}' for x in failed_5)}, no better "
                 f"than always answering the majority class, {majority:.3f}): at lr {LR:g} and "
                 f"α/r = {', '.join(f'{16 / grid[x][1]:g}' for x in failed_5)} its training did not settle in "
                 f"{recipe.steps} steps. That is a failed run, not a verdict on those matrices — try another learning rate, "
                 f"`loralab learn 3 lr={other_lr:g}` (which rows learn in so short a run can change with it). Of the rows "
                 "that learned, ")
    failed_zh = (f"{'、'.join(failed_5)} 在这次训练中没有学会(最终损失 {'、'.join(f'{loss_5[x]:.3f}' for x in failed_5)},"
                 f"接近 ln 2 = 0.693,即抛硬币的损失;验证准确率 {'、'.join(f'{acc_5[x]:.3f}' for x in failed_5)},不高于总是回答"
                 f"多数类的 {majority:.3f}):在学习率 {LR:g}、α/r = "
                 f"{'、'.join(f'{16 / grid[x][1]:g}' for x in failed_5)} 下,它在 {recipe.steps} 步内没有收敛。这是一次失败的"
                 f"训练,不能据此评判这些矩阵——换一个学习率试试:`loralab learn 3 lr={other_lr:g}`(训练这么短时,哪些行能学会"
                 "会随学习率改变)。在学会了的几行中,")
else:
    failed_en = failed_zh = ""
if spread_5 <= 2 * se_5:
    reading_en = (f"{'the rows' if failed_5 and not S.quick else 'all four rows'} lie within {spread_5:.3f} of each other, inside two standard errors ({2 * se_5:.3f}): "
                  f"at this size the choice of matrices is within noise, no ranking")
    reading_zh = f"{'这几行' if failed_5 and not S.quick else '四行'}之间相差 {spread_5:.3f},在两个标准误({2 * se_5:.3f})以内:在这个规模下矩阵的选择在噪声以内,不能排名"
else:
    reading_en = (f"the spread between rows is {spread_5:.3f}, more than two standard errors ({2 * se_5:.3f}): the best "
                  f"row is {best_5} ({acc_5[best_5]:.3f}), the worst {worst_5} ({acc_5[worst_5]:.3f})")
    reading_zh = (f"各行之间相差 {spread_5:.3f},超过两个标准误({2 * se_5:.3f}):最好的是 {best_5}({acc_5[best_5]:.3f}),"
                  f"最差的是 {worst_5}({acc_5[worst_5]:.3f})")
if pair_gain > 2 * se_5:
    pair_en, pair_zh = (f"Wq, Wv at r = 4 beat the better single matrix at r = 8 by {pair_gain:.3f} — as in the paper, "
                        "spreading the budget over two types paid",
                        f"Wq、Wv 在 r = 4 时比较好的单个矩阵(r = 8)高 {pair_gain:.3f}——与论文一致,把预算分散到两种矩阵上是值得的")
elif pair_gain < -2 * se_5:
    pair_en, pair_zh = (f"Wq, Wv at r = 4 fell {-pair_gain:.3f} behind the better single matrix at r = 8 — the opposite of "
                        "the paper's finding, on this short run",
                        f"Wq、Wv 在 r = 4 时比较好的单个矩阵(r = 8)低 {-pair_gain:.3f}——在这次短训练中与论文的结论相反")
else:
    pair_en, pair_zh = (f"Wq, Wv at r = 4 against the better single matrix at r = 8: {pair_gain:+.3f}, within two "
                        "standard errors, so this run neither confirms nor contradicts the paper's ordering",
                        f"Wq、Wv(r = 4)对比较好的单个矩阵(r = 8):{pair_gain:+.3f},在两个标准误以内,所以这次训练既不证实也不否定论文的排序")
S.say(f"Measured here ({recipe.steps} steps, {recipe.dev_sentences} dev sentences, one seed): {failed_en}{reading_en}. {pair_en}. "
      f"The paper's Table 5 (GPT-3, the paper's numbers) ranks Wq alone lowest (70.4 on WikiSQL) and Wq, Wv and all "
      f"four at the top (73.7); `loralab experiment targets` runs all seven rows at full size on MiniLM "
      f"(docs/experiments.md: Wq 79.1, Wv 82.3, Wq, Wv 83.7, all four 82.6 on SST-2)."
      + (" (Quick mode: a tiny random model — the bars say nothing about the matrices.)" if S.quick else ""),
      f"这里的实测({recipe.steps} 步,{recipe.dev_sentences} 个验证句子,一个随机种子):{failed_zh}{reading_zh}。{pair_zh}。"
      f"论文的表 5(GPT-3,论文的数字)中单独 Wq 最低(WikiSQL 70.4),Wq、Wv 与四个矩阵并列最高(73.7);"
      f"`loralab experiment targets` 在 MiniLM 上以完整规模运行全部七行(docs/experiments.md:SST-2 上 Wq 79.1、Wv 82.3、"
      f"Wq、Wv 83.7、四个矩阵 82.6)。" + ("(快速模式:微型随机模型——这些柱子说明不了矩阵选择的好坏。)" if S.quick else ""))

# %% [markdown] lang="en"
# ## Check yourself
#
# 1. GPT-3 175B, LoRA r = 8 on Wq and Wv: compute the trainable values by hand, 2·96·8·(12288 + 12288),
#    and compare with `loralab budget`.
# 2. MiniLM, LoRA r = 8 on Wq and Wv, plus the new head (384·2 weights + 2 biases): how many values does the
#    trained adapter *file* hold? (By hand: 2·6·8·(384 + 384) + 770.)
# 3. SmolLM2-135M, LoRA r = 8 on Wk only, all 30 layers: by hand 30·8·(576 + 192) — Wk is 192×576.
# 4. Table 5's equal budgets: is Wq, Wv at r = 8 cheaper than Wq, Wk, Wv, Wo at r = 4 on MiniLM?
# 5. How many times more LoRA values does r = 64 train than r = 1 (head excluded)?
# 6. Section 5's budget: how many LoRA values does each of its rows train (head excluded)? By hand: Wq alone
#    at r = 8 is L·8·(d + d); check that all four matrices at r = 2 cost the same.

# %% [markdown] lang="zh"
# ## 自我检查
#
# 1. GPT-3 175B,在 Wq 和 Wv 上用 r = 8 的 LoRA:手算可训练参数量,并与 `loralab budget` 比较。
# 2. MiniLM,在 Wq 和 Wv 上用 r = 8 的 LoRA,加上新分类头(384·2 个权重 + 2 个偏置):训练好的适配器*文件*里有多少个数?
# 3. SmolLM2-135M,只在 Wk 上用 r = 8 的 LoRA,全部 30 层:多少个参数?(Wk 是 192×576。)
# 4. 表 5 的等预算:在 MiniLM 上,Wq、Wv 用 r = 8 是否比 Wq、Wk、Wv、Wo 用 r = 4 便宜?("equal" 还是 "different")
# 5. r = 64 训练的 LoRA 参数是 r = 1 的多少倍(不含分类头)?
# 6. 第 5 节的预算:每一行训练多少个 LoRA 参数(不含分类头)?手算:单独 Wq 在 r = 8 时是 L·8·(d + d);再验证四个矩阵在
#    r = 2 时代价相同。

# %%
# hint[en]: |Θ| = 2·L̂·d_model·r with L̂ = 2 matrices × 96 layers; each d×d matrix costs r·(d + d).
# hint[zh]: |Θ| = 2·L̂·d_model·r,其中 L̂ = 2 个矩阵 × 96 层;每个 d×d 矩阵的代价是 r·(d + d)。
answer_1 = 2 * 96 * 8 * (12288 + 12288)                     # = 37,748,736
checks.equal("answer_1", answer_1, gpt3[8].trainable_params,
             t("GPT-3 Wq,Wv r=8: by hand vs loralab budget", "GPT-3 Wq、Wv r=8:手算对比 loralab budget"),
             t("2 matrices × 96 layers × 8·(12288 + 12288)", "2 个矩阵 × 96 层 × 8·(12288 + 12288)"), "peft")

config = minilm.config
L, d = config.num_hidden_layers, config.hidden_size
# hint[en]: LoRA factors for 2 matrices in each of L layers, r·(d + d) each, plus the head's d·2 weights and 2 biases.
# hint[zh]: L 层中每层 2 个矩阵的 LoRA 因子,每个 r·(d + d),再加分类头的 d·2 个权重和 2 个偏置。
answer_2 = 2 * L * 8 * (d + d) + (d * 2 + 2)                # LoRA factors + classifier head
adapter_file = loralab.read_adapter((runs[8] if 8 in runs else kit.lora_run(S, 8, lr=LR)).adapter)
saved = sum(A.numel() + B.numel() for A, B, _ in adapter_file.factors.values()) \
    + sum(t.numel() for module in adapter_file.saved_modules.values() for t in module.values())
checks.equal("answer_2", answer_2, saved,
             t("MiniLM Wq,Wv r=8 + head: by hand vs the saved adapter file", "MiniLM Wq、Wv r=8 + 分类头:手算对比保存的适配器文件"),
             t("2·L·r·(d + d) factors + d·2 + 2 head values", "2·L·r·(d + d) 个因子 + d·2 + 2 个分类头参数"), "peft")

sconfig = smollm.config
kv_width = sconfig.num_key_value_heads * (sconfig.hidden_size // sconfig.num_attention_heads)   # 3·64 = 192
# hint[en]: Wk maps d_model = hidden_size inputs to kv_width outputs: r·(d_in + d_out) per layer, num_hidden_layers layers.
# hint[zh]: Wk 把 d_model = hidden_size 维输入映射到 kv_width 维输出:每层 r·(d_in + d_out),共 num_hidden_layers 层。
answer_3 = sconfig.num_hidden_layers * 8 * (sconfig.hidden_size + kv_width)
checks.equal("answer_3", answer_3, lora_values(smollm, ["k"]),
             t("SmolLM2 Wk r=8 over all layers: by hand vs plan_injection", "SmolLM2 Wk r=8 全部层:手算对比 plan_injection"),
             t("grouped-query attention: Wk is kv_width × d_model, not square", "分组查询注意力:Wk 是 kv_width × d_model,不是方阵"),
             "weights")

# hint[en]: per layer, count matrices × r × (d + d) for both choices.
# hint[zh]: 对两种选择,分别计算每层的 矩阵数 × r × (d + d)。
answer_4 = "equal"                                          # per layer: 2 matrices·8·2d = 4 matrices·4·2d = 32·d
two_at_8, four_at_4 = lora_values(minilm, ["q", "v"], r=8), lora_values(minilm, ["q", "k", "v", "o"], r=4)
checks.equal("answer_4", answer_4, "equal" if two_at_8 == four_at_4 else "different",
             t("Wq,Wv r=8 vs Wq,Wk,Wv,Wo r=4", "Wq、Wv r=8 对比 Wq、Wk、Wv、Wo r=4"),
             t("2 matrices · 8 = 4 matrices · 4: the same budget", "2 个矩阵 · 8 = 4 个矩阵 · 4:预算相同"), "weights")

head = d * 2 + 2
big, small = max(RANKS), min(RANKS)
# hint[en]: LoRA's values are r·(d_in + d_out) per matrix: how do they grow with r?
# hint[zh]: LoRA 的参数量是每个矩阵 r·(d_in + d_out):它随 r 如何增长?
answer_5 = big // small                                     # LoRA values grow linearly in r
checks.equal("answer_5", answer_5, (runs[big].trainable - head) // (runs[small].trainable - head),
             t(f"LoRA values r={big} / r={small}", f"LoRA 参数量 r={big} / r={small}"),
             t("the values grow linearly in r", "参数量随 r 线性增长"), "peft")

# hint[en]: one matrix type in L layers at r = 8 costs L·8·(d + d); four types at r = 2 cost L·4·2·(d + d): the same.
# hint[zh]: 一种矩阵、L 层、r = 8 的代价是 L·8·(d + d);四种矩阵在 r = 2 时是 L·4·2·(d + d):相同。
answer_6 = L * 8 * (d + d)                                  # = 16·L·d in every row
checks.equal("answer_6", answer_6, budget["Wq,Wk,Wv,Wo"] if len(set(budget.values())) == 1 else sorted(set(budget.values())),
             t("section 5's budget per row: by hand vs the trained runs", "第 5 节每行的预算:手算对比实际训练"),
             t("matrix types × r is 8 in every row, so every row trains 16·L·d LoRA values",
               "每一行的 矩阵种类数 × r 都是 8,所以每行都训练 16·L·d 个 LoRA 参数"), "weights")
checks.summary()
