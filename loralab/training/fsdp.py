"""Sharded data parallelism for models whose frozen base does not fit one process: FSDP2
(`torch.distributed.fsdp.fully_shard`) under torchrun, with `TrainConfig(fsdp=True)` / `--fsdp`.

    torchrun --nproc_per_node=4 -m loralab train --model big-model --fsdp --dtype bf16 ...

What is sharded and what is not (the choice, and why): FSDP2 shards the FROZEN base, one shard group per
transformer block (the model's `_no_split_modules` classes, e.g. LlamaDecoderLayer) plus the rest at the root:
each of N processes keeps 1/N of the frozen weights and all-gathers a block's weights just for its forward and
backward. The trainable tensors (LoRA factors, trained heads and biases) are left out of the shards
(`ignored_params`): they are well under 1 % of the parameters, every rank keeps a full copy, and their
gradients are averaged with one all-reduce per optimizer step (`sync_gradients`), as DDP would. So the
adapter, the optimizer state and every checkpoint are the same plain full tensors as in a one-process run,
written by rank 0 alone, and a sharded run resumes in one process and the reverse.

Every forward of a sharded model is a collective: all ranks must run the same number of them, which
`loralab.training.evaluation.evaluate` keeps by padding the ranks with fewer batches. FSDP1
(`FullyShardedDataParallel`) refuses to run without an accelerator; FSDP2 runs on CPUs with gloo, which is
how the tests check it (two processes, a tiny model, same losses as one process).
"""
from __future__ import annotations

import torch
from torch import nn

from loralab.errors import LoraLabError


def shard_frozen_base(model: nn.Module, info) -> nn.Module:
    """Shard `model`'s frozen parameters over the processes of `info` (a DistInfo), in place; the trainable
    ones stay full and local. Returns the model (its class becomes FSDP's subclass of it)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    blocks = _blocks(model)
    mesh = init_device_mesh(info.device.type, (info.world_size,))
    trainable = {p for p in model.parameters() if p.requires_grad}
    for block in blocks:
        fully_shard(block, mesh=mesh, ignored_params=trainable)
    fully_shard(model, mesh=mesh, ignored_params=trainable)
    return model


def describe(model: nn.Module, info) -> str:
    """One line for the run log: what is sharded over how many processes, and what stays replicated."""
    frozen = [p for p in model.parameters() if not p.requires_grad]
    local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in frozen)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return (f"FSDP ({info.backend}, {info.world_size} processes) shards {sum(p.numel() for p in frozen):,} frozen "
            f"parameters ({local:,} held here); the {trainable:,} trainable ones stay replicated, gradients "
            "all-reduced")


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The modules to shard one by one: transformers' `_no_split_modules` classes (its own notion of a block)."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:
        raise LoraLabError(f"fsdp: {type(model).__name__} names no transformer blocks to shard (transformers' "
                           "_no_split_modules); train it with DDP (drop --fsdp)")
    return blocks


def sync_gradients(params: list[nn.Parameter], info) -> None:
    """Average the trainable parameters' gradients over the processes (one all-reduce of one flat buffer); a
    parameter without a gradient counts as zeros, so every rank sends the same layout."""
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= info.world_size
    offset = 0
    for param, grad in zip(params, grads):
        param.grad = flat[offset:offset + grad.numel()].view(grad.shape).to(grad.dtype, copy=True)
        offset += grad.numel()
