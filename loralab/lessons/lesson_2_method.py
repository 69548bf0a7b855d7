# %% [markdown] lang="en"
# # Lesson 2 — The method: LoRA's forward pass, B = 0, α/r, merging and task switching
#
# Stage 2 of the route: LoRA from the mathematical side. A pretrained layer computes h = W0·x. LoRA freezes
# W0 and adds a trainable low-rank update (Hu et al. 2021, eq. 3):
#
#     h = W0·x + ΔW·x = W0·x + s·B·A·x        W0: d×k (frozen)   B: d×r   A: r×k   s = α/r
#
# We compute this by hand on small matrices, see why B starts at zero, measure what the scale α/r does when
# r changes, and then merge and switch real adapters trained on all-MiniLM-L6-v2 for two GLUE tasks.

# %% [markdown] lang="zh"
# # 阶段 2:理解 LoRA 核心原理——前向计算、B = 0、α/r、合并与任务切换
#
# 学习路线的第 2 阶段:从数学角度理解 LoRA。预训练的层计算 h = W0·x。LoRA 冻结 W0,再加上一个可训练的低秩更新
# (Hu 等,2021,式 3):
#
#     h = W0·x + ΔW·x = W0·x + s·B·A·x        W0: d×k(冻结)   B: d×r   A: r×k   s = α/r
#
# 我们先在小矩阵上手算,看看为什么 B 从零开始,测量 r 变化时缩放因子 α/r 的作用,然后在 all-MiniLM-L6-v2 上
# 合并并切换为两个 GLUE 任务训练的真实适配器。

# %%
import contextlib
import copy
import importlib.util
import io
import random
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from torch import nn

import loralab
from loralab import LoraConfig
from loralab.lessons import kit
from loralab.models import load_model

S = kit.settings()
t = S.t                     # t(English, Chinese): every text the code prints or draws, in the page's language
checks = kit.Checks(S)
S.announce()
R = S.knob("r", 2)              # the rank of §0's layers and §4's adapters (8; `loralab learn 2 r=4 alpha=8`)
ALPHA = S.knob("alpha", 2)      # their α: the scale is α/r (16)


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


# %% [markdown] lang="en"
# ## 0. LoRA from scratch, then the real thing
#
# Before using loralab, write LoRA yourself. A LoRA layer wraps a frozen linear layer W0 (d×k) and adds two
# small trainable matrices: A (r×k, random) and B (d×r, zero), so that
#
#     h = W0·x + (α/r)·B·A·x
#
# The class below is the whole idea in about 20 lines; its `forward` calls `answer_0`, the one line that is
# yours to write (`x` holds the inputs as rows, (…, k), so A·x for every row is `x @ A.T`). We then swap it
# into the query (Wq) and value (Wv) projections of every layer of the lesson's model, exactly where loralab's
# preset puts LoRA, and compare with `loralab.inject` given the same A and B: logits and gradients must agree.

# %% [markdown] lang="zh"
# ## 0. 从零写一个 LoRA,再用真正的库
#
# 在使用 loralab 之前,先自己写 LoRA。LoRA 层包住一个冻结的线性层 W0(d×k),再加两个可训练的小矩阵:A(r×k,随机)
# 和 B(d×r,零),使得
#
#     h = W0·x + (α/r)·B·A·x
#
# 下面这个类用大约 20 行写出了全部思想;它的 `forward` 调用 `answer_0`——由你来写的那一行(`x` 把输入按行存放,
# 形状 (…, k),所以对每一行求 A·x 就是 `x @ A.T`)。然后把它换进本课模型每一层的查询投影(Wq)和值投影(Wv)——正是
# loralab 预设放 LoRA 的位置——并与给定相同 A、B 的 `loralab.inject` 比较:logits 和梯度必须一致。

# %%
class LoRALinear(nn.Module):
    """W0·x + (α/r)·B·A·x around a frozen nn.Linear `base` (W0: weight (d, k), and its bias):
    A (r, k) random, B (d, r) zero, so the layer starts exactly at W0·x."""

    def __init__(self, base: nn.Linear, r: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)                                       # W0 frozen
        self.A = nn.Parameter(torch.randn(r, base.in_features) / base.in_features ** 0.5)
        self.B = nn.Parameter(torch.zeros(base.out_features, r))
        self.scale = alpha / r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if answer_0 is None:                   # not written yet: the layer stays W0·x
            return self.base(x)
        return answer_0(self, x)


def swap_in(model: nn.Module, r: int = R, alpha: float = ALPHA) -> nn.Module:
    """Replace Wq and Wv of every attention layer by a LoRALinear; freeze everything else."""
    model.requires_grad_(False)
    for layer in model.base_model.encoder.layer:
        attention = layer.attention.self
        attention.query = LoRALinear(attention.query, r, alpha)
        attention.value = LoRALinear(attention.value, r, alpha)
    return model


# hint[en]: the frozen path layer.base(x) plus layer.scale times x through A, then B: (x @ layer.A.T) @ layer.B.T
# hint[zh]: 冻结支路 layer.base(x),加上 layer.scale 乘以 x 先经过 A 再经过 B:(x @ layer.A.T) @ layer.B.T
answer_0 = lambda layer, x: layer.base(x) + layer.scale * ((x @ layer.A.T) @ layer.B.T)   # noqa: E731

# %%
tok = kit.tokenizer(S)
sst2_train, sst2_dev = kit.task_batches(S, "sst2", tok)
small = {k: v[:8] for k, v in sst2_train[0].items()}                 # 8 labelled sentences
base_model = kit.classifier(S)
torch.manual_seed(0)
ours = swap_in(copy.deepcopy(base_model)).double()                   # float64: the check compares two algorithms,
mine = {name: m for name, m in ours.named_modules() if isinstance(m, LoRALinear)}   # not float32 rounding
with torch.no_grad():
    for m in mine.values():                  # B = 0 makes every forward W0·x; give B values, as after training
        m.B.normal_(0.0, 0.02)
