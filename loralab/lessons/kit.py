"""What the lessons share: their settings, the model and data they use, a short training loop, training runs
cached between lessons, and the "check yourself" bookkeeping.

    S = kit.settings()                      # quick or normal mode, cache folder, torch threads
    model = kit.classifier(S)               # all-MiniLM-L6-v2 (quick: a 2-layer random BERT) + a 2-way head
    train, dev = kit.task_batches(S, "sst2")   # GLUE SST-2 from ../shared/data, padded batches
    losses = kit.train_steps(model, train, steps=60, lr=2e-3)
    run = kit.lora_run(S, r=8)              # trained once, then read back from the cache by every lesson

This is the one place where the lessons import loralab's data readers and batching; everything else they use
is loralab's public API (loralab.inject, LoraConfig, save/load/merge, loralab.budget, loralab.analysis,
loralab.baselines, loralab.timing).
"""
from __future__ import annotations

import json
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from loralab import save_adapter
from loralab.baselines import METHODS, freeze_all, train_head
from loralab.data.batching import PadCollator, pad_token_id_for
from loralab.data.builtin import load_builtin
from loralab.data.encoding import Task, encode_examples
from loralab.data.labels import LabelMap
from loralab.errors import choose
from loralab.experiments.common import quick_model_dir
from loralab.files import write_json, write_safetensors
from loralab.lessons import (CONCEPTS, ENV_CACHE, ENV_EXERCISES, ENV_KNOBS, ENV_LANG, ENV_PAGE_TEXT, ENV_QUICK,
                             ENV_THREADS, LANGUAGES, get_concept)
from loralab.lessons.knobs import FLOAT, INT, INTS, Knob, decode, fingerprint
from loralab.models import load_model, load_tokenizer

MODEL = "all-minilm-l6-v2"
LABELS = 2          # SST-2: negative (0) / positive (1)


@dataclass(frozen=True)
class Recipe:
    """How the lessons train on SST-2: a fixed seeded subset of train, `steps` optimizer steps of
    `batch_size` sentences (each sentence seen once), scored on the first `dev_sentences` of SST-2 dev."""

    steps: int
    batch_size: int
    dev_sentences: int
    max_length: int

    @property
    def train_sentences(self) -> int:
        return self.steps * self.batch_size


# Normal mode: sized so that each lesson stays well under 5 minutes on 2 CPU cores with one torch thread: a
# MiniLM LoRA run of 96 steps of 8 sentences took 18 CPU seconds here (full fine-tuning about 3×), and one
# thread is what a machine shared with other jobs runs fastest. Quick mode: a tiny random BERT, seconds.
NORMAL = Recipe(steps=96, batch_size=8, dev_sentences=300, max_length=40)
QUICK = Recipe(steps=6, batch_size=8, dev_sentences=32, max_length=24)


@dataclass(frozen=True)
class Settings:
    """quick: tiny random model and a few examples (for tests; numbers are meaningless, mechanics exact).
    cache: folder for training runs the lessons share. model: spec of the encoder the lessons fine-tune.
    lang: "en" or "zh", the language of every text the lesson prints, draws or checks (code stays English).
    exercises: the answers are the learner's (blank: None) rather than the worked solutions."""

    quick: bool
    cache: Path
    threads: int
    model: str
    recipe: Recipe
    lang: str = "en"
    exercises: bool = False
    knobs: dict[str, Any] = field(default_factory=dict)   # the knob values given for this run (none: defaults)

    def knob(self, name: str, lesson: int) -> Any:
        """The value of `lesson`'s knob `name` for this run: the learner's (`loralab learn N name=value`) or the
        lesson's default in this mode (the KNOBS table)."""
        if name in self.knobs:
            return self.knobs[name]
        return next(k for k in KNOBS[lesson] if k.name == name).value(self.quick)

    def t(self, en: str, zh: str) -> str:
        """The text in the lesson's language: both are written side by side in the lesson source."""
        return zh if self.lang == "zh" else en

    def say(self, en: str, zh: str) -> None:
        """Prose a code cell writes because it states a measured result (an f-string reading the value, or a
        sentence chosen by the direction of the measurement): shown as text in the page, printed in a script."""
        text = self.t(en, zh)
        if os.environ.get(ENV_PAGE_TEXT) == "1":
            print(f"{PROSE_START}{text}{PROSE_END}")
        else:
            print(text)

    def svg(self, markup: str, what: str) -> None:
        """A diagram the lesson draws as SVG markup (its own code, not a file): inline in the page, and in a plain
        script one line saying what it is (`what`, in the page's language)."""
        if os.environ.get(ENV_PAGE_TEXT) == "1":
            print(f"{SVG_START}{markup}{PROSE_END}")
        else:
            print(f"[{what}: {len(markup):,} characters of SVG, drawn in the page]")

    def announce(self) -> None:
        """The lesson's first words about its mode: in quick mode, that a tiny random model stands in for every
        model the text names (its numbers mean nothing; the normal-mode reading is hidden). (A knob run's values
        are the page's first line: the runner writes it.)"""
        if self.quick:
            self.say("**Quick mode:** a tiny random model (2 layers, hidden size 32) stands in for every model the "
                     "text names (all-MiniLM-L6-v2, SmolLM2): its numbers mean nothing, the mechanics and the checks "
                     "are exact, and the reading of normal-mode results is hidden.",
                     "**快速模式:** 文中提到的每个模型(all-MiniLM-L6-v2、SmolLM2)都由一个微型随机模型(2 层,隐藏维度 32)"
                     "代替:它的数字没有意义,机制和检查是准确的,对正常模式结果的解读已隐藏。")

    @property
    def model_name(self) -> str:
        """What the lesson's model is, in the lesson's language: quick mode says it is a tiny random model."""
        if self.quick:
            return self.t("the tiny random model (2 layers, hidden size 32)", "微型随机模型(2 层,隐藏维度 32)")
        return "all-MiniLM-L6-v2"


