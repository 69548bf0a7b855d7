"""Choices of the device and precision flags, known without importing torch: `loralab <command> --help`
lists them from here, and a value given on the command line is checked against the registries themselves.

    parser.add_argument("--quantize", choices=QUANTIZE_CHOICES)    # --help: {none,int8,nf4}; a value: SCHEMES

tests/cli/test_names.py checks that each list equals what its registry holds.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

# loralab.precision.DTYPE_SETTINGS
DTYPE_NAMES = ("fp32", "bf16", "fp16", "auto")
# loralab.quantization.QUANTIZE_CHOICES: "none" and the offered schemes of the registry, in registration order
QUANTIZE_NAMES = ("none", "int8", "nf4")


class RegistryChoices(Sequence):
    """argparse `choices` that show `names` (help, usage, the invalid-choice message) and accept what the
    registry `live()` holds when a value is checked (the command runs then, so its imports are paid anyway)."""

    def __init__(self, names: tuple[str, ...], live: Callable[[], Iterable[str]]):
        self.names, self.live = names, live

    def __getitem__(self, index):
        return self.names[index]

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __contains__(self, value: object) -> bool:
        return value in tuple(self.live())


def _dtypes() -> Iterable[str]:
    from loralab.precision import DTYPE_SETTINGS

    return DTYPE_SETTINGS


def _schemes() -> Iterable[str]:
    from loralab.quantization import QUANTIZE_CHOICES

    return QUANTIZE_CHOICES


DTYPE_CHOICES = RegistryChoices(DTYPE_NAMES, _dtypes)
QUANTIZE_CHOICES = RegistryChoices(QUANTIZE_NAMES, _schemes)
