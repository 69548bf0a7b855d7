"""loralab.cli.names: the device and precision choices --help lists without torch agree with the registries."""
import pytest

from loralab.cli import names
from loralab.cli.main import parse_args
from loralab.precision import DTYPE_SETTINGS
from loralab.quantization import QUANTIZE_CHOICES, SCHEMES


def test_the_torch_free_lists_are_the_registries():
    assert names.DTYPE_NAMES == tuple(DTYPE_SETTINGS)
    assert names.QUANTIZE_NAMES == tuple(QUANTIZE_CHOICES)
    assert tuple(names.QUANTIZE_CHOICES) == names.QUANTIZE_NAMES       # what --help and usage show


def test_a_given_value_is_checked_against_the_registry(capsys):
    assert parse_args(["eval", "--adapter", "a", "--quantize", "nf4"]).quantize == "nf4"
    with SCHEMES.scoped():
        SCHEMES.add("toy8", type("Toy8Scheme", (), {"offered": True}))
        assert "toy8" in names.QUANTIZE_CHOICES                # a scheme registered later is accepted
    assert "toy8" not in names.QUANTIZE_CHOICES
    with pytest.raises(SystemExit) as exit_:
        parse_args(["eval", "--adapter", "a", "--dtype", "fp64"])
    assert exit_.value.code == 2
    assert "argument --dtype: invalid choice: 'fp64' (choose from 'fp32', 'bf16', 'fp16', 'auto')" in capsys.readouterr().err
