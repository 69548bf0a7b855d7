"""In-process comparison of mixed-adapter batches: 32 rows over 8 adapters, loralab vs PEFT.

Two workloads, each timed with every variant alternating round after round (benchmarks.suites.alternate):
  * SmolLM2-135M-Instruct decoding steps: 32 rows hold a KV cache of a `prompt`-token prompt and each
    step feeds one new token per row (B, 1); the cache is cropped back after every step, so every call
    does the same work. LoRA on the architecture's default targets (q_proj, v_proj).
  * all-MiniLM-L6-v2 classification forward: 32 rows × `seq` tokens, LoRA on query/value, and each
    adapter its own trained classifier head (modules_to_save), so heads are per row too.

Variants (the same 8 adapters, r=8, alpha=16, random non-zero B, fp32, torch.inference_mode, sdpa
attention, the same threads):
  loralab mixed (auto / grouped / masked / gathered)   `loralab.per_row_adapters(model, names)`, rows
                                               cycling a0..a7 (strategies: loralab.core.rows)
  loralab one adapter                          the same batch, adapter a0 active (set_adapter, unmerged)
  loralab switching                            per adapter: set_adapter, then its 4-row sub-batch alone
  PEFT mixed                                   `model(..., adapter_names=names)` on PEFT's own model, loaded
                                               from the same PEFT-layout folders loralab saved
  PEFT one adapter                             PEFT, adapter a0 active
  base                                         no adapter (loralab.disabled)
Before timing, the mixed outputs of loralab and PEFT are compared (same adapters, same numbers).
"""
from __future__ import annotations

import contextlib
import inspect
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from benchmarks.suites import alternate, median_ms

import loralab


@dataclass(frozen=True)
class MixedConfig:
    """One workload: the model ("smollm2" decode steps or "minilm" classification forward) and its sizes."""
    model: str
    rows: int = 32
    adapters: int = 8
    r: int = 8
    alpha: float = 16.0
    seq: int = 64            # minilm: tokens per row
    prompt: int = 32         # smollm2: cached prompt tokens per row
    rounds: int = 20
    seed: int = 0

    def names(self) -> list[str]:
        return [f"a{i % self.adapters}" for i in range(self.rows)]


def load_base(config: MixedConfig) -> nn.Module:
    from transformers.utils import logging

    from loralab.models import load_model

    logging.set_verbosity_error()
    if config.model == "smollm2":
        return load_model("smollm2-135m-instruct").eval()
    torch.manual_seed(config.seed)
    return load_model("all-minilm-l6-v2", task="sequence-classification", num_labels=2).eval()


def with_adapters(model: nn.Module, config: MixedConfig) -> nn.Module:
    """`config.adapters` adapters a0, a1, ... with random non-zero factors (and heads for MiniLM)."""
    head = ["classifier"] if config.model == "minilm" else []
    for i in range(config.adapters):
        lora = loralab.LoraConfig(r=config.r, alpha=config.alpha, modules_to_save=head)
        loralab.inject(model, lora, adapter=f"a{i}")
        generator = torch.Generator().manual_seed(config.seed + 100 + i)
        with torch.no_grad():
            for _, layer in loralab.lora_layers(model):
                if f"a{i}" in layer.lora_adapters:
                    f = layer.lora_adapters[f"a{i}"]
                    f.A.normal_(0, 0.05, generator=generator)
                    f.B.normal_(0, 0.05, generator=generator)
            for name, param in model.named_parameters():
                if f"trainable_copies.a{i}." in name:
                    param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    return model.eval()


def peft_twin(config: MixedConfig, model: nn.Module, folder: Path) -> nn.Module:
    """PEFT's model with the same adapters, loaded from the PEFT-layout folders loralab writes."""
    from peft import PeftModel

    for i in range(config.adapters):
        loralab.save_adapter(model, folder / f"a{i}", adapter=f"a{i}")
    twin = PeftModel.from_pretrained(load_base(config), folder / "a0", adapter_name="a0")
    for i in range(1, config.adapters):
        twin.load_adapter(folder / f"a{i}", adapter_name=f"a{i}")
    return twin.eval()


# ------------------------------------------------------------------------------------------------
# The two workloads as callables
# ------------------------------------------------------------------------------------------------
def prompt_ids(config: MixedConfig, vocab: int, rows: int | None = None) -> torch.Tensor:
    generator = torch.Generator().manual_seed(config.seed + 1)
    length = config.prompt if config.model == "smollm2" else config.seq
    return torch.randint(3, vocab, (rows or config.rows, length), generator=generator)


