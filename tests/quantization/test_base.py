"""The scheme registry: duplicate names refused, and a scheme registered from this file (scoped) appears in
every place a scheme is chosen or counted: `--quantize` (train, budget), TrainConfig, `quantize`, the
budget's memory, and the bitsandbytes export; gone again after the scope."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
import torch

from loralab.budget.memory_estimate import TrainingSetup
from loralab.budget.report import estimate_budget, quantized_frozen
from loralab.budget.shapes import find_shape
from loralab.cli.main import main, parse_args
from loralab.errors import LoraLabError
from loralab.quantization import QUANTIZE_CHOICES, SCHEMES, QuantScheme, quantize, register_scheme
from loralab.quantization.base import DequantizingLinear
from loralab.quantization.export import bitsandbytes_config, exportable
from loralab.testing import tiny_model
from loralab.training.config import TrainConfig


@dataclass(frozen=True)
class ToyScheme(QuantScheme):
    """fp16 storage with a 7-byte header per weight (so its bytes are recognisable)."""
    name: ClassVar[str] = "toy"

    def quantize_weight(self, weight: torch.Tensor, bias: torch.Tensor | None) -> "ToyLinear":
        return ToyLinear(weight.detach().to(torch.float16).clone(), bias, self)

    def weight_bytes(self, d_out: int, d_in: int) -> int:
        return 2 * d_out * d_in + 7

    def bitsandbytes_options(self) -> dict[str, Any]:
        return {"load_in_8bit": True}


class ToyLinear(DequantizingLinear):
    def __init__(self, weight16: torch.Tensor, bias: torch.Tensor | None, scheme: ToyScheme):
        super().__init__(weight16.shape[1], weight16.shape[0], bias, scheme)
        self.register_buffer("weight16", weight16)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.weight16.to(dtype)

    def storage_bytes(self) -> int:
        return self.weight16.nbytes + 7


def test_the_builtin_choices_and_duplicates():
    assert tuple(QUANTIZE_CHOICES) == ("none", "int8", "nf4")          # bf16 is `--dtype bf16`
    assert list(SCHEMES) == ["bf16", "int8", "nf4"]
    with pytest.raises(ValueError, match="quantization scheme 'nf4' is already registered; remove"):
        register_scheme(type("Another", (ToyScheme,), {"name": "nf4"}))
    assert SCHEMES["nf4"].__name__ == "NF4Scheme"
    assert exportable() == ("int8", "nf4")


def test_a_scheme_registered_from_a_test_file(capsys):
    shape = find_shape("gpt2-small")
    with SCHEMES.scoped():
        register_scheme(ToyScheme)
        with pytest.raises(ValueError, match="quantization scheme 'toy' is already registered"):
            register_scheme(ToyScheme)
        # the choices: train's and budget's --quantize, TrainConfig
        assert tuple(QUANTIZE_CHOICES) == ("none", "int8", "nf4", "toy")
        assert parse_args(["train", "--quantize", "toy"]).quantize == "toy"
        assert TrainConfig(data="sst2", quantize="toy").quantize == "toy"
        # quantize a model with it
        model = quantize(tiny_model("bert"), "toy")
        assert isinstance(model.bert.encoder.layer[0].attention.self.query, ToyLinear)
        # the budget counts it with its own formula
        assert main(["budget", "--shape", "gpt2-small", "--quantize", "toy", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["training"]["quantize"] == "toy"
        budget = estimate_budget(shape, setup=TrainingSetup(quantize="toy"))
        values, size = quantized_frozen(budget.skeleton.model, TrainingSetup(quantize="toy"))
        assert values == 12 * (4 * 768 * 768 + 2 * 768 * 3072) and size == 2 * values + 7 * 12 * 4   # c_attn, attn.c_proj, c_fc, mlp.c_proj
        with pytest.raises(LoraLabError, match="double quantization applies to nf4 only"):
            TrainingSetup(quantize="toy", double_quant=True)
        # the export
        assert exportable() == ("int8", "nf4", "toy")
        pytest.importorskip("bitsandbytes")
        assert bitsandbytes_config("toy").load_in_8bit
    assert "toy" not in SCHEMES and tuple(QUANTIZE_CHOICES) == ("none", "int8", "nf4")
    with pytest.raises(SystemExit):
        parse_args(["budget", "--shape", "gpt2-small", "--quantize", "toy"])
    assert "argument --quantize: invalid choice: 'toy'" in capsys.readouterr().err
    with pytest.raises(LoraLabError, match="unknown quantization scheme 'toy'; choose one of bf16, int8, nf4"):
        quantize(tiny_model("bert"), "toy")


def test_export_refuses_a_scheme_without_a_bitsandbytes_form():
    pytest.importorskip("bitsandbytes")
    with pytest.raises(LoraLabError, match="cannot save a 'bf16' model in bitsandbytes' format; use one of int8, nf4"):
        bitsandbytes_config("bf16")
    assert bitsandbytes_config("nf4").bnb_4bit_quant_type == "nf4"
    assert not bitsandbytes_config("nf4").bnb_4bit_use_double_quant
