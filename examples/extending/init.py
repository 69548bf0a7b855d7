"""Recipe: an init — how A and B start. Copy this file, rename the class and `name`, change `init`.

The toy starts A with orthonormal rows (QR of a Gaussian) and B at zero, so training starts at the base model
as the paper's init does (h = W0·x at step 0), but A's rows are exactly orthogonal.
Run: python examples/extending/init.py
"""
import torch
from torch import nn

from loralab import LoraConfig, inject, lora_layers
from loralab.core.inits import INITS, Init, register_init


class OrthogonalA(Init):
    name = "orthogonal-a"           # LoraConfig(init="orthogonal-a")

    def init(self, layer, f) -> None:
        with torch.no_grad():
            q, _ = torch.linalg.qr(torch.randn(f.A.shape[1], f.A.shape[0]))    # (k, r), orthonormal columns
            f.A.copy_(q.T)                                                      # A (r, k): orthonormal rows
            f.B.zero_()


def demo() -> tuple[float, float]:
    """Registers the init for the demo only; returns (max |A·Aᵀ - I|, max |adapted - base| at step 0)."""
    with INITS.scoped():
        register_init(OrthogonalA)
        base = nn.Sequential(nn.Linear(16, 12))
        x = torch.randn(5, 16)
        expected = base(x)
        inject(base, LoraConfig(targets=["0"], r=4, init="orthogonal-a"))
        A = next(lora_layers(base))[1].lora_adapters["default"].A
        orthogonality = (A @ A.T - torch.eye(4)).abs().max().item()
        return orthogonality, (base(x) - expected).abs().max().item()


if __name__ == "__main__":
    print("max |A·Aᵀ - I| = {:.2e}, max |adapted - base| = {:.2e}".format(*demo()))
