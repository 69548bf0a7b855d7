"""Serve a base model and many LoRA adapters over HTTP: OpenAI-compatible completions, classification, hot loading.

    loralab serve --model smollm2-135m-instruct --adapter e2e=runs/e2e/adapter --port 8000
    loralab serve --adapter sst2=runs/sst2/adapter --adapter mrpc=runs/mrpc/adapter     # a classifier server
    loralab serve --model smollm2-135m-instruct --adapter-root /srv/adapters --api-key "$KEY"

A request's "model" is the base model's name or an adapter's name; requests for different adapters are
decoded together in mixed-adapter batches. Endpoints, limits and examples: docs/serving.md.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import MutableMapping
from pathlib import Path

# vLLM's names for serve's flags where they mean the same (--lora-modules is --adapter, added with it); every
# loaded adapter can share a batch, so vLLM's --max-loras (adapters in one batch) is --max-adapters.
VLLM_SPELLINGS = {"max-adapters": ("--max-loras",)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from loralab.cli.runtime_args import add_runtime_arguments
    from loralab.data.tasks import TASK_NAMES
    from loralab.serving.settings import API_KEY_ENV, ServeSettings

    d = ServeSettings.__dataclass_fields__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n", 2)[2]
    what = parser.add_argument_group("what to serve")
    what.add_argument("--model", help="base model: builtin name, folder or .gguf (default: the first adapter's base)")
    what.add_argument("--adapter", action="append", default=[], metavar="NAME=PATH",
                      help="an adapter folder to load at start; repeat for several")
    what.add_argument("--lora-modules", dest="adapter", action="extend", nargs="+", metavar="NAME=PATH",
                      help="vLLM's spelling of --adapter: several NAME=PATH at once")
    what.add_argument("--task", choices=TASK_NAMES, help="default: the first adapter's task, else causal-lm")
    what.add_argument("--served-model-name", help="the base model's name in requests (default: the --model spec)")
    where = parser.add_argument_group("where and who")
    where.add_argument("--host", default=d["host"].default, help="address to listen on (default: %(default)s)")
    where.add_argument("--port", type=int, default=d["port"].default)
    where.add_argument("--api-key", help=f"required as 'Authorization: Bearer KEY' on /v1/* (default: ${API_KEY_ENV}; "
                       "an empty key is refused)")
    where.add_argument("--adapter-root", type=Path,
                       help="folder of adapter folders: a request's model may name one by its relative path (loaded on "
                       "first use), /v1/load_lora_adapter loads from under it (default: both off)")
    limits = parser.add_argument_group("limits")
    for flag, help_text in (("max-adapters", "adapters resident at once; least recently used ones are evicted"), ("max-lora-rank", "largest adapter rank"),
                            ("max-batch-size", "rows decoded or classified together"),
                            ("max-queue", "requests waiting for a row before 429"),
                            ("max-body-bytes", "request body size"), ("max-tokens", "tokens one choice may ask for"),
                            ("default-max-tokens", "completions without max_tokens"),
                            ("max-n", "choices per request"), ("max-inputs", "texts per /v1/classify request")):
        name = flag.replace("-", "_")
        limits.add_argument(f"--{flag}", *VLLM_SPELLINGS.get(flag, ()), type=int, default=d[name].default,
                            help=f"{help_text} (default: %(default)s)")
    limits.add_argument("--max-prompt-tokens", type=int, help="prompt tokens (default: the model's context)")
    limits.add_argument("--adapter-memory", type=int, metavar="BYTES",
                        help="bytes of resident adapter tensors (fp32) before evicting (default: no limit)")
    limits.add_argument("--max-cold-loads-per-second", type=float, default=d["max_cold_loads_per_second"].default,
                        help="adapters loaded from --adapter-root on first use per second, then 429 "
                             "(default: %(default)s)")
    limits.add_argument("--unload-timeout", type=float, default=d["unload_timeout"].default,
                        help="seconds an unload waits for the adapter's running requests (default: %(default)s)")
    add_runtime_arguments(parser)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice; on --ray, 1 per replica)")
    parser.add_argument("--no-packed-linears", dest="packed_linears", action="store_false",
                        help="decode with torch's default linear kernel instead of oneDNN's packed weights (which "
                             "are faster on a CPU and hold a second copy of the base's linear weights)")
    parser.add_argument("--no-ragged-steps", dest="ragged_steps", action="store_false",
                        help="prefill joining requests in a forward of their own instead of in the running rows' "
                             "(ragged steps are on for the LLaMA family and Qwen2; docs/serving.md)")
    scale = parser.add_argument_group("scaling out on Ray Serve (pip install 'loralab[ray]'; docs/serving.md)")
    scale.add_argument("--ray", action="store_true",
                       help="serve as a Ray Serve application: --replicas copies of this server behind a router that "
                            "sends each request to a replica holding its adapter")
    scale.add_argument("--replicas", type=int, default=1, help="replicas with --ray (default: %(default)s)")
    scale.add_argument("--ray-address", help="an existing Ray cluster's address, e.g. auto or HEAD:6379 (default: start "
                       "a local one)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def settings_from_args(args: argparse.Namespace):
    from loralab.cli.runtime_args import runtime_fields
    from loralab.runtime.load import parse_adapter_specs
    from loralab.serving.settings import ServeSettings

    limits = {name: getattr(args, name) for name in (
        "max_adapters", "max_lora_rank", "max_batch_size", "max_queue", "max_body_bytes", "max_tokens",
        "default_max_tokens", "max_n", "max_inputs", "max_prompt_tokens", "unload_timeout", "adapter_memory",
        "max_cold_loads_per_second")}
    return ServeSettings(model=args.model, adapters=parse_adapter_specs(args.adapter), task=args.task,
                         served_name=args.served_model_name, host=args.host, port=args.port, api_key=args.api_key,
                         adapter_root=args.adapter_root, threads=args.threads, packed_linears=args.packed_linears,
                         ragged_steps=args.ragged_steps,
                         **runtime_fields(args), **limits)


def passive_openmp(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Set OMP_WAIT_POLICY=PASSIVE unless a policy is set already; True when it set it. OpenMP's idle worker
    threads then sleep at once instead of spinning: with torch's default (as many threads as cores) and any
    other process on the machine, spinning threads wait for a descheduled partner and decoding collapses
    (benchmarks/threads.py; docs/serving.md, "Threads on a shared machine"). OpenMP reads the variable
    when torch loads it, so this runs before anything imports torch."""
    if environ.get("OMP_WAIT_POLICY"):
        return False
    environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


def run(args: argparse.Namespace) -> int:
    if "torch" not in sys.modules:      # `loralab serve` imported nothing heavy yet (main.py: lazy commands)
        passive_openmp()
    import transformers

    from loralab.errors import LoraLabError
    from loralab.serving.server import serve

    transformers.logging.set_verbosity_error()
    if not args.ray:
        if args.replicas != 1 or args.ray_address:
            raise LoraLabError("--replicas and --ray-address need --ray")
        return serve(settings_from_args(args), log_level=args.log_level)
    try:
        from loralab.serving import ray_serve
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] != "ray":
            raise
        raise LoraLabError("--ray needs Ray Serve, which is not installed; pip install 'loralab[ray]' (or "
                           "'ray[serve]')") from None
    settings = settings_from_args(args)
    if args.replicas < 1:
        raise LoraLabError(f"--replicas must be a positive integer, got {args.replicas}")
    return ray_serve.run(settings, args.replicas, args.ray_address)