# How kit.Settings.say marks prose in a cell's output; the runner renders what lies between as markdown.
PROSE_START, PROSE_END = "\x1eprose\x1f", "\x1e"
# How kit.Settings.svg marks a diagram's SVG markup; the runner embeds what lies between (up to PROSE_END) as is.
SVG_START = "\x1esvg\x1f"


def _argv_value(flag: str, default: str) -> str:
    argv = sys.argv[1:]
    return argv[argv.index(flag) + 1] if flag in argv[:-1] else default


def settings() -> Settings:
    """The lesson's settings: from the runner (`loralab learn`), or for a plain script `--quick`, `--lang zh`
    and `--exercises` on the command line. Also quiets transformers' load reports and progress bars, sets the
    torch threads, and for Chinese selects a CJK font in matplotlib (cjk_font)."""
    import transformers

    quick = os.environ.get(ENV_QUICK, "1" if "--quick" in sys.argv[1:] else "0") == "1"
    lang = os.environ.get(ENV_LANG) or _argv_value("--lang", "en")
    choose(lang, LANGUAGES, "lesson language")
    exercises = os.environ.get(ENV_EXERCISES, "1" if "--exercises" in sys.argv[1:] else "0") == "1"
    cache = Path(os.environ.get(ENV_CACHE) or Path("runs", "lessons", "cache-quick" if quick else "cache"))
    threads = int(os.environ.get(ENV_THREADS) or 1)
    torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if lang == "zh" and os.environ.get(ENV_LANG) is None:   # a plain script; the runner sets the font itself
        import matplotlib

        matplotlib.rcParams.update(font_settings(lang))
    model = str(quick_model(cache)) if quick else MODEL
    knobs = decode(os.environ.get(ENV_KNOBS))
    recipe = QUICK if quick else NORMAL
    if "steps" in knobs:
        recipe = replace(recipe, steps=knobs["steps"])
    return Settings(quick, cache, threads, model, recipe, lang, exercises, knobs)


# Debian's fonts-noto-cjk (`make setup` installs it) and where other systems put the same font.
CJK_FONT_FILES = ("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
                  "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
                  "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
                  "/usr/share/fonts/truetype/noto/NotoSansCJK-Regular.ttc")


def cjk_font() -> str | None:
    """The family name of an installed CJK font, registered with matplotlib (its font cache may predate the
    font's installation, so the file is added explicitly); None when none is installed."""
    import matplotlib.font_manager as font_manager

    for path in CJK_FONT_FILES:
        if Path(path).is_file():
            font_manager.fontManager.addfont(path)
            return font_manager.FontProperties(fname=path).get_name()
    return None


def font_settings(lang: str) -> dict[str, Any]:
    """matplotlib rcParams for figures in `lang`: for Chinese the CJK font first, DejaVu Sans (matplotlib's
    own, for σ, ‖ and the like) as the fallback. Empty for English or where no CJK font is installed."""
    if lang != "zh":
        return {}
    family = cjk_font()
    if family is None:
        return {}
    return {"font.family": [family, "DejaVu Sans"], "axes.unicode_minus": False}


