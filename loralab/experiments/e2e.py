"""E2E NLG with a real pretrained LLM: the base model zero-shot versus the same model with a LoRA adapter.

    from loralab.experiments.e2e import E2EConfig, run_e2e
    result = run_e2e(E2EConfig(), "/work/runs/e2e")        # ~20-30 min training + generation on 2 CPU cores
    result = run_e2e(E2EConfig.quick(), "out/e2e-quick")    # tiny random LLaMA, a few examples, < 1 min

The paper's second headline experiment (Hu et al. 2021, Table 3) adapts GPT-2 M to E2E NLG and scores
the outputs with BLEU, NIST, METEOR, ROUGE-L and CIDEr. Here the model is SmolLM2-135M-Instruct (builtin,
loaded from its GGUF file), and both systems see the *same* prompt: the model's chat template with one
user turn "Write one sentence describing this restaurant: <MR>" (E2EConfig.instruction). The instruction
is what makes the zero-shot base a fair baseline: an instruct model given a bare MR does not know what to
do with it. The adapter is trained on the same prompt with the loss on the target tokens only.

Data: train on a fixed subset of `e2e/valid.txt` (the builtin "e2e" data set's train split); evaluate
on the distinct MRs of `e2e/test.txt`, in first-appearance order, scored against every reference of each
MR (loralab.metrics.score_e2e). `eval_mrs` keeps an evenly spaced subset of those MRs (test.txt is
sorted by restaurant name, so the first N would cover only a few restaurants); None keeps all 630.

Output folder:

    data/train.jsonl       the instruction-prefixed prompts and targets the adapter is trained on
    train/                 loralab.training.run.run_training's folder (adapter/, metrics.json, checkpoints/)
    predictions/base.txt   one output per evaluated MR (and lora.txt), with *.json holding their settings
    results.json / .csv / .md   the comparison table; examples.md: side-by-side outputs for a few MRs

Resumable: a finished training run (train/metrics.json) is reused, an unfinished one resumes from its last
checkpoint, and a system's predictions are reused when their settings (model, adapter, MRs, decoding)
match, so re-running after a kill continues where it stopped.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable

import loralab
from loralab.data.builtin import shared_data_dir
from loralab.data.encoding import Task
from loralab.errors import LoraLabError
from loralab.experiments.common import train_run
from loralab.experiments.e2e_config import DEFAULT_INSTRUCTION, DEFAULT_MODEL, QUICK_MODEL, E2EConfig  # noqa: F401
from loralab.files import claim_output_folder, owned_kind
from loralab.files import write_text as atomic_write_text
from loralab.formats.peft import check_adapter_folder
from loralab.generation import generate
from loralab.metrics import read_e2e, read_e2e_references, score_e2e
from loralab.metrics.meteor_jar import FALLBACK, meteor_implementation
from loralab.models import load_model, load_tokenizer
from loralab.precision import Precision
from loralab.runtime import quantize_base
from loralab.training.reproducibility import set_threads

OUTPUT_KIND = "e2e-report"           # the .loralab-output marker of an e2e folder
SYSTEMS = ("base", "lora")
SYSTEM_TITLES = {"base": "base model, zero-shot", "lora": "base model + LoRA"}
METRIC_COLUMNS = ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr")
TABLE_COLUMNS = ("system", *METRIC_COLUMNS, "trainable_params", "adapter_bytes", "train_seconds",
                 "generate_seconds", "mrs", "num_beams", "max_new_tokens", "mean_output_words")
# the quick model's chat template: ChatML like SmolLM2's, without the default system turn
QUICK_CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> "
                       "{% endfor %}{% if add_generation_prompt %}<|im_start|> assistant {% endif %}")


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


def e2e_dir(config: E2EConfig) -> Path:
    if config.data_dir is not None:
        return Path(config.data_dir)

    return shared_data_dir() / "e2e"


def evenly_spaced(count: int, keep: int | None) -> list[int]:
    """`keep` indices spread evenly over range(count) (all of them when keep is None or >= count):
    floor(i * count / keep) for i < keep, so the first is 0 and, as count > keep, none repeats."""
    if keep is None or keep >= count:
        return list(range(count))
    return [i * count // keep for i in range(keep)]


def evaluation_set(config: E2EConfig) -> tuple[list[str], list[list[str]]]:
    """(MRs, all references of each MR) of test.txt, reduced to config.eval_mrs evenly spaced MRs."""
    mrs, references = read_e2e_references(e2e_dir(config) / "test.txt")
    chosen = evenly_spaced(len(mrs), config.eval_mrs)
    return [mrs[i] for i in chosen], [references[i] for i in chosen]


def write_train_file(config: E2EConfig, path: Path) -> Path:
    """valid.txt as JSONL {"prompt": instruction + MR, "target": reference}, written atomically."""
    lines = [json.dumps({"prompt": config.instruction + mr, "target": text}, ensure_ascii=False)
             for mr, text in read_e2e(e2e_dir(config) / "valid.txt")]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def write_quick_model(folder: Path, config: E2EConfig) -> Path:
    """A 2-layer random-init LLaMA (hidden 32) with a word-level tokenizer over the E2E words and a
    ChatML-style chat template: a stand-in for the real model so --quick runs in seconds, offline."""
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    if (folder / "config.json").is_file():
        return folder
    specials = ["<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"]
    vocab = {token: i for i, token in enumerate(specials)}
    words = config.instruction.split() + ["user", "assistant"]
    for name in ("valid.txt", "test.txt"):
        for mr, text in read_e2e(e2e_dir(config) / name):
            words.extend(mr.split() + text.split())
    for word in words:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                                     pad_token="<pad>", unk_token="<unk>")
    tokenizer.chat_template = QUICK_CHAT_TEMPLATE
    model_config = transformers.LlamaConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2, intermediate_size=48,
                                            max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
                                            pad_token_id=0, tie_word_embeddings=True)
    torch.manual_seed(config.seed)
    scratch = folder.with_name(folder.name + ".tmp")
    transformers.LlamaForCausalLM(model_config).save_pretrained(scratch)
    tokenizer.save_pretrained(scratch)
    os.replace(scratch, folder)
    return folder


# --------------------------------------------------------------------------------------------------
# Training, generation, scoring
# --------------------------------------------------------------------------------------------------


def train_adapter(config: E2EConfig, out: Path, log: Callable[[str], None] = print) -> tuple[Path, dict[str, Any]]:
    """Train (or reuse / resume) the adapter under out/train; returns (adapter folder, training metrics)."""
    run_dir = out / "train"
    metrics_path = run_dir / "metrics.json"
    if metrics_path.is_file() and (run_dir / "adapter" / "adapter_config.json").is_file():
        log(f"reusing the trained adapter in {run_dir / 'adapter'}")
        return run_dir / "adapter", json.loads(metrics_path.read_text(encoding="utf-8"))
    train_file = write_train_file(config, out / "data" / "train.jsonl")
    train_config = config.train_config(train_file)
    resume = (run_dir / "checkpoints" / "LATEST").exists()
    if resume:
        saved = run_dir / "config.json"
        if saved.is_file() and json.loads(saved.read_text(encoding="utf-8")) != train_config.to_dict():
            raise LoraLabError(f"{run_dir} holds an unfinished run with other settings; use another --out "
                               "or remove that folder")
        log(f"resuming the unfinished training run in {run_dir}")
    metrics = train_run(train_config, run_dir, resume=resume, log=log)
    return run_dir / "adapter", metrics


def folder_bytes(folder: Path) -> int:
    """Total size in bytes of the files directly in `folder` (an adapter folder is flat)."""
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def _settings_key(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def generate_for(system: str, model: Any, tokenizer: Any, prompts: list[str], config: E2EConfig, out: Path,
                 settings: dict[str, Any], log: Callable[[str], None] = print) -> tuple[list[str], float]:
    """Outputs of `model` for `prompts` (reused from out/predictions/<system>.txt when the settings match,
    continued from <system>.partial.json after a kill); returns (outputs, generation seconds summed over
    the batches, as measured when they were generated)."""
    folder = out / "predictions"
    text_path, meta_path = folder / f"{system}.txt", folder / f"{system}.json"
    key = _settings_key(settings)
    if text_path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("key") == key:
            outputs = text_path.read_text(encoding="utf-8").split("\n")[: len(prompts)]
            if len(outputs) == len(prompts):
                log(f"{system}: reusing {len(outputs)} outputs from {text_path}")
                return outputs, float(meta["generate_seconds"])
    # finished batches are kept in <system>.partial.json, so a killed run continues after the last one
    partial_path = folder / f"{system}.partial.json"
    outputs, seconds = [], 0.0
    if partial_path.is_file():
        partial = json.loads(partial_path.read_text(encoding="utf-8"))
        if partial.get("key") == key:
            outputs, seconds = list(partial["outputs"]), float(partial["generate_seconds"])
            log(f"{system}: continuing after {len(outputs)} outputs saved in {partial_path}")
    task = Task("causal-lm", chat_template=True)
    log(f"{system}: generating for {len(prompts) - len(outputs)} MRs (beams {config.num_beams}, up to "
        f"{config.max_new_tokens} new tokens)")
    folder.mkdir(parents=True, exist_ok=True)
    params = config.sampling_params()
    for start in range(len(outputs), len(prompts), config.gen_batch_size):
        started = time.perf_counter()
        chunk = prompts[start:start + config.gen_batch_size]
        # MR i is sampled with seed + i whichever chunk it falls in (generate adds the index in the chunk)
        chunk_params = params if params.seed is None else replace(params, seed=(params.seed + start) % 2**63)
        texts = generate(model, tokenizer, chunk, chunk_params, task=task, batch_size=config.gen_batch_size)
        # one output per line: a newline inside an output would shift every later line
        outputs.extend(" ".join(text.split()) for text in texts)
        seconds += time.perf_counter() - started
        atomic_write_text(partial_path, json.dumps({"key": key, "outputs": outputs, "generate_seconds": seconds})
                          + "\n")
        log(f"{system}: {len(outputs)}/{len(prompts)} MRs, {seconds:.0f} s")
    atomic_write_text(text_path, "\n".join(outputs) + "\n")
    atomic_write_text(meta_path, json.dumps({"key": key, "settings": settings, "generate_seconds": seconds},
                                            indent=2) + "\n")
    partial_path.unlink(missing_ok=True)
    return outputs, seconds


def run_e2e(config: E2EConfig, out: str | os.PathLike, adapter: str | os.PathLike | None = None,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train (or reuse `adapter`), generate with the base zero-shot and with the adapter on the same test
    MRs, score both, write the tables and examples into `out`. Returns what results.json holds."""
    precision = Precision.resolve(config.device, config.dtype)    # a missing GPU: before anything is written
    out = claim_e2e_folder(out, config, adapter)
    started = time.perf_counter()
    set_threads(config.threads)
    if config.model == QUICK_MODEL:
        config = replace(config, model=str(write_quick_model(out / "quick-model", config)))
    mrs, references = evaluation_set(config)
    adapter_dir, train_metrics = _adapter_and_metrics(config, out, adapter, log)
    outputs, seconds, trainable = _generate_both(config, adapter_dir, mrs, out, precision, log)
    rows = _score_rows(config, outputs, references, seconds, trainable, adapter_dir, train_metrics)
    examples = [{"mr": mrs[i], "base": outputs["base"][i], "lora": outputs["lora"][i],
                 "reference": references[i][0], "references": len(references[i])}
                for i in evenly_spaced(len(mrs), min(config.examples_shown, len(mrs)))] if config.examples_shown else []
    result = {
        "rows": rows, "examples": examples,
        "config": {**asdict(config), "targets": list(config.targets)},
        "adapter": str(adapter_dir),
        "train": {k: train_metrics[k] for k in ("train_examples", "examples_seen", "steps", "train_seconds",
                                                 "wall_seconds") if k in train_metrics},
        "eval_mrs_of": 630 if config.data_dir is None else None,
        "meteor": FALLBACK if config.meteor == "loralab" else meteor_implementation(),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    write_results(result, out)
    log(f"wrote {out}: results.md, results.json, results.csv, examples.md, predictions/")
    return result


def claim_e2e_folder(out: str | os.PathLike, config: E2EConfig, adapter: str | os.PathLike | None) -> Path:
    """The output policy for the e2e folder (loralab.files.claim_output_folder): a folder e2e wrote is re-used
    (finished parts kept), anything else refused with one line. The inputs it must not be, hold or lie in
    are the model and the --adapter, unless that adapter is the one this folder trained (<out>/train/...)."""
    inputs = [config.model]
    if adapter is not None and not Path(adapter).resolve().is_relative_to((Path(out) / "train").resolve()):
        inputs.append(adapter)
    return claim_output_folder(out, OUTPUT_KIND, inputs, recognise=is_e2e_folder)


def is_e2e_folder(folder: Path) -> bool:
    """The layout of an e2e folder written before loralab marked its outputs: a results.json with its rows
    and config, or a train/ folder holding a training run."""
    try:
        data = json.loads((folder / "results.json").read_text(encoding="utf-8"))
        if isinstance(data, dict) and {"rows", "config"} <= data.keys():
            return True
    except (OSError, ValueError):
        pass
    return owned_kind(folder / "train") == "train-run"


def _adapter_and_metrics(config: E2EConfig, out: Path, adapter: str | os.PathLike | None,
                         log: Callable[[str], None]) -> tuple[Path, dict[str, Any]]:
    """(adapter folder, its training metrics): trained (or resumed) under out/train, or the given `adapter`
    with the metrics.json of the run that wrote it, when there is one."""
    if adapter is None:
        return train_adapter(config, out, log)

    adapter_dir = check_adapter_folder(adapter).path          # the cause named, before the model loads
    metrics_path = adapter_dir.parent / "metrics.json"
    return adapter_dir, json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else {}


def _generate_both(config: E2EConfig, adapter_dir: Path, mrs: list[str], out: Path, precision: Any,
                   log: Callable[[str], None]) -> tuple[dict[str, list[str]], dict[str, float], int]:
    """({system: outputs}, {system: generation seconds}, trainable parameters of the adapter) for the base
    model zero-shot and the same model with the adapter, on the same prompts."""
    prompts = [config.instruction + mr for mr in mrs]
    tokenizer = load_tokenizer(config.model)
    if not getattr(tokenizer, "chat_template", None):
        raise LoraLabError(f"{config.model}: the tokenizer has no chat template; this comparison prompts "
                           "both systems through it, so use an instruction-tuned model")
    model = load_model(config.model, task="causal-lm", dtype=precision.dtype)      # "auto" resolved
    quantize_base(model, config.quantize)
    model.to(precision.device).eval()
    decoding = {"model": config.model, "instruction": config.instruction, "mrs": mrs,
                "num_beams": config.num_beams, "max_new_tokens": config.max_new_tokens}
    if config.decoding:  # only when set, so greedy and beam predictions made before it are still reused
        decoding["decoding"] = config.decoding
    if (precision.name, config.quantize) != ("fp32", "none"):      # likewise: fp32 predictions stay reusable
        decoding["precision"] = {"dtype": precision.name, "quantize": config.quantize}
    outputs, seconds = {}, {}
    outputs["base"], seconds["base"] = generate_for("base", model, tokenizer, prompts, config, out, decoding, log)
    loralab.load_adapter(model, adapter_dir)
    model.to(precision.device).eval()
    weights = adapter_dir / "adapter_model.safetensors"
    adapter_key = hashlib.sha256(weights.read_bytes()).hexdigest()[:16] if weights.is_file() else str(adapter_dir)
    outputs["lora"], seconds["lora"] = generate_for("lora", model, tokenizer, prompts, config, out,
                                                    {**decoding, "adapter": adapter_key}, log)
    return outputs, seconds, sum(p.numel() for p in model.parameters() if p.requires_grad)


def _score_rows(config: E2EConfig, outputs: dict[str, list[str]], references: list[list[str]],
                seconds: dict[str, float], trainable: int, adapter_dir: Path,
                train_metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One results row per system: the five metrics, sizes and times."""
    rows = []
    for system in SYSTEMS:
        scores = score_e2e(outputs[system], references, meteor=config.meteor)
        lora_row = system == "lora"
        rows.append({
            "system": system, **{k: round(float(scores[k]), 4) for k in METRIC_COLUMNS},
            "trainable_params": trainable if lora_row else 0,
            "adapter_bytes": folder_bytes(adapter_dir) if lora_row else 0,
            "train_seconds": round(float(train_metrics.get("train_seconds", 0.0)), 3) if lora_row else 0.0,
            "generate_seconds": round(seconds[system], 3), "mrs": len(outputs[system]),
            "num_beams": config.num_beams, "max_new_tokens": config.max_new_tokens,
            "mean_output_words": round(sum(len(o.split()) for o in outputs[system]) / len(outputs[system]), 2),
        })
    return rows


# --------------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------------


def results_markdown(result: dict[str, Any]) -> str:
    """The comparison table as markdown (metrics on the paper's scales)."""
    config = result["config"]
    decoding = "greedy" if config["num_beams"] == 1 else f"beam {config['num_beams']}"
    settings = config.get("decoding") or {}
    if settings:
        decoding = ("sampled" if settings.get("temperature", 0) > 0 else decoding) + " (" + \
            ", ".join(f"{k}={v}" for k, v in sorted(settings.items())) + ")"
    lines = [
        f"# E2E NLG: {config['model']} zero-shot vs LoRA",
        "",
        f"{result['rows'][0]['mrs']} test MRs (evenly spaced over test.txt's distinct MRs), all references per MR; "
        f"{decoding}, up to {config['max_new_tokens']} new tokens. Prompt: chat template, user turn "
        f"`{config['instruction']}<MR>`. METEOR: {result.get('meteor', 'loralab exact+stem METEOR')}.",
        "",
        "| system | BLEU | NIST | METEOR | ROUGE-L | CIDEr | trainable params | adapter size | train time | "
        "generation time | mean words |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        size = f"{row['adapter_bytes'] / 1024:.0f} KiB" if row["adapter_bytes"] else "-"
        params = f"{row['trainable_params']:,}" if row["trainable_params"] else "0"
        train = f"{row['train_seconds'] / 60:.1f} min" if row["train_seconds"] else "-"
        lines.append(f"| {SYSTEM_TITLES[row['system']]} | {row['BLEU']:.1f} | {row['NIST']:.2f} | {row['METEOR']:.1f} "
                     f"| {row['ROUGE_L']:.1f} | {row['CIDEr']:.2f} | {params} | {size} | {train} | "
                     f"{row['generate_seconds'] / 60:.1f} min | {row['mean_output_words']:.1f} |")
    train = result.get("train") or {}
    if train:
        lines += ["", f"Training: {train.get('train_examples', '?')} examples of valid.txt, "
                      f"{train.get('steps', '?')} optimizer steps, r={config['r']}, alpha={config['alpha']:g}, "
                      f"lr {config['lr']:g}, LoRA on {', '.join(config['targets'])}."]
    return "\n".join(lines) + "\n"


def examples_markdown(result: dict[str, Any]) -> str:
    lines = ["# Side-by-side outputs", ""]
    for example in result["examples"]:
        lines += [f"**MR**: `{example['mr']}`", "",
                  f"- zero-shot: {example['base'] or '(empty)'}",
                  f"- LoRA: {example['lora'] or '(empty)'}",
                  f"- a reference (of {example['references']}): {example['reference']}", ""]
    return "\n".join(lines)


def write_results(result: dict[str, Any], out: Path) -> None:
    """results.json, results.csv (TABLE_COLUMNS), results.md and examples.md, each written atomically."""
    atomic_write_text(out / "results.json", json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(TABLE_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(result["rows"])
    atomic_write_text(out / "results.csv", buffer.getvalue())
    atomic_write_text(out / "results.md", results_markdown(result))
    atomic_write_text(out / "examples.md", examples_markdown(result))