def decode_step(model: nn.Module, ids: torch.Tensor, context: Callable[[], contextlib.AbstractContextManager],
                **extra) -> Callable[[], torch.Tensor]:
    """A callable running one (B, 1) decoding step on a prefilled KV cache, cropped back after the step."""
    from transformers import DynamicCache

    cache = DynamicCache()
    accepted = inspect.signature(getattr(model, "get_base_model", lambda: model)().forward).parameters
    cache_arg = {"cache" if "cache" in accepted else "past_key_values": cache}      # transformers 5 renamed it
    with torch.inference_mode(), context():
        out = model(input_ids=ids, use_cache=True, **cache_arg, **extra)
    step_ids = out.logits[:, -1].argmax(-1, keepdim=True)

    def run() -> torch.Tensor:
        with torch.inference_mode(), context():
            logits = model(input_ids=step_ids, use_cache=True, **cache_arg, **extra).logits
        cache.crop(-1)                       # drop the step's token: every call does the same work
        return logits[:, -1]
    return run


def classify(model: nn.Module, ids: torch.Tensor, context: Callable[[], contextlib.AbstractContextManager],
             **extra) -> Callable[[], torch.Tensor]:
    mask = torch.ones_like(ids)

    def run() -> torch.Tensor:
        with torch.inference_mode(), context():
            return model(input_ids=ids, attention_mask=mask, **extra).logits
    return run


def runners(config: MixedConfig, model: nn.Module, twin: nn.Module | None) -> dict[str, Callable[[], torch.Tensor]]:
    """Every variant as a callable returning the batch's logits (B, V) or (B, labels), rows in order."""
    make = decode_step if config.model == "smollm2" else classify
    names = config.names()
    ids = prompt_ids(config, model.config.vocab_size)
    none = contextlib.nullcontext
    out = {f"loralab mixed ({s or 'auto'})": make(model, ids, lambda s=s: loralab.per_row_adapters(model, names, s))
           for s in (None, "grouped", "masked", "gathered")}
    loralab.set_adapter(model, "a0")          # the switching run ends on a0 again
    out["loralab one adapter"] = make(model, ids, none)
    out["loralab switching"] = _switching(config, model, ids, make)
    out["base"] = make(model, ids, lambda: loralab.disabled(model))
    if twin is not None:
        out["PEFT mixed"] = make(twin, ids, none, adapter_names=names)
        twin.set_adapter("a0")
        out["PEFT one adapter"] = make(twin, ids, none)
    return out


def _switching(config: MixedConfig, model: nn.Module, ids: torch.Tensor, make) -> Callable[[], torch.Tensor]:
    """One sub-batch per adapter, each run alone after set_adapter; the rows put back in batch order."""
    names = config.names()
    groups = {n: [i for i, m in enumerate(names) if m == n] for n in dict.fromkeys(names)}
    parts = {}
    for name, rows in groups.items():
        loralab.set_adapter(model, name)
        parts[name] = make(model, ids[rows], contextlib.nullcontext)
    order = torch.argsort(torch.tensor([i for rows in groups.values() for i in rows]))

    def run() -> torch.Tensor:
        outs = []
        for name, part in parts.items():
            loralab.set_adapter(model, name)
            outs.append(part())
        loralab.set_adapter(model, names[0])
        return torch.cat(outs)[order]
    return run


def measure(config: MixedConfig, with_peft: bool = True, log=print) -> dict:
    """Median ms per call of every variant, the checks of equal outputs, and rows/s."""
    model = with_adapters(load_base(config), config)
    with tempfile.TemporaryDirectory() as tmp:
        twin = peft_twin(config, model, Path(tmp)) if with_peft else None
    runs = runners(config, model, twin)
    reference = runs["loralab switching"]()
    checks = {name: float((run() - reference).abs().max()) for name, run in runs.items()
              if "mixed" in name}
    checks["one adapter (must differ)"] = float((runs["loralab one adapter"]() - reference).abs().max())
    log(f"{config.model}: max |logit difference| to the per-adapter sub-batches: {checks}")
    times = alternate(runs, rounds=config.rounds, warmup=2)
    ms = {name: median_ms(t) for name, t in times.items()}
    spread = {name: 1000 * (statistics.quantiles(t, n=4)[2] - statistics.quantiles(t, n=4)[0])
              for name, t in times.items()} if config.rounds >= 4 else {}
    return {"config": config.__dict__, "ms": ms, "iqr_ms": spread, "max_abs_diff": checks,
            "rows_per_s": {name: config.rows / (v / 1000) for name, v in ms.items()}}
