"""Learn LoRA by running it: five lessons, one per stage of the learning route (see README.md here).

    loralab learn                 # list the lessons
    loralab learn 3 --quick       # run lesson 3 on a tiny model (seconds); writes runs/lessons/03/index.html

Each lesson is a Python file in jupytext's percent format (`# %%` code cells, `# %% [markdown]` text cells):
it runs as a plain script (`python lesson_3_transformer.py [--quick]`), opens as a notebook in Jupyter with
jupytext, and `loralab.lessons.runner` executes it cell by cell into a self-contained HTML page.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from loralab.errors import unknown

FOLDER = Path(__file__).resolve().parent
# The languages of the lessons: every prose cell, heading, check message, hint and figure label exists in each
# (paired markdown cells and kit.Settings.t(en, zh) in the lesson files; tests/lessons checks the pairs).
LANGUAGES = ("en", "zh")
# How `loralab.lessons.runner` tells a lesson it runs (kit.settings reads them): quick mode, the cache of
# trained runs, torch threads, the language, exercise mode, that prose goes into the page, and the knobs.
ENV_QUICK, ENV_CACHE, ENV_THREADS = "LORALAB_LESSON_QUICK", "LORALAB_LESSON_CACHE", "LORALAB_LESSON_THREADS"
ENV_LANG, ENV_EXERCISES, ENV_PAGE_TEXT = "LORALAB_LESSON_LANG", "LORALAB_LESSON_EXERCISES", "LORALAB_LESSON_PAGE"
ENV_KNOBS = "LORALAB_LESSON_KNOBS"    # the knob values of the run, as JSON (loralab.lessons.knobs.encode)


@dataclass(frozen=True)
class Concept:
    """One of the eight concepts of the route's checklist (关键概念清单): its key (what a check's `concept`
    names), its names in both languages, a one-line definition in both, and the lessons whose exercises check
    it. The glossary and the closing checklist of every lesson page are drawn from this table."""

    key: str
    en: str
    zh: str
    define_en: str
    define_zh: str
    lessons: tuple[int, ...]

    def name(self, lang: str) -> str:
        return self.zh if lang == "zh" else self.en

    def definition(self, lang: str) -> str:
        return self.define_zh if lang == "zh" else self.define_en


# In the route's order (../shared/seed: 关键概念清单).
CONCEPTS: tuple[Concept, ...] = (
    Concept("low-rank", "low-rank matrix factorisation", "低秩矩阵分解",
            "writing a d×k matrix of rank r as B·A (d×r times r×k): r·(d+k) numbers instead of d·k",
            "把秩为 r 的 d×k 矩阵写成 B·A(d×r 乘 r×k):只需 r·(d+k) 个数,而不是 d·k 个", (1, 2, 5)),
    Concept("intrinsic-dim", "intrinsic dimension", "内在维度",
            "the fewest trained directions θ = θ0 + P·z that reach 90 % of full training (d90)",
            "θ = θ0 + P·z 中达到完整训练 90% 效果所需的最少训练方向数(d90)", (5,)),
    Concept("peft", "parameter-efficient fine-tuning (PEFT)", "参数高效微调(PEFT)",
            "fine-tuning a few added or chosen values while the pretrained weights stay frozen",
            "冻结预训练权重,只训练少量新增或选定的参数", (1, 3, 4, 5)),
    Concept("weights", "a Transformer's weight matrices", "Transformer 的权重矩阵",
            "Wq, Wk, Wv, Wo of self-attention and the MLP's matrices, each W (d_out × d_in)",
            "自注意力的 Wq、Wk、Wv、Wo 与 MLP 的矩阵,每个都是 W(d_out × d_in)", (3,)),
    Concept("latency", "where inference latency comes from", "推理延迟的来源",
            "extra sequential work per forward pass: serial adapters add it, merged LoRA adds none",
            "每次前向传播中额外的串行计算:串行 Adapter 会增加,合并后的 LoRA 不增加", (2, 4, 5)),
    Concept("subspace", "subspace similarity", "子空间相似性",
            "φ(i, j) = ‖U_iᵀ·U_j‖_F² / min(i, j): how much two sets of directions overlap (0 to 1)",
            "φ(i, j) = ‖U_iᵀ·U_j‖_F² / min(i, j):两组方向重合的程度(0 到 1)", (4,)),
    Concept("svd", "singular value decomposition (SVD)", "奇异值分解(SVD)",
            "W = U·diag(σ)·Vᵀ; keeping the top r triplets is the best rank-r approximation (Eckart–Young)",
            "W = U·diag(σ)·Vᵀ;保留前 r 组奇异值/向量即最优的秩 r 近似(Eckart–Young)", (1, 5)),
    Concept("amplification", "feature amplification", "特征放大",
            "‖ΔW‖_F / ‖UᵀWV‖_F: how strongly ΔW magnifies directions W already has but does not emphasise",
            "‖ΔW‖_F / ‖UᵀWV‖_F:ΔW 把 W 中已有但未被强调的方向放大了多少倍", (4,)),
)
CONCEPT_KEYS = tuple(concept.key for concept in CONCEPTS)


def get_concept(key: str) -> Concept:
    """The concept with this key (a lesson's check names one of CONCEPT_KEYS)."""
    for concept in CONCEPTS:
        if concept.key == key:
            return concept
    raise KeyError(f"no concept {key!r}; the keys are {', '.join(CONCEPT_KEYS)}")


@dataclass(frozen=True)
class Lesson:
    """One lesson: its number (1-5, the stage of the route), file name, title, the checklist concepts it
    teaches, and the folder holding the file (this package's, unless a test points elsewhere)."""

    number: int
    file: str
    title: str
    concepts: tuple[str, ...]
    folder: Path = FOLDER
    title_zh: str = ""

    def heading(self, lang: str = "en") -> str:
        """The lesson's title in `lang` (Chinese titles are named after the route's stages: 阶段 N)."""
        return self.title_zh if lang == "zh" and self.title_zh else self.title

    @property
    def path(self) -> Path:
        return self.folder / self.file

    @property
    def folder_name(self) -> str:
        """The lesson's output folder under runs/lessons/: '01' ... '05'."""
        return f"{self.number:02d}"


LESSONS: tuple[Lesson, ...] = (
    Lesson(1, "lesson_1_background.py", "Why LoRA, and the linear algebra it rests on (rank, SVD, Eckart-Young)",
           ("low-rank factorization", "SVD", "parameter-efficient fine-tuning"),
           title_zh="阶段 1:理解问题背景——为什么需要 LoRA,以及它依赖的线性代数(秩、SVD、Eckart–Young)"),
    Lesson(2, "lesson_2_method.py", "The method: LoRA's forward pass, B = 0, alpha/r, merging and task switching",
           ("low-rank factorization", "where inference latency comes from"),
           title_zh="阶段 2:理解 LoRA 核心原理——前向计算、B = 0、α/r、合并与任务切换"),
    Lesson(3, "lesson_3_transformer.py", "LoRA in a Transformer: its weight matrices, their cost, and r = 1 ... 64",
           ("a Transformer's weight matrices", "parameter-efficient fine-tuning"),
           title_zh="阶段 3:应用到 Transformer——权重矩阵、各种选择的代价,以及 r = 1 … 64"),
    Lesson(4, "lesson_4_experiments.py", "The experiments: baselines, subspace similarity, amplification, latency",
           ("subspace similarity", "feature amplification", "where inference latency comes from",
            "parameter-efficient fine-tuning"),
           title_zh="阶段 4:深入理解实验结果——基线对比、子空间相似性、特征放大、推理延迟"),
    Lesson(5, "lesson_5_theory.py", "Theory: intrinsic dimension, feature amplification, why low rank suffices",
           ("intrinsic dimension", "feature amplification", "SVD"),
           title_zh="阶段 5:理论洞察——内在维度、特征放大、为什么低秩就够了"),
)


def get_lesson(number: int) -> Lesson:
    """The lesson with this number; an unknown number is a one-line error listing the valid ones."""
    for lesson in LESSONS:
        if lesson.number == number:
            return lesson
    raise unknown(number, [lesson.number for lesson in LESSONS], "lesson", " (`loralab learn` lists them)")


__all__ = ["CONCEPTS", "CONCEPT_KEYS", "Concept", "ENV_KNOBS", "FOLDER", "LANGUAGES", "LESSONS", "Lesson", "get_concept", "get_lesson"]
