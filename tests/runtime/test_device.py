"""Runtime: device, dtype and quantization resolved once, the choices read from the registries; the modules
that held loading before keep their names for one release."""
import pytest
import torch

from loralab.errors import LoraLabError
from loralab.quantization import QUANTIZE_CHOICES
from loralab.runtime import Runtime


def test_default_is_fp32_on_the_cpu_unquantized():
    runtime = Runtime()
    assert (runtime.device, runtime.dtype, runtime.quantize) == (torch.device("cpu"), "fp32", "none")


def test_resolve_reads_the_quantization_registry():
    assert Runtime.resolve("cpu", "fp32", "nf4").quantize == "nf4"
    with pytest.raises(LoraLabError) as caught:
        Runtime.resolve("cpu", "fp32", "int9")
    assert str(caught.value) == f"unknown quantization 'int9'; choose one of {', '.join(QUANTIZE_CHOICES)}"


def test_resolve_checks_the_dtype():
    with pytest.raises(LoraLabError, match="unknown dtype 'fp8'; use one of fp32, bf16, fp16"):
        Runtime.resolve("cpu", "fp8")


def test_old_homes_are_aliases():
    import loralab
    import loralab.cli.runtime_args
    import loralab.pretrained
    import loralab.runtime
    import loralab.serving.load
    import loralab.training.inputs
    import loralab.training.memory
    import loralab.training.run_folder

    assert loralab.from_pretrained is loralab.pretrained.from_pretrained is loralab.runtime.from_pretrained
    assert loralab.pretrained.resolve_base is loralab.runtime.resolve_base
    assert loralab.pretrained.adapter_task_and_labels is loralab.runtime.adapter_task_and_labels
    assert loralab.serving.load.read_task_info is loralab.training.run_folder.read_task_info \
        is loralab.runtime.read_task_info
    assert loralab.serving.load.parse_adapter_specs is loralab.runtime.parse_adapter_specs
    assert loralab.training.inputs.load_model_for is loralab.runtime.load_model_for
    assert loralab.training.memory.quantize_base is loralab.runtime.quantize_base
    assert loralab.cli.runtime_args.Runtime is Runtime


def test_serve_settings_resolve_through_runtime():
    from loralab.serving.settings import ServeSettings

    settings = ServeSettings(model="m", device="cpu", quantize="int8")
    assert settings.runtime() == Runtime.resolve("cpu", "fp32", "int8")
    with pytest.raises(LoraLabError, match="unknown quantization 'int9'; choose one of "):
        ServeSettings(model="m", device="cpu", quantize="int9")