theirs = loralab.inject(copy.deepcopy(base_model), LoraConfig(r=R, alpha=ALPHA)).double()
with torch.no_grad():
    for name, layer in loralab.lora_layers(theirs):                  # loralab's factors := ours
        layer.lora_adapters["default"].A.copy_(mine[name].A)
        layer.lora_adapters["default"].B.copy_(mine[name].B)
print(t(f"LoRALinear swapped into {len(mine)} matrices ({', '.join(list(mine)[:2])}, …); loralab adapted "
        f"{len(list(loralab.lora_layers(theirs)))}: the same ones",
        f"LoRALinear 换进了 {len(mine)} 个矩阵({', '.join(list(mine)[:2])}……);loralab 适配了 "
        f"{len(list(loralab.lora_layers(theirs)))} 个:同一批"))


def compare_with_loralab() -> tuple[float, float] | str:
    """(max |logits ours − loralab's|, max |gradient of A or B ours − loralab's|) on the 8 sentences, or why not."""
    batch64 = {k: (v.double() if v.is_floating_point() else v) for k, v in small.items()}
    try:
        out_ours, out_theirs = ours(**batch64), theirs(**batch64)
        out_ours.loss.backward()
        out_theirs.loss.backward()
    except Exception as exc:                  # a learner's wrong forward is a wrong answer, not a stopped lesson
        return f"{type(exc).__name__}: {exc}"
    logit_gap = (out_ours.logits - out_theirs.logits).abs().max().item()
    grad_gap = max(max((mine[name].A.grad - layer.lora_adapters["default"].A.grad).abs().max().item(),
                       (mine[name].B.grad - layer.lora_adapters["default"].B.grad).abs().max().item())
                   for name, layer in loralab.lora_layers(theirs))
    return logit_gap, grad_gap


gaps = compare_with_loralab()
SAME = "max |Δ| ≤ 1e-6"                   # the verdict in symbols: the same in both languages' checks
if answer_0 is None:
    verdict = None
elif isinstance(gaps, str):
    verdict = gaps                          # the exception your forward raised
else:
    print(t(f"max |logits ours − loralab's| = {gaps[0]:.1e}; max |∂L/∂A, ∂L/∂B ours − loralab's| = {gaps[1]:.1e}",
            f"max |我们的 logits − loralab 的| = {gaps[0]:.1e};max |我们的 ∂L/∂A、∂L/∂B − loralab 的| = {gaps[1]:.1e}"))
    verdict = SAME if max(gaps) <= 1e-6 else f"|Δlogits| = {gaps[0]:.1e}, |Δgrad| = {gaps[1]:.1e}"
checks.equal("answer_0", verdict, SAME, t("your LoRALinear vs loralab.inject: logits and gradients",
                                          "你的 LoRALinear 对比 loralab.inject:logits 和梯度"),
             t("h = W0·x + (α/r)·B·A·x: layer.base(x) + layer.scale * (x @ A.T) @ B.T",
               "h = W0·x + (α/r)·B·A·x:layer.base(x) + layer.scale * (x @ A.T) @ B.T"), "low-rank")

# %% [markdown] lang="en"
# **Practise with PEFT.** loralab writes adapters in the layout of Hugging Face's PEFT library
# (`adapter_config.json` + `adapter_model.safetensors`), so the adapter we just built loads into PEFT's
# `PeftModel` unchanged. The next cell saves loralab's adapter (float32, the factors above) and loads it with
# PEFT on a fresh copy of the base model; the logits must be the same. (PEFT is optional for loralab: where
# it is not installed the cell says so and goes on.)

# %% [markdown] lang="zh"
# **用 PEFT 库实践。** loralab 按 Hugging Face PEFT 库的格式(`adapter_config.json` + `adapter_model.safetensors`)
# 保存适配器,所以刚刚建好的适配器可以原样加载进 PEFT 的 `PeftModel`。下一个单元保存 loralab 的适配器(float32,
# 即上面的因子),再用 PEFT 把它加载到基础模型的一个新副本上;logits 必须相同。(PEFT 对 loralab 是可选的:没有安装时,
# 这个单元会说明并继续。)

# %%
theirs32 = theirs.float()
peft_gap = None
if importlib.util.find_spec("peft") is None:
    S.say("PEFT is not installed here (`pip install peft`), so this step is skipped.",
          "这里没有安装 PEFT(`pip install peft`),跳过这一步。")
else:
    with contextlib.redirect_stderr(io.StringIO()):                   # PEFT's notes about optional kernels
        from peft import PeftModel

    with tempfile.TemporaryDirectory() as folder:
        loralab.save_adapter(theirs32, Path(folder, "adapter"))
        print(t("saved:", "已保存:"), sorted(p.name for p in Path(folder, "adapter").iterdir()))
        with contextlib.redirect_stderr(io.StringIO()):
            peft_model = PeftModel.from_pretrained(copy.deepcopy(base_model), Path(folder, "adapter")).eval()
    plain_batch = {k: v for k, v in small.items() if k != "labels"}
    with torch.no_grad():
        peft_gap = (peft_model(**plain_batch).logits - theirs32(**plain_batch).logits).abs().max().item()
    peft_config = peft_model.peft_config["default"]
    print(t(f"PEFT read: r = {peft_config.r}, lora_alpha = {peft_config.lora_alpha}, target_modules = "
            f"{sorted(peft_config.target_modules)}", f"PEFT 读到:r = {peft_config.r},lora_alpha = "
            f"{peft_config.lora_alpha},target_modules = {sorted(peft_config.target_modules)}"))
    S.say(f"loralab's adapter in PEFT: the logits differ from loralab's by at most {peft_gap:.1e} "
          + ("— the same model, two libraries." if peft_gap <= 1e-5 else "— more than float32 rounding: a bug."),
          f"loralab 的适配器在 PEFT 中:logits 与 loralab 的最大差为 {peft_gap:.1e}"
          + ("——同一个模型,两个库。" if peft_gap <= 1e-5 else "——超出了 float32 舍入:这是个错误。"))

