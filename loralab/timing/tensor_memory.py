"""Peak tensor memory of a block of code, on any device (CPU included, where torch keeps no allocator
statistics): what activations, gradients and temporaries cost, e.g. with and without gradient checkpointing.

    with TensorMemory() as memory:
        model(**batch).loss.backward()
    memory.peak_bytes              # the most bytes of tensor storage alive at once inside the block

Counted: every storage an operator creates inside the block, from its creation until it is freed (storages
that existed before, such as the weights, are not counted). Views share their storage and count once. The
count is exact for what torch's dispatcher sees; memory a kernel allocates internally (oneDNN scratch
space, a CUDA workspace) is not counted.
"""
from __future__ import annotations

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class TensorMemory(TorchDispatchMode):
    """A dispatch mode tracking the bytes of the storages created inside it: `current_bytes` and `peak_bytes`."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current_bytes = 0
        self.peak_bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self._drop_freed()
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
                storage = tensor.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self.live:
                    self.live[key] = (StorageWeakRef(storage), storage.nbytes())
                    self.current_bytes += storage.nbytes()
        self.peak_bytes = max(self.peak_bytes, self.current_bytes)
        return out

    def _drop_freed(self) -> None:
        for key, (ref, nbytes) in list(self.live.items()):
            if ref.expired():
                del self.live[key]
                self.current_bytes -= nbytes
