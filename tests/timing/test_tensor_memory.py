"""TensorMemory counts exactly the storages created inside it while they live."""
import torch

from loralab.timing.tensor_memory import TensorMemory


def test_counts_created_storages_while_they_live():
    weight = torch.randn(256, 256)                       # existed before: not counted
    with TensorMemory() as memory:
        a = torch.ones(1000)                             # 4,000 bytes
        b = a.view(10, 100)                              # a view: same storage, counted once
        c = torch.zeros(500, dtype=torch.float64)        # 4,000 bytes: peak 8,000
        del a, b, c
        d = weight @ weight                              # 262,144 bytes, after the others were freed
    assert memory.peak_bytes == 256 * 256 * 4
    assert memory.current_bytes == 256 * 256 * 4 and d.shape == (256, 256)


def test_peak_keeps_the_maximum():
    with TensorMemory() as memory:
        big = torch.empty(10_000)
        del big
        torch.empty(10)
    assert memory.peak_bytes == 40_000
