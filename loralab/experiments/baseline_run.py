"""Training a baseline method (loralab.baselines.METHODS) with the trainer's building blocks, for a loralab
whose TrainConfig has no `method` field yet. Same data, schedule, evaluation and output layout as
loralab.training.loop.run_training, except that METHODS[method](model, **options) prepares the model
instead of loralab.inject, the trained tensors are saved as adapter/trainable.safetensors, and no
resumable checkpoints are written (an interrupted run restarts; the run grid still skips finished runs).

Once TrainConfig carries `method` / `method_options`, the experiments use run_training itself and this
module is no longer called (see loralab.experiments.common.has_method_support).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

TRAINABLE_FILE = "trainable.safetensors"


def train_baseline(config, method: str, options: dict[str, Any], output_dir: str | os.PathLike,
                   resume: bool = False) -> dict[str, Any]:
    """Train `config` (a TrainConfig; its `lora` field is ignored) with baseline `method`; returns the
    metrics dict written to output_dir/metrics.json. Single process only."""
    from safetensors.torch import save_file

    from loralab.baselines import METHODS, count_trainable
    from loralab.errors import LoraLabError
    from loralab.models import load_tokenizer
    from loralab.training import loop
    from loralab.training.batching import PadCollator, pad_token_id_for
    from loralab.training.checkpoint import atomic_write_text
    from loralab.training.data import LabelMap, encode_examples

    if method not in METHODS:
        raise LoraLabError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    started = time.perf_counter()
    output_dir = Path(output_dir)
    threads = loop.set_threads(config.threads)
    output_dir.mkdir(parents=True, exist_ok=True)
    config.save(output_dir / "config.json")
    atomic_write_text(output_dir / "method.json", json.dumps({"method": method, "options": options}) + "\n")
    splits = loop.load_splits(config)
    tokenizer = load_tokenizer(config.model)
    task = loop.task_of(config)
    if task.kind == "causal-lm":
        raise LoraLabError("the baseline runner covers classification tasks only")
    label_map = LabelMap.from_examples(splits["train"], regression=task.kind == "regression")
    encoded = {name: encode_examples(examples, tokenizer, task, label_map) for name, examples in splits.items()}
    loop.seed_everything(config.seed)
    model = loop.load_model_for(config.model, task.kind, label_map, tokenizer)
    options = dict(options)
    if method == "lora":
        options.setdefault("r", config.lora.get("r", 8))
    METHODS[method](model, **options)
    print(f"{method}: {count_trainable(model):,} trainable values; {threads} thread(s)", flush=True)
    collator = PadCollator(pad_token_id_for(tokenizer))
    adapter_dir = output_dir / "adapter"

    def save_best(trained) -> None:
        from loralab.analysis.report import atomic_write

        adapter_dir.mkdir(parents=True, exist_ok=True)
        tensors = {n: p.detach().cpu().contiguous() for n, p in trained.named_parameters() if p.requires_grad}
        scratch = adapter_dir / f".{TRAINABLE_FILE}.{os.getpid()}.tmp"
        save_file(tensors, str(scratch))
        os.replace(scratch, adapter_dir / TRAINABLE_FILE)
        label_map.save(adapter_dir / "labels.json")
        atomic_write(adapter_dir / "method.json", json.dumps({"method": method, "options": options}) + "\n")

    trainer = loop.Trainer(model, config, encoded["train"], encoded.get("dev"), collator, output_dir, label_map,
                           on_best=save_best, log=lambda message: print(message, flush=True))
    # The trainer's checkpoints store a LoRA adapter (save_adapter), which these methods do not have, so
    # this runner writes none: an interrupted baseline run starts again from step 0 (runs take minutes).
    trainer._save_checkpoint = lambda: None
    state = trainer.fit(resume=False)
    trainer.load_best()
    result: dict[str, Any] = {"best_step": state["best_step"], "steps": state["step"],
                              "best_metric": config.best_metric, "method": method, "method_options": options}
    for split in ("dev", "test"):
        if split in encoded:
            result[split] = loop.evaluate(model, encoded[split], task.kind, collator, config.eval_batch_size,
                                          label_map).metrics
    result.update(train_examples=len(encoded["train"]), examples_seen=state["examples"],
                  train_seconds=round(state["train_seconds"], 2), wall_seconds=round(time.perf_counter() - started, 2),
                  world_size=1, threads_per_process=threads, history=state["history"])
    loop._write_metrics(output_dir, result)
    return result