def quick_model(cache: Path) -> Path:
    """The quick mode's model: the experiments' 2-layer random BERT (hidden 32) with MiniLM's tokenizer."""
    return quick_model_dir(cache / "_quick-model")


# --------------------------------------------------------------------------------------------------
# Models and data
# --------------------------------------------------------------------------------------------------
def classifier(S: Settings, seed: int = 0) -> nn.Module:
    """The encoder with a fresh 2-way classification head (seeded), in eval mode, float32, on the CPU."""
    torch.manual_seed(seed)
    return load_model(S.model, task="sequence-classification", num_labels=LABELS).eval()


def tokenizer(S: Settings):
    return load_tokenizer(S.model)


def examples(name: str, split: str, limit: int | None, seed: int = 0) -> list:
    """A fixed subset of a builtin data set's split: `limit` examples drawn with random.Random(seed) (the
    first `limit` of dev-like splits when seed is None), in file order. loralab's readers, ../shared/data."""
    rows = load_builtin(name, [split])[split]
    if limit is None or limit >= len(rows):
        return rows
    if seed is None:
        return rows[:limit]
    chosen = sorted(random.Random(seed).sample(range(len(rows)), limit))
    return [rows[i] for i in chosen]


def batches(rows: Sequence, tok, batch_size: int, max_length: int, task: str = "classification",
            label_names: Sequence[str] = ("0", "1")) -> list[dict[str, torch.Tensor]]:
    """Tokenize and cut into padded batches, in order: input_ids (B, T), attention_mask (B, T),
    token_type_ids (B, T) and labels (B,) with T the longest sentence of the batch."""
    encoded = encode_examples(rows, tok, Task(task, max_length=max_length), LabelMap(tuple(label_names)))
    collate = PadCollator(pad_token_id_for(tok))
    return [collate([encoded[i] for i in range(start, min(start + batch_size, len(encoded)))])
            for start in range(0, len(encoded), batch_size)]


# data set -> (task, maximum tokens as a multiple of the recipe's max_length: pairs hold two sentences)
TASKS = {"sst2": ("classification", 1.0), "mrpc": ("pair-classification", 1.6)}


def task_batches(S: Settings, data: str = "sst2", tok=None) -> tuple[list[dict], list[dict]]:
    """(train batches, dev batches) of the recipe: steps × batch_size seeded train examples of `data` (GLUE
    SST-2 sentences or MRPC sentence pairs) and the first dev_sentences of its dev split in batches of 64."""
    tok = tok or tokenizer(S)
    task, length = TASKS[data]
    recipe = S.recipe
    max_length = int(recipe.max_length * length)
    train = batches(examples(data, "train", recipe.train_sentences, seed=0), tok, recipe.batch_size, max_length, task)
    dev = batches(examples(data, "dev", recipe.dev_sentences, seed=None), tok, 64, max_length, task)
    return train, dev


# --------------------------------------------------------------------------------------------------
# Training and scoring
# --------------------------------------------------------------------------------------------------
def trainable(model: nn.Module) -> int:
    """Number of values that receive gradient steps."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def train_steps(model: nn.Module, train: Sequence[dict], steps: int, lr: float, seed: int = 0,
                on_step: Callable[[int, float], None] | None = None) -> list[float]:
    """Plain AdamW (no weight decay, constant lr) on the parameters that require grad, one batch per step
    (cycling through `train`). Returns the training loss of every step. This is all a LoRA training loop
    is: inject() has frozen W0 and everything else, so the optimizer only ever sees A, B and the head."""
    torch.manual_seed(seed)   # dropout masks
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    for step in range(steps):
        loss = model(**train[step % len(train)]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1])
    model.eval()
    return losses


@torch.inference_mode()
def accuracy(model: nn.Module, dev: Sequence[dict]) -> float:
    """Fraction of correctly classified sentences."""
    model.eval()
    right = total = 0
    for batch in dev:
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        right += int((logits.argmax(-1) == batch["labels"]).sum())
        total += len(batch["labels"])
    return right / total


def smooth(values: Sequence[float], window: int = 10) -> list[float]:
    """Trailing moving average (the first points average what there is), for readable loss curves."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