# %% [markdown] lang="en"
# **LoRA's structure.** The diagram below is drawn by this lesson (SVG). During training the input x takes two
# parallel paths: the frozen W0, and the low-rank path A (down to r dimensions) then B (back up to d), scaled
# by α/r; the two results are added. For inference the update is folded in: one matrix W0 + (α/r)·B·A, the
# same shape and cost as W0.

# %% [markdown] lang="zh"
# **LoRA 的结构。** 下图由本课绘制(SVG)。训练时输入 x 走两条并行支路:冻结的 W0,以及低秩支路——先经 A(降到 r 维)
# 再经 B(升回 d 维),乘以 α/r;两个结果相加。推理时把更新并入:一个矩阵 W0 + (α/r)·B·A,形状和计算量与 W0 相同。


# %%
def lora_svg(lang_t) -> str:
    """LoRA's structure as SVG markup: training (W0 ∥ A → B → ×α/r, summed) and merged (W0 + (α/r)·B·A)."""
    def box(x, y, w, h, label, fill):
        return (f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="6" fill="{fill}" stroke="#333"/>'
                f'<text x="{x + w / 2}" y="{y + h / 2 + 5}" text-anchor="middle">{label}</text>')

    def arrow(x1, y1, x2, y2):
        return f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="#333" marker-end="url(#arrow)"/>'

    frozen, trainable = "#dde6f0", "#f6d7b0"
    parts = ['<svg xmlns="http://www.w3.org/2000/svg" width="720" height="300" font-family="sans-serif" '
             'font-size="14"><defs><marker id="arrow" markerWidth="8" markerHeight="8" refX="7" refY="4" '
             'orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="#333"/></marker></defs>',
             f'<text x="10" y="20" font-weight="bold">{lang_t("training: two parallel paths", "训练时:两条并行支路")}</text>',
             '<text x="20" y="95">x (k)</text>', arrow(60, 90, 110, 60), arrow(60, 90, 110, 140),
             box(110, 35, 230, 50, lang_t("W0 (d×k, frozen)", "W0(d×k,冻结)"), frozen),
             box(110, 115, 100, 50, lang_t("A (r×k)", "A(r×k)"), trainable), arrow(210, 140, 240, 140),
             box(240, 115, 100, 50, lang_t("B (d×r)", "B(d×r)"), trainable), arrow(340, 140, 370, 140),
             box(370, 120, 60, 40, "× α/r", "#ffffff"),
             '<circle cx="480" cy="90" r="16" fill="#fff" stroke="#333"/><text x="480" y="96" '
             'text-anchor="middle" font-size="20">+</text>',
             arrow(340, 60, 465, 82), arrow(430, 140, 467, 100), arrow(496, 90, 540, 90),
             '<text x="548" y="95">h = W0·x + (α/r)·B·A·x</text>',
             f'<text x="130" y="185" font-size="12">{lang_t("A random, B = 0: ΔW = 0 at the start", "A 随机,B = 0:开始时 ΔW = 0")}</text>',
             f'<text x="10" y="225" font-weight="bold">{lang_t("inference: merged into one matrix", "推理时:合并为一个矩阵")}</text>',
             '<text x="20" y="270">x (k)</text>', arrow(60, 265, 110, 265),
             box(110, 240, 230, 50, "W0 + (α/r)·B·A", frozen), arrow(340, 265, 400, 265),
             f'<text x="408" y="270">h {lang_t("(no extra latency)", "(没有额外延迟)")}</text>', '</svg>']
    return "".join(parts)


S.svg(lora_svg(t), t("LoRA's structure", "LoRA 的结构"))

# %% [markdown] lang="en"
# **How low-rank is a real weight?** B·A has rank at most r. How much of a pretrained matrix would a rank-r
# matrix capture? The best rank-r approximation is the SVD truncated to its r largest singular values
# (Eckart–Young): W_r = U_r·Σ_r·V_rᵀ. Below, the lesson's model's Wq (first layer) and its reconstructions.

# %% [markdown] lang="zh"
# **真实权重有多"低秩"?** B·A 的秩至多为 r。一个秩 r 的矩阵能抓住预训练矩阵的多少?最好的秩 r 近似就是截断到前 r 个
# 最大奇异值的 SVD(Eckart–Young 定理):W_r = U_r·Σ_r·V_rᵀ。下面是本课模型第一层的 Wq 及其重建。

# %%
Wq = base_model.base_model.encoder.layer[0].attention.self.query.weight.detach()       # (d, d)
U, sigma, Vh = torch.linalg.svd(Wq, full_matrices=False)
width = Wq.shape[0]
recon_ranks = [r_ for r_ in (1, 2, 4, 8, 16, 32, 64, 128, 256, width) if r_ <= width]
rel_error = {r_: ((Wq - U[:, :r_] @ torch.diag(sigma[:r_]) @ Vh[:r_]).norm() / Wq.norm()).item() for r_ in recon_ranks}
print(t("relative error ‖W − W_r‖_F / ‖W‖_F:", "相对误差 ‖W − W_r‖_F / ‖W‖_F:"),
      ", ".join(f"r = {r_}: {e:.3f}" for r_, e in rel_error.items()))
