"""Data-parallel training on torch.distributed, set up from the environment torchrun writes.

    torchrun --nproc_per_node=2 -m loralab train ...         # one machine, two processes
    dist = setup()                                           # reads RANK, WORLD_SIZE, LOCAL_RANK
    model = wrap(model, dist)                                # DDP after LoRA injection

Device and backend: `setup(device)` resolves the run's device (loralab.precision.resolve_device); under
torchrun a CUDA device means each process takes its local rank's GPU and NCCL, anything else gloo (two CPU
processes on one machine, the tests' setting). DDP is wrapped *after* `loralab.inject`, so it sees
the frozen base weights as requires_grad=False and neither registers hooks for them nor all-reduces
them: only the LoRA factors (and modules_to_save copies) are synchronised. `synchronised_parameters`
lists what DDP will reduce, which tests compare with the trainable set.
Only rank 0 writes files and prints; every rank holds the same trained weights after each step.
With `fsdp=True` the frozen base is sharded instead of copied (loralab.training.fsdp) and the same holds.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field

import torch
from torch import nn

from loralab.errors import LoraLabError
from loralab.precision import resolve_device
from loralab.training.fsdp import shard_frozen_base


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: rank among world_size processes, local_rank on its machine, the device its
    model lives on, and whether the frozen base is sharded across the processes (FSDP) or copied (DDP)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    sharded: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    """WORLD_SIZE from the environment (torchrun sets it), 1 when absent."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise LoraLabError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from None


def setup(backend: str | None = None, timeout_s: float = 1800.0, device: str = "auto",
          fsdp: bool = False) -> DistInfo:
    """Join the process group described by the torchrun environment; a single process when WORLD_SIZE is
    unset or 1. device: the run's device spec (loralab.precision); under torchrun "auto"/"cuda" mean the local
    rank's GPU (NCCL) when there are GPUs, else the CPU (gloo). backend None picks by the device.
    fsdp: shard the frozen base (needs several processes)."""
    world_size = env_world_size()
    if world_size <= 1:
        if fsdp:
            raise LoraLabError("fsdp shards the model across processes; launch with torchrun --nproc_per_node=N "
                               "(N > 1), or drop fsdp")
        return DistInfo(device=resolve_device(device))
    import torch.distributed as dist

    missing = [k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise LoraLabError(f"WORLD_SIZE={world_size} but {', '.join(missing)} is not set; launch with torchrun")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    resolved = _rank_device(device, local_rank)
    backend = backend or ("nccl" if resolved.type == "cuda" else "gloo")
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistInfo(rank, world_size, local_rank, backend, resolved, fsdp)


def _rank_device(spec: str, local_rank: int) -> torch.device:
    """A torchrun process's device: its local rank's GPU for a CUDA spec, else the spec's device."""
    if spec.startswith("cuda:"):
        raise LoraLabError(f"--device {spec}: under torchrun each process takes its local rank's GPU; give --device "
                           "cuda (and CUDA_VISIBLE_DEVICES to choose the GPUs)")
    resolved = resolve_device(spec)
    if resolved.type != "cuda":
        return resolved
    if local_rank >= torch.cuda.device_count():
        raise LoraLabError(f"local rank {local_rank} has no GPU (there are {torch.cuda.device_count()}); start at "
                           "most that many processes per machine (--nproc_per_node)")
    return torch.device("cuda", local_rank)


def cleanup(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def wrap(model: nn.Module, info: DistInfo) -> nn.Module:
    """DDP around an injected model, or its frozen base sharded in place (FSDP, `info.sharded`); unchanged when
    not distributed. Call after `loralab.inject`."""
    if not info.enabled:
        return model
    if not any(p.requires_grad for p in model.parameters()):
        raise LoraLabError("no trainable parameters to synchronise; inject an adapter before wrapping")
    if info.sharded:
        return shard_frozen_base(model, info)
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [info.local_rank] if info.device.type == "cuda" else None
    # broadcast_buffers=False: the models here have no running statistics that training changes.
    return DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (or the model itself)."""
    return getattr(model, "module", model)


def synchronised_parameters(ddp_model: nn.Module) -> list[str]:
    """Names of the parameters DDP's reducer all-reduces, read from the DDP object itself (the list it
    builds its gradient buckets from), so a test can check that frozen weights are not among them."""
    inner = unwrap(ddp_model)
    names = {id(p): n for n, p in inner.named_parameters()}
    build = getattr(ddp_model, "_build_params_for_reducer", None)
    if build is None:  # not DDP: nothing is synchronised
        return []
    params, _ = build()
    return [names[id(p)] for p in params]


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a tensor over ranks (returned unchanged for one process)."""
    if not info.enabled:
        return values
    import torch.distributed as dist

    values = values.to(info.device)
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values.cpu()


def all_gather_objects(obj, info: DistInfo) -> list:
    """Every rank's `obj`, in rank order (a one-element list for one process)."""
    if not info.enabled:
        return [obj]
    import torch.distributed as dist

    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()


def broadcast_object(obj, info: DistInfo, src: int = 0):
    """Rank src's `obj` on every rank."""
    if not info.enabled:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