# --------------------------------------------------------------------------------------------------
# Training runs shared between lessons (cached under S.cache)
# --------------------------------------------------------------------------------------------------
@dataclass
class Run:
    """One training run (SST-2 or MRPC). folder holds adapter/ (LoRA, PEFT layout) or trainable.safetensors
    (other methods: exactly the trained tensors, by parameter name) and run.json with these fields.
    settings: everything that identifies the run (a cached run is reused only when they all match).
    seconds / cpu_seconds: training wall time and this process's CPU time for it."""

    name: str
    folder: Path
    settings: dict[str, Any]
    losses: list[float]
    dev_accuracy: float
    trainable: int
    seconds: float
    cpu_seconds: float
    reused: bool = False

    @property
    def lr(self) -> float:
        return self.settings["lr"]

    @property
    def adapter(self) -> Path:
        return self.folder / "adapter"

    @property
    def tensors(self) -> Path:
        return self.folder / "trainable.safetensors"

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / max(len(self.losses), 1)


# Learning rates per method (fixed, as in `loralab experiment methods`; full fine-tuning needs a much smaller one).
LEARNING_RATES = {"lora": 3e-3, "head": 3e-3, "full": 5e-5, "houlsby": 2e-3, "prefix": 5e-3}


def head_only(model: nn.Module) -> nn.Module:
    """Train only the new classifier head (the reference point "r = 0": what LoRA adds is above this)."""
    freeze_all(model)
    train_head(model)
    return model


def prepare(method: str, model: nn.Module, **options: Any) -> nn.Module:
    """loralab.baselines.METHODS[method] (lora, full, houlsby, prefix, bitfit) or "head" (head_only)."""
    if method == "head":
        return head_only(model, **options)
    return METHODS[method](model, **options)


def _cached(folder: Path, settings: dict[str, Any]) -> Run | None:
    path = folder / "run.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("settings") != settings:
        return None
    return Run(**{**data, "folder": folder, "reused": True})


def subset(rows: Sequence, size: int, seed: int = 0) -> list:
    """`size` of `rows`, drawn with random.Random(seed), in their order. Nested: the subset of a smaller size
    lies inside that of a larger one (the first `size` of one seeded shuffle), as in the data-size experiment."""
    order = random.Random(seed).sample(range(len(rows)), len(rows))
    return [rows[i] for i in sorted(order[:size])]


def train_run(S: Settings, method: str, data: str = "sst2", lr: float | None = None,
              log: Callable[[str], None] = print, tag: str | None = None, train_size: int | None = None,
              seed: int = 0, **options: Any) -> Run:
    """Train `method` ("lora", "full", "houlsby", "prefix" of loralab.baselines.METHODS, or "head") with `options`
    on the recipe's `data` ("sst2" or "mrpc"), or read the same run back from the cache. Every method trains
    the head. tag: the cache name's part after the method (default: the options, `-alpha16.0-r8`); the cache
    key holds every option either way. train_size: train on only this many of the recipe's training examples
    (a nested seeded subset, kit.subset), cycled through for the recipe's steps (None: all, each seen once).
    seed: the training seed (head and adapter initialisation, dropout masks, and for seed ≠ 0 the batch order; the
    subset stays the same draw, as in `loralab experiment data-size`); seed 0 keeps the cache names and keys of
    the one-seed runs, another seed adds `-s{seed}` to both."""
    lr = LEARNING_RATES[method] if lr is None else lr
    name = f"{data}-{method}" + (f"-{tag}" if tag else "".join(f"-{k}{v}" for k, v in sorted(options.items())))
    if train_size is not None:
        name += f"-n{train_size}"
    if seed:
        name += f"-s{seed}"
    if S.knobs:   # a knob run's entries live apart from the default runs, which lessons 4 and 5 read
        name += f"-knobs-{fingerprint(S.knobs)}"
    folder = S.cache / name
    settings = {"model": S.model, "data": data, "task": list(TASKS[data]), "recipe": asdict(S.recipe),
                "method": method, "options": options, "lr": lr}
    if train_size is not None:
        settings["train_size"] = train_size
    if seed:
        settings["seed"] = seed
    if S.knobs:
        settings["knobs"] = {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(S.knobs.items())}
    cached = _cached(folder, settings)
    if cached is not None:
        log(f"{name}: reusing the run in {folder}")
        return cached
    tok = tokenizer(S)
    train, dev = task_batches(S, data, tok)
    if train_size is not None or seed:
        task, length = TASKS[data]
        rows = list(examples(data, "train", S.recipe.train_sentences, seed=0))     # a copy: shuffled below
        if train_size is not None:
            rows = subset(rows, train_size)
        if seed:
            random.Random(seed).shuffle(rows)          # another batch order over the same examples
        train = batches(rows, tok, S.recipe.batch_size, int(S.recipe.max_length * length), task)
    model = prepare(method, classifier(S, seed), **options)
    log(f"{name}: training {trainable(model):,} values for {S.recipe.steps} steps ...")
    started, cpu_started = time.perf_counter(), time.process_time()
    losses = train_steps(model, train, S.recipe.steps, lr, seed=seed)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    if method == "lora":
        save_adapter(model, folder / "adapter")
    else:
        write_safetensors(folder / "trainable.safetensors",
                          {n: p for n, p in model.named_parameters() if p.requires_grad})
    run = Run(name, folder, settings, losses, accuracy(model, dev), trainable(model), seconds, cpu_seconds)
    write_json(folder / "run.json", {k: v for k, v in asdict(run).items() if k not in ("folder", "reused")})
    log(f"{name}: {seconds:.0f} s ({cpu_seconds:.0f} CPU s), dev accuracy {run.dev_accuracy:.3f}")
    return run