shown_ranks = [recon_ranks[1], recon_ranks[3], recon_ranks[len(recon_ranks) // 2 + 1]]
fig, axes = plt.subplots(1, 5, figsize=(13, 2.9))
corner = slice(0, min(width, 48))
limit = Wq[corner, corner].abs().max().item()
for ax, r_ in zip(axes, [None] + shown_ranks):
    shown = Wq if r_ is None else U[:, :r_] @ torch.diag(sigma[:r_]) @ Vh[:r_]
    ax.imshow(shown[corner, corner], cmap="RdBu", vmin=-limit, vmax=limit)
    ax.set(xticks=[], yticks=[], title=t("Wq (top-left corner)", "Wq(左上角)") if r_ is None else
           t(f"rank {r_}: error {rel_error[r_]:.2f}", f"秩 {r_}:误差 {rel_error[r_]:.2f}"))
axes[-1].plot(recon_ranks, [rel_error[r_] for r_ in recon_ranks], marker="o")
axes[-1].set(xscale="log", xlabel=t("rank r", "秩 r"), ylabel=t("relative error", "相对误差"), ylim=(0, 1.05))
fig.tight_layout()
half = next(r_ for r_ in recon_ranks if rel_error[r_] <= 0.5)
S.say(f"Measured on Wq of {S.model_name} ({width}×{width}): rank 8 leaves {rel_error[min(8, width)]:.0%} of the "
      f"matrix's norm unexplained, and the error first falls to half at r = {half} ({half / width:.0%} of the full "
      f"rank). " + ("So this weight itself is far from low-rank: " if rel_error[min(8, width)] > 0.5 else
                    "Here a few directions already carry much of the weight, yet: ")
      + "LoRA does not approximate W0 — it keeps W0 whole and bets that the *change* ΔW is low-rank "
      "(the paper's hypothesis, measured in lessons 4 and 5).",
      f"在{S.model_name}的 Wq({width}×{width})上实测:秩 8 留下矩阵范数的 {rel_error[min(8, width)]:.0%} 无法解释,"
      f"误差在 r = {half}(满秩的 {half / width:.0%})时才第一次降到一半。"
      + ("所以这个权重本身远不是低秩的:" if rel_error[min(8, width)] > 0.5 else "这里少数几个方向已经承载了权重的大部分,但是:")
      + "LoRA 并不近似 W0——它完整保留 W0,押注的是*变化量* ΔW 是低秩的(论文的假设,在第 4、5 课中测量)。")

# %% [markdown] lang="en"
# ## 1. The forward pass by hand
#
# Take d = 4 outputs, k = 3 inputs and rank r = 1, with small integers so you can follow along on paper:

# %% [markdown] lang="zh"
# ## 1. 手算前向计算
#
# 取 d = 4 个输出、k = 3 个输入、秩 r = 1,都用小整数,方便你在纸上跟着算:

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
print(t("ΔW = s·B·A, shape", "ΔW = s·B·A,形状"), tuple((s * B @ A).shape),
      t("— a d×k matrix of rank", "——一个 d×k 矩阵,秩为"), int(torch.linalg.matrix_rank(B @ A)))

# %% [markdown] lang="en"
# The cost: W0·x is d·k multiply-adds, the LoRA path r·k + d·r = r·(d + k) — and since the two paths are
# *parallel* (both read x, their results are added), a GPU can compute them side by side. Now the same with
# loralab: `inject` wraps the layer, freezes W0 and creates A (r×k) and B (d×r) for us.

# %% [markdown] lang="zh"
# 代价:W0·x 需要 d·k 次乘加,LoRA 支路需要 r·k + d·r = r·(d + k) 次——而且两条支路是*并行*的(都读 x,结果相加),
# GPU 可以同时计算。下面用 loralab 做同样的事:`inject` 包装这个层,冻结 W0,并为我们创建 A(r×k)和 B(d×r)。

# %%
tiny = OneLayer(3, 4)
with torch.no_grad():
    tiny.proj.weight.copy_(W0)
loralab.inject(tiny, LoraConfig(r=1, alpha=2.0, targets=["proj"]))
f = factors(tiny)
print("A:", tuple(f.A.shape), "B:", tuple(f.B.shape), t("scale:", "缩放:"), f.scale, t("| B at init:", "| 初始 B:"),
      f.B.flatten().tolist())
print(t("trainable:", "可训练:"), [name for name, p in tiny.named_parameters() if p.requires_grad])
with torch.no_grad():
    f.A.copy_(A)
    f.B.copy_(B)
    print(t("loralab's h =", "loralab 的 h ="), tiny(x).tolist())

# %% [markdown] lang="en"
# ## 2. Why B = 0 at the start
#
# loralab (like the paper) initialises A randomly and **B = 0**, so ΔW = s·B·A = 0: the adapted model starts
# *exactly* at the pretrained model. Fine-tuning begins from what pre-training learned, not from a random
# perturbation of it. Check it on the real model: the output with a freshly injected adapter is the base
# output, bit for bit.

# %% [markdown] lang="zh"
# ## 2. 为什么一开始 B = 0
#
# loralab(和论文一样)随机初始化 A,并令 **B = 0**,于是 ΔW = s·B·A = 0:适配后的模型*恰好*从预训练模型出发。
# 微调从预训练学到的东西开始,而不是从它的一个随机扰动开始。在真实模型上验证:刚注入适配器时的输出与基础模型的
# 输出逐位相同。

# %%
batch = {k: v for k, v in sst2_dev[0].items() if k != "labels"}        # input_ids (64, T), attention_mask ...
base_model = kit.classifier(S)
with torch.no_grad():
    base_logits = base_model(**batch).logits                            # (64, 2)
adapted = loralab.inject(copy.deepcopy(base_model), LoraConfig(r=R, alpha=ALPHA, modules_to_save=["classifier"]))
with torch.no_grad():
    init_gap = (adapted(**batch).logits - base_logits).abs().max().item()
print(loralab.trainable_summary(adapted))
print(t("max |logits(adapted at init) − logits(base)| =", "max |logits(刚注入) − logits(基础模型)| ="), init_gap)

# %% [markdown] lang="en"
# B = 0 has a second consequence, visible in the gradients. With a = A·x, the chain rule gives
#
#     ∂L/∂B = s · (∂L/∂h) · aᵀ         (d×r: non-zero as soon as A·x ≠ 0)
#     ∂L/∂A = s · Bᵀ · (∂L/∂h) · xᵀ    (r×k: zero while B = 0)
#
# So the first step moves only B; from then on both factors learn. If A were zero too, *both* gradients
# would vanish and LoRA would never leave ΔW = 0 — that is why one factor has to be random.
#
# **Predict before you run the next cell:** what if we swapped the roles — **A = 0 and B random** instead
# of B = 0 and A random? (a) it trains just as well: ΔW still starts at 0, only the first step moves A
# instead of B; (b) it never trains: both gradients stay zero; (c) it starts away from the pretrained model.
# Write the letter in `prediction_1`; the next cell trains both ways and checks.

# %% [markdown] lang="zh"
# B = 0 还有第二个后果,体现在梯度上。记 a = A·x,链式法则给出
#
#     ∂L/∂B = s · (∂L/∂h) · aᵀ         (d×r:只要 A·x ≠ 0 就非零)
#     ∂L/∂A = s · Bᵀ · (∂L/∂h) · xᵀ    (r×k:B = 0 时为零)
#
# 所以第一步只更新 B;之后两个因子都开始学习。如果 A 也是零,*两个*梯度都会消失,LoRA 永远离不开 ΔW = 0——这就是
# 为什么必须有一个因子是随机的。
#
# **运行下一个单元之前先预测:** 如果把角色对调——**A = 0、B 随机**,而不是 B = 0、A 随机——会怎样?
# (a) 照样能训练:ΔW 仍然从 0 开始,只是第一步更新的是 A 而不是 B;(b) 永远训练不动:两个梯度都一直为零;
# (c) 一开始就偏离了预训练模型。把字母写进 `prediction_1`;下一个单元会两种方式都训练一遍并检查。

# %%
# hint[en]: look at the two gradient formulas above with A = 0: which one is zero, which one is not? And what is B·A?
# hint[zh]: 在上面两个梯度公式里代入 A = 0:哪个为零,哪个不为零?B·A 又是多少?
prediction_1 = "a"             # B·A = 0 either way; with A = 0 it is ∂L/∂B that vanishes and A that moves first

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
print(t("B = 0, A random:", "B = 0,A 随机:"), f"‖∂L/∂A‖ = {grad_A:.3f}, ‖∂L/∂B‖ = {grad_B:.3f}")
print(t("B = 0, A = 0:   ", "B = 0,A = 0:  "), "‖∂L/∂A‖ = {:.3f}, ‖∂L/∂B‖ = {:.3f}".format(*lora_gradients(torch.zeros(1, 3))))


def train_small(a_init: torch.Tensor, b_init: torch.Tensor, steps: int = 40) -> tuple[float, list[float], tuple]:
    """Train the small example's factors from (A, B) = (a_init, b_init) with Adam: (‖ΔW‖ at the start, the
    losses, (‖∂L/∂A‖, ‖∂L/∂B‖) of the first step)."""
    model = loralab.inject(OneLayer(3, 4), LoraConfig(r=1, alpha=2.0, targets=["proj"]))
    f_ = factors(model)
    with torch.no_grad():
        model.proj.base_layer.weight.copy_(W0)
        f_.A.copy_(a_init)
        f_.B.copy_(b_init)
    start = f_.delta_weight().norm().item()
    optimizer = torch.optim.Adam([f_.A, f_.B], lr=0.05)
    losses, first = [], None
    for _ in range(steps):
        loss = ((model(x) - torch.tensor([0., 1., 0., 1.])) ** 2).sum()
        loss.backward()
        if first is None:
            first = (f_.A.grad.norm().item(), f_.B.grad.norm().item())
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return start, losses, first


usual = train_small(A, torch.zeros(4, 1))                  # the paper's init: A random, B = 0
swapped = train_small(torch.zeros(1, 3), B)                # A = 0, B random
for label, (start, losses, (gA, gB)) in ((t("A random, B = 0", "A 随机,B = 0"), usual),
                                         (t("A = 0, B random", "A = 0,B 随机"), swapped)):
    print(t(f"{label}: ‖ΔW‖ at start {start:.3f}; first step ‖∂L/∂A‖ = {gA:.3f}, ‖∂L/∂B‖ = {gB:.3f}; "
            f"loss {losses[0]:.2f} -> {losses[-1]:.3f} after {len(losses)} steps",
            f"{label}:初始 ‖ΔW‖ = {start:.3f};第一步 ‖∂L/∂A‖ = {gA:.3f},‖∂L/∂B‖ = {gB:.3f};"
            f"{len(losses)} 步后损失 {losses[0]:.2f} -> {losses[-1]:.3f}"))
start, losses, _ = swapped
measured_1 = "c" if start > 0 else "a" if losses[-1] < 0.5 * losses[0] else "b"
checks.predict("prediction_1", prediction_1, measured_1,
               t("A = 0 instead of B = 0", "用 A = 0 代替 B = 0"),
               t("B·A = 0 either way; with A = 0, ∂L/∂B vanishes and A moves first, then both train",
                 "两种方式 B·A 都是 0;A = 0 时 ∂L/∂B 为零,先动的是 A,之后两者一起训练"))

# %% [markdown] lang="en"
# ## 3. The scale s = α/r, and changing r at fixed α
#
# Why divide by r? The paper: "we simply set α to the first r we try and do not tune it", because scaling by
# α/r "helps to reduce the need to retune hyperparameters when we vary r". With Adam, each step moves every
# entry of A and B by roughly the learning rate, whatever the gradient's size — so with more columns in B
# (larger r) the product B·A grows faster. Let's measure it on a real matrix: MiniLM's query projection,
# fitted for 20 Adam steps to a target that needs a small low-rank change, at r = 1 … 64, with three scales:
# the paper's **α/r**, a constant **α** (no division), and rsLoRA's **α/√r** (Kalajdzievic 2023).

# %% [markdown] lang="zh"
# ## 3. 缩放因子 s = α/r,以及固定 α 时改变 r
#
# 为什么要除以 r?论文说:"我们直接把 α 设为第一个尝试的 r,不再调它",因为按 α/r 缩放"有助于在改变 r 时减少重新调
# 超参数的需要"。用 Adam 时,无论梯度大小,每一步大约把 A 和 B 的每个元素移动一个学习率——所以 B 的列越多(r 越大),
# 乘积 B·A 增长得越快。在真实矩阵上测一测:MiniLM 的查询投影,用 20 步 Adam 拟合一个只需要小的低秩变化的目标,
# r = 1 … 64,三种缩放:论文的 **α/r**、恒定的 **α**(不除以 r),以及 rsLoRA 的 **α/√r**(Kalajdzievic,2023)。

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
RULES = {"α/r": lambda r: dict(alpha=16.0),                              # s = 16/r
         "α": lambda r: dict(alpha=16.0 * r),                            # s = 16
         "α/√r": lambda r: dict(alpha=16.0, rslora=True)}                # s = 16/√r
SCALES = {t("α/r (the paper)", "α/r(论文)"): RULES["α/r"], t("α (no division)", "α(不除以 r)"): RULES["α"],
          t("α/√r (rsLoRA)", "α/√r(rsLoRA)"): RULES["α/√r"]}
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
    print(t(f"{name:16} ‖ΔW‖_F after 20 steps, r = {RANKS}: {[round(v, 2) for v in values]}  "
            f"(r = {RANKS[-1]} vs r = 1: ×{values[-1] / values[0]:.2f})",
            f"{name:16} 20 步后的 ‖ΔW‖_F,r = {RANKS}:{[round(v, 2) for v in values]}  "
            f"(r = {RANKS[-1]} 对比 r = 1:×{values[-1] / values[0]:.2f})"))

fig, ax = plt.subplots(figsize=(6, 3.6))
for name, values in delta_norms.items():
    ax.plot(RANKS, values, marker="o", label=name)
ax.set(xscale="log", yscale="log", xlabel=t("rank r", "秩 r"), ylabel=t("‖ΔW‖_F after 20 Adam steps", "20 步 Adam 后的 ‖ΔW‖_F"),
       title=t("how far one learning rate moves ΔW, by scale rule", "同一学习率下 ΔW 移动多远(按缩放规则)"))
ax.legend()
fig.tight_layout()

# %%
growth = {rule: values[-1] / values[0] for rule, values in zip(RULES, delta_norms.values())}


def direction(ratio: float) -> tuple[str, str]:
    """How ‖ΔW‖ at the largest r compares with r = 1, in words (within 10 %: flat)."""
    if ratio > 1.1:
        return f"grows ×{ratio:.2f}", f"增大到 ×{ratio:.2f}"
    if ratio < 1 / 1.1:
        return f"drifts down to ×{ratio:.2f}", f"下降到 ×{ratio:.2f}"
    return f"stays flat (×{ratio:.2f})", f"基本不变(×{ratio:.2f})"


words = {rule: direction(ratio) for rule, ratio in growth.items()}
S.say(f"Measured from r = 1 to r = {RANKS[-1]}: with a constant scale s = α the update {words['α'][0]}; with the "
      f"paper's α/r it {words['α/r'][0]}; with rsLoRA's α/√r (Kalajdzievic 2023) it {words['α/√r'][0]}. "
      + ("Dividing by r removes most of the growth a constant scale shows, so a new r does not need a new "
         "learning rate. " if growth["α"] > growth["α/r"] else
         "Here dividing by r did not reduce the growth — an exception to what the paper's rule is for. ")
      + "The practical rule from the paper: fix α once (loralab's default is 16) and compare ranks at that α — "
      "which is what lesson 3 does.",
      f"从 r = 1 到 r = {RANKS[-1]} 的实测:缩放因子恒为 s = α 时,更新{words['α'][1]};用论文的 α/r 时{words['α/r'][1]};"
      f"用 rsLoRA 的 α/√r(Kalajdzievic,2023)时{words['α/√r'][1]}。"
      + ("除以 r 去掉了恒定缩放下的大部分增长,所以换一个 r 不必重新调学习率。" if growth["α"] > growth["α/r"] else
         "这里除以 r 并没有减小增长——与论文这条规则的初衷相反。")
      + "论文给出的实用规则:α 只设一次(loralab 默认 16),在这个 α 下比较不同的秩——第 3 课就是这样做的。")

# %% [markdown] lang="en"
# ## 4. Merging, and switching tasks
#
# For inference the update can be folded into the weight: **W = W0 + s·B·A**. The merged layer is an ordinary
# d×k matrix, so the model costs exactly what the base model costs — no extra latency. To switch task,
# subtract one update and add another: W0 + s·B1·A1 → W0 + s·B2·A2. We train (or reuse from the cache) two
# adapters of rank r (the knob `r`, 8 unless you set it) on Wq and Wv of all-MiniLM-L6-v2: one for SST-2 (sentiment of a movie-review sentence) and
# one for MRPC (are two sentences paraphrases?). Each also trains its own copy of the 2-way classifier head.

# %% [markdown] lang="zh"
# ## 4. 合并与任务切换
#
# 推理时可以把更新并入权重:**W = W0 + s·B·A**。合并后的层就是普通的 d×k 矩阵,模型的计算量与基础模型完全相同——
# 没有额外延迟。切换任务时,减去一个更新、加上另一个:W0 + s·B1·A1 → W0 + s·B2·A2。我们在 all-MiniLM-L6-v2 的
# Wq 和 Wv 上训练(或从缓存读取)两个秩为 r 的适配器(旋钮 `r`,默认 8):一个用于 SST-2(影评句子的情感),一个用于 MRPC(两个句子是否
# 互为释义)。每个适配器还各自训练一份 2 类分类头。

# %%
sst2_run = kit.lora_run(S, r=R, alpha=ALPHA)       # r = 8, α = 16: lesson 3's r = 8 run, from the cache
mrpc_run = kit.train_run(S, "lora", data="mrpc", r=R, alpha=ALPHA)
mrpc_train, mrpc_dev = kit.task_batches(S, "mrpc", tok)

model = kit.classifier(S)
loralab.load_adapter(model, sst2_run.adapter, adapter="sst2")
loralab.load_adapter(model, mrpc_run.adapter, adapter="mrpc")
print(t("adapters:", "适配器:"), loralab.list_adapters(model))


def task_accuracy(active: str) -> dict[str, float]:
    loralab.set_adapter(model, active)
    return {"SST-2": kit.accuracy(model, sst2_dev), "MRPC": kit.accuracy(model, mrpc_dev)}


table = {name: task_accuracy(name) for name in ("sst2", "mrpc")}
print(t(f"dev accuracy ({S.recipe.dev_sentences} examples per task)   on SST-2   on MRPC",
        f"验证集准确率(每个任务 {S.recipe.dev_sentences} 个样本)        SST-2     MRPC"))
for name, row in table.items():
    print(t(f"  active adapter {name:5}                      ", f"  启用适配器 {name:5}                          ")
          + f"{row['SST-2']:7.3f}  {row['MRPC']:7.3f}")
mrpc_labels = [int(label) for batch in mrpc_dev for label in batch["labels"]]
majority = max(sum(mrpc_labels), len(mrpc_labels) - sum(mrpc_labels)) / len(mrpc_labels)
own_best = {name: row[{"sst2": "SST-2", "mrpc": "MRPC"}[name]] >= table[other][{"sst2": "SST-2", "mrpc": "MRPC"}[name]]
            for name, other, row in (("sst2", "mrpc", table["sst2"]), ("mrpc", "sst2", table["mrpc"]))}
mrpc_vs_majority = table["mrpc"]["MRPC"] - majority
S.say(("Each adapter is at least as good on its own task as the other adapter is. " if all(own_best.values()) else
       "Not every adapter wins on its own task here: " + ", ".join(n for n, ok in own_best.items() if not ok)
       + " does no better on its own task than the other adapter. ")
      + f"On MRPC, always answering the majority class scores {majority:.3f} on these pairs; the MRPC adapter "
      + (f"beats that by {mrpc_vs_majority:.3f}." if mrpc_vs_majority > 0 else
         f"does not beat it ({table['mrpc']['MRPC']:.3f}): this little training has not learned paraphrase yet.")
      + " Now merge: the outputs must not change, only the cost of computing them.",
      ("每个适配器在自己的任务上都不比另一个适配器差。" if all(own_best.values()) else
       "这里并不是每个适配器都在自己的任务上胜出:" + "、".join(n for n, ok in own_best.items() if not ok)
       + " 在自己的任务上并不比另一个适配器好。")
      + f"在 MRPC 上,总是回答多数类在这些句对上得 {majority:.3f};MRPC 适配器"
      + (f"比它高 {mrpc_vs_majority:.3f}。" if mrpc_vs_majority > 0 else
         f"没有超过它({table['mrpc']['MRPC']:.3f}):这么少的训练还没学会判断释义。")
      + "下面合并:输出不能变,变的只是计算它们的代价。")

# %%
loralab.set_adapter(model, "sst2")
with torch.no_grad():
    unmerged_logits = model(**batch).logits
started = time.perf_counter()
loralab.merge(model)                                  # W0 += s·B·A in all 12 adapted matrices
merge_ms = (time.perf_counter() - started) * 1000
with torch.no_grad():
    merged_logits = model(**batch).logits
print(t(f"merge took {merge_ms:.1f} ms; max |merged − unmerged| logits = "
        f"{(merged_logits - unmerged_logits).abs().max().item():.2e} (float32 rounding)",
        f"合并用时 {merge_ms:.1f} ms;合并前后 logits 的最大差 = "
        f"{(merged_logits - unmerged_logits).abs().max().item():.2e}(float32 舍入)"))

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
switch_median = sorted(switch_ms)[len(switch_ms) // 2]
print(t(f"task switch on the merged model: median {switch_median:.1f} ms; loading a whole model instead: {load_s:.2f} s",
        f"在合并模型上切换任务:中位数 {switch_median:.1f} ms;改为加载整个模型:{load_s:.2f} s"))
print(t(f"after 10 switches {name} differs from W0 + ΔW_sst2 by at most {drift:.1e}",
        f"切换 10 次后,{name} 与 W0 + ΔW_sst2 的最大差为 {drift:.1e}"))
print(t(f"one task on disk: adapter {adapter_bytes / 1e6:.2f} MB vs a full fp32 model {model_bytes / 1e6:.1f} MB",
        f"每个任务占用磁盘:适配器 {adapter_bytes / 1e6:.2f} MB,对比完整 fp32 模型 {model_bytes / 1e6:.1f} MB"))
faster = switch_median / 1000 < load_s
S.say(f"Switching task is arithmetic on the adapted matrices: no second model in memory, a "
      f"{adapter_bytes / 1e6:.2f} MB file per task instead of {model_bytes / 1e6:.1f} MB, and after ten switches the "
      f"weights are where they should be up to {drift:.1e} (float32 rounding). "
      + (f"Here a switch ({switch_median:.1f} ms) was faster than loading a whole model ({load_s:.2f} s)"
         if faster else f"Here a switch ({switch_median:.1f} ms) was not faster than loading a whole model "
                        f"({load_s:.2f} s), which came from the operating system's file cache")
      + "; either way one full-size copy per task is what LoRA saves. This is the paper's deployment story: one "
      "frozen base in memory, one small file per task.",
      f"切换任务只是对被适配矩阵做加减:内存里不需要第二个模型,每个任务只占 {adapter_bytes / 1e6:.2f} MB 的文件而不是 "
      f"{model_bytes / 1e6:.1f} MB,切换十次后权重与应有值的差不超过 {drift:.1e}(float32 舍入)。"
      + (f"这里一次切换({switch_median:.1f} ms)比加载整个模型({load_s:.2f} s)快"
         if faster else f"这里一次切换({switch_median:.1f} ms)并不比加载整个模型({load_s:.2f} s,文件来自操作系统缓存)快")
      + ";无论如何,LoRA 省下的是每个任务一份完整拷贝。这就是论文的部署方案:内存里一个冻结的基础模型,每个任务一个小文件。")

# %% [markdown] lang="en"
# ## Check yourself
#
# Work each answer out before you run the cell (`loralab learn 2 --exercises` gives you blank answers; the
# hint folds open above the cell).
#
# 1. Compute h = W0·x + s·B·A·x for the small example by hand (section 1) and compare with loralab.
# 2. Predict the shapes of A, B and ΔW for LoRA with r = 4 on the MLP's down-projection of MiniLM's first
#    layer, `nn.Linear(1536, 384)`.
# 3. At B = 0, what is ‖∂L/∂A‖? Compare with autograd.
# 4. Two outputs of the first adapted layer for the same input; one came from the merged model, one from the
#    base. Which is the merged one ("first" or "second")? Use the adapter *file*'s A and B.
# 5. How many parameters does the model have after `merge_and_unload`?

# %% [markdown] lang="zh"
# ## 自我检查
#
# 运行代码前先算出每个答案(`loralab learn 2 --exercises --lang zh` 给你空白答案;提示在代码上方,可以展开)。
#
# 1. 手算小例子的 h = W0·x + s·B·A·x(第 1 节),并与 loralab 比较。
# 2. 预测在 MiniLM 第一层 MLP 的下投影 `nn.Linear(1536, 384)` 上用 r = 4 的 LoRA 时,A、B 和 ΔW 的形状。
# 3. B = 0 时 ‖∂L/∂A‖ 是多少?与 autograd 比较。
# 4. 同一输入下第一个被适配层的两个输出,一个来自合并后的模型,一个来自基础模型。哪个是合并后的("first" 还是
#    "second")?用适配器*文件*中的 A 和 B。
# 5. `merge_and_unload` 之后模型有多少个参数?

# %%
# hint[en]: h = W0·x + s·B·(A·x) with W0·x = [7, 2, 6, 2], A·x = [4] and s = 2; write a list of four floats.
# hint[zh]: h = W0·x + s·B·(A·x),其中 W0·x = [7, 2, 6, 2],A·x = [4],s = 2;写成含四个浮点数的列表。
answer_1 = [15.0, 2.0, 22.0, -6.0]                     # [7, 2, 6, 2] + 2·[4, 0, 8, -4] (exact in float32)
checks.equal("answer_1", answer_1, tiny(x).detach().tolist(), t("h by hand vs loralab's layer", "手算的 h 对比 loralab 的层"),
             t("h = W0·x + s·B·A·x = [7, 2, 6, 2] + 2·[4, 0, 8, −4]", "h = W0·x + s·B·A·x = [7, 2, 6, 2] + 2·[4, 0, 8, −4]"),
             "low-rank")

config = base_model.config
d_out, d_in, rank = config.hidden_size, config.intermediate_size, 4     # Linear(1536, 384) -> W (384, 1536)
# hint[en]: nn.Linear(k, d) stores W as (d, k); A is (r, k), B is (d, r); use d_out, d_in and rank.
# hint[zh]: nn.Linear(k, d) 把 W 存成 (d, k);A 是 (r, k),B 是 (d, r);用 d_out、d_in 和 rank。
answer_2 = {"A": (rank, d_in), "B": (d_out, rank), "ΔW": (d_out, d_in)}
probe = loralab.inject(copy.deepcopy(base_model), LoraConfig(r=rank, targets=[r"re:.*layer\.0\.output\.dense"]))
f_probe = factors(probe)
checks.equal("answer_2", answer_2,
             {"A": tuple(f_probe.A.shape), "B": tuple(f_probe.B.shape), "ΔW": tuple(f_probe.delta_weight().shape)},
             t("shapes of A, B, ΔW on the MLP down-projection", "MLP 下投影上 A、B、ΔW 的形状"),
             t("A (r, d_in), B (d_out, r), ΔW (d_out, d_in)", "A (r, d_in),B (d_out, r),ΔW (d_out, d_in)"), "low-rank")

# hint[en]: ∂L/∂A = s·Bᵀ·(∂L/∂h)·xᵀ — what is it while B = 0? (a float)
# hint[zh]: ∂L/∂A = s·Bᵀ·(∂L/∂h)·xᵀ——B = 0 时它是多少?(一个浮点数)
answer_3 = 0.0                                         # Bᵀ = 0, so ∂L/∂A = 0
checks.equal("answer_3", answer_3, grad_A, t("‖∂L/∂A‖ at B = 0", "B = 0 时的 ‖∂L/∂A‖"),
             t("∂L/∂A = s·Bᵀ·(∂L/∂h)·xᵀ is zero while B = 0", "B = 0 时 ∂L/∂A = s·Bᵀ·(∂L/∂h)·xᵀ 为零"), "low-rank")

A_file, B_file, s_file = loralab.read_adapter(sst2_run.adapter).factors[name]
x_in = torch.randn(layer.base_layer.weight.shape[1], generator=g)
with torch.no_grad():
    merged_out = layer(x_in)                           # the merged model's layer (sst2 is merged)
    with loralab.disabled(model):
        base_out = layer(x_in)                         # adapters off: W0·x
coin = random.Random(2).random() < 0.5
first, second = (merged_out, base_out) if coin else (base_out, merged_out)
predicted_change = s_file * (B_file.float() @ (A_file.float() @ x_in))       # s·B·A·x from the file
# hint[en]: merged − base = s·B·A·x: compute predicted_change-like s·B·A·x and see which difference (first − second or second − first) matches it.
# hint[zh]: 合并 − 基础 = s·B·A·x:算出 s·B·A·x,看 first − second 与 second − first 哪个与它一致。
answer_4 = "first" if (first - second - predicted_change).norm() < (second - first - predicted_change).norm() else "second"
checks.equal("answer_4", answer_4, "first" if coin else "second",
             t("which output came from the merged model", "哪个输出来自合并后的模型"),
             t("the merged output is the one the other differs from by +s·B·A·x", "合并后的输出比另一个多出 +s·B·A·x"),
             "latency")

plain = loralab.merge_and_unload(model)
# hint[en]: the base encoder's parameters (sum over encoder.parameters()) plus a 2-way head on the hidden_size-wide pooled output (weights and biases).
# hint[zh]: 基础编码器的参数(对 encoder.parameters() 求和),加上 hidden_size 维池化输出上的 2 类分类头(权重和偏置)。
answer_5 = sum(p.numel() for p in encoder.parameters()) + config.hidden_size * 2 + 2
checks.equal("answer_5", answer_5, sum(p.numel() for p in plain.parameters()),
             t("parameters after merge_and_unload", "merge_and_unload 之后的参数量"),
             t("merging adds nothing: the base encoder plus the head", "合并不增加参数:基础编码器加分类头"), "latency")
checks.summary()