def remembered(path: Path, key: dict[str, Any], compute: Callable[[], float]) -> float:
    """A measured number kept in a small JSON file (`path`) with what identifies it (`key`): read back when the
    key matches, else computed and written (a lesson's measurements on cached runs, e.g. a probe's AUC)."""
    if path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("key") == key:
            return float(data["value"])
    value = float(compute())
    write_json(path, {"key": key, "value": value})
    return value


def lora_run(S: Settings, r: int, alpha: float = 16.0, log: Callable[[str], None] = print,
             lr: float | None = None, train_size: int | None = None, seed: int = 0) -> Run:
    """LoRA on Wq, Wv (the preset) with rank r and fixed alpha, plus the head: lessons 3, 4 and 5 share these.
    lr: the learning rate (None: LEARNING_RATES["lora"]); train_size, seed: as in train_run."""
    return train_run(S, "lora", lr=lr, log=log, train_size=train_size, seed=seed, r=r, alpha=alpha)


# --------------------------------------------------------------------------------------------------
# Knobs: what `loralab learn N name=value` may change, per lesson (loralab.lessons.knobs)
# --------------------------------------------------------------------------------------------------
KNOBS: dict[int, tuple[Knob, ...]] = {
    1: (),
    2: (Knob("r", INT, 8, 1, 256, "the rank of the LoRA layers of §0 (yours and loralab's) and of §4's adapters",
             "第 0 节(你的和 loralab 的)LoRA 层以及第 4 节适配器的秩"),
        Knob("alpha", FLOAT, 16.0, 0.01, 1024, "α of those layers (their scale is α/r)",
             "这些层的 α(缩放因子为 α/r)")),
    3: (Knob("r", INTS, (1, 2, 4, 8, 64), 1, 256, "the LoRA ranks §4 trains side by side",
             "第 4 节并排训练的 LoRA 秩", quick_default=(1, 2, 4, 8, 16)),
        Knob("lr", FLOAT, LEARNING_RATES["lora"], 1e-5, 0.1, "the learning rate of those LoRA runs",
             "这些 LoRA 训练的学习率"),
        Knob("steps", INT, NORMAL.steps, 1, 1000, f"optimizer steps of every run ({NORMAL.batch_size} new sentences each)",
             f"每次训练的优化步数(每步 {NORMAL.batch_size} 个新句子)", quick_default=QUICK.steps)),
    4: (),
    5: (),
}


# --------------------------------------------------------------------------------------------------
# Check yourself
# --------------------------------------------------------------------------------------------------
RIGHT, WRONG, MISSING = "right", "wrong", "missing"
MARKS = {RIGHT: "✓", WRONG: "✗", MISSING: "·"}


class Checks:
    """The lesson's "check yourself" answers and predictions, each compared with a value worked out another
    way (or, for a prediction, with the measurement). Every check is recorded as right, wrong or missing (the
    answer is None: not written yet) and printed; none stops the lesson, so every answer is checked.

    key: the answer's variable ("answer_3", "prediction_1"); what: the question in a few words; why: what a
    wrong answer should know about the expected value; concept: the CONCEPTS key it practises (the page's
    closing checklist ticks a concept when all its exercises in the lesson are right). Predictions are scored
    apart: a measurement may disagree with a sound prediction, and that is a finding, not a failure."""

    def __init__(self, S: Settings | None = None) -> None:
        self.lang = S.lang if S is not None else "en"
        self.results: list[dict[str, Any]] = []

    def _t(self, en: str, zh: str) -> str:
        return zh if self.lang == "zh" else en

    def _record(self, key: str, what: str, answer: Any, expected: Any, status: str, why: str, concept: str | None,
                kind: str) -> None:

        if concept is not None:
            get_concept(concept)     # a typo in a lesson's concept key fails here, not silently in the checklist
        self.results.append({"key": key, "name": what, "kind": kind, "status": status, "passed": status == RIGHT,
                             "answer": repr(answer), "expected": repr(expected), "why": why, "concept": concept})
        head = f"{MARKS[status]} {key} ({what}):"
        if status == RIGHT:
            print(f"{head} {answer!r}")
        elif status == MISSING:
            print(head, self._t(f"missing — write your answer in {key} (the hint is above the cell)",
                                f"未作答——请把答案写进 {key}(提示在代码上方)"))
        else:
            expected_text = self._t("expected", "应为") if kind == "exercise" else self._t("measured", "实测")
            print(f"{head} {answer!r} — {expected_text} {expected!r}" + (f": {why}" if why else ""))

    def equal(self, key: str, answer: Any, expected: Any, what: str, why: str = "", concept: str | None = None,
              kind: str = "exercise") -> None:
        """Exact agreement (counts, shapes, labels)."""
        status = MISSING if answer is None else RIGHT if answer == expected else WRONG
        self._record(key, what, answer, expected, status, why, concept, kind)

    def close(self, key: str, answer: Any, expected: float, what: str, rel: float = 1e-6, abs_: float = 0.0,
              why: str = "", concept: str | None = None) -> None:
        """Agreement within rel·|expected| + abs_ (two floating-point computations of one quantity). An answer
        that is not a number is wrong, not an error."""
        expected = float(expected)
        if answer is None:
            self._record(key, what, None, round(expected, 10), MISSING, why, concept, "exercise")
            return
        try:
            value = float(answer)
        except (TypeError, ValueError):
            self._record(key, what, answer, round(expected, 10), WRONG, why, concept, "exercise")
            return
        ok = abs(value - expected) <= rel * abs(expected) + abs_
        self._record(key, what, round(value, 10), round(expected, 10), RIGHT if ok else WRONG, why, concept,
                     "exercise")

    def predict(self, key: str, answer: Any, measured: Any, what: str, why: str = "",
                concept: str | None = None) -> None:
        """A prediction written before the cell that measures it, compared with the measurement."""
        self.equal(key, answer, measured, what, why, concept, kind="prediction")

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [c for c in self.results if c["kind"] == kind]

    def score_line(self) -> str:
        """"Score: 4 of 5 right, 1 wrong, 0 missing; predictions: 1 of 2 matched the measurement"."""
        exercises, predictions = self.of_kind("exercise"), self.of_kind("prediction")
        count = {status: sum(c["status"] == status for c in exercises) for status in (RIGHT, WRONG, MISSING)}
        line = self._t(f"Score: {count[RIGHT]} of {len(exercises)} right, {count[WRONG]} wrong, "
                       f"{count[MISSING]} missing",
                       f"得分:{len(exercises)} 题中答对 {count[RIGHT]} 题,答错 {count[WRONG]} 题,"
                       f"未答 {count[MISSING]} 题")
        if predictions:
            matched = sum(c["status"] == RIGHT for c in predictions)
            unanswered = sum(c["status"] == MISSING for c in predictions)
            line += self._t(f"; predictions: {matched} of {len(predictions)} matched the measurement"
                            + (f" ({unanswered} not made)" if unanswered else ""),
                            f";预测:{len(predictions)} 个中有 {matched} 个与实测一致"
                            + (f"({unanswered} 个未作答)" if unanswered else ""))
        return line

    def concepts(self) -> dict[str, bool]:
        """{concept key: all of this lesson's exercises for it are right} for the concepts it checks."""
        status: dict[str, bool] = {}
        for check in self.of_kind("exercise"):
            if check["concept"] is not None:
                status[check["concept"]] = status.get(check["concept"], True) and check["passed"]
        return status

    def summary(self) -> None:
        """Print the score line and the route's checklist (the lesson's last cell calls it)."""

        print(self.score_line())
        ticked = self.concepts()
        print(self._t("The route's checklist (关键概念清单), as far as this lesson checks it:",
                      "关键概念清单(本课检查的部分):"))
        for concept in CONCEPTS:
            if concept.key in ticked:
                print(f"  [{'x' if ticked[concept.key] else ' '}] {concept.zh} / {concept.en}")
