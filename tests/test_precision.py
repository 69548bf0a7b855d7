"""Devices and dtypes: names resolve or fail in one line, a dtype the device cannot run is refused, fp16 on a
CPU warns naming bf16, trainable tensors go fp32, autocast and the fp16 loss scaler switch with the dtype.
GPUs are mocked here (this machine has none); tests that need a real one are marked `gpu` and skipped."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import loralab
from loralab.errors import LoraLabError
from loralab.precision import (DTYPES, Precision, PrecisionWarning, check_dtype, dtype_name, dtype_of,
                               keep_trainable_fp32, resolve_device)
from loralab.testing import tiny_inputs, tiny_model

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _fake_gpus(monkeypatch, count: int = 2, bf16: bool = True) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla V100-SXM2-16GB")


def test_names_round_trip():
    for name, dtype in DTYPES.items():
        assert dtype_of(name) is dtype and dtype_name(dtype) == name and dtype_of(dtype) is dtype
    with pytest.raises(LoraLabError, match="unknown dtype 'fp8'; use one of fp32, bf16, fp16"):
        dtype_of("fp8")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_a_gpu_asked_for_where_none_exists_is_one_line():
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    for spec in ("cuda", "cuda:0", "CUDA:1"):
        with pytest.raises(LoraLabError, match=r"no CUDA GPU is visible to torch .*use --device cpu") as error:
            resolve_device(spec)
        assert "\n" not in str(error.value)
    with pytest.raises(LoraLabError, match="unknown device 'tpu'; use auto, cpu, cuda, cuda:N or mps"):
        resolve_device("tpu")
    with pytest.raises(LoraLabError, match="unknown device"):
        resolve_device("cuda:x")


def test_gpus_resolve_by_index(monkeypatch):
    _fake_gpus(monkeypatch, count=2)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(LoraLabError, match=r"only 2 CUDA device\(s\) \(cuda:0 to cuda:1\)"):
        resolve_device("cuda:2")


def test_mps_where_there_is_none(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(LoraLabError, match="no Apple GPU"):
        resolve_device("mps")


def test_a_dtype_the_device_cannot_run_is_refused(monkeypatch):
    _fake_gpus(monkeypatch, bf16=False)
    with pytest.raises(LoraLabError, match="V100.* has no bf16 .*use --dtype fp16"):
        check_dtype(torch.device("cuda", 0), torch.bfloat16)
    check_dtype(torch.device("cuda", 0), torch.float16)     # fine on that GPU


def test_fp16_on_a_cpu_runs_with_a_warning_naming_bf16():
    with pytest.warns(PrecisionWarning, match="fp16 on the CPU runs, but slowly.*use --dtype bf16"):
        Precision.resolve("cpu", "fp16")


def test_bf16_on_a_cpu_without_native_bf16_warns(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    with pytest.warns(PrecisionWarning, match="no native bf16.*emulated"):
        check_dtype(torch.device("cpu"), torch.bfloat16)


def test_autocast_and_scaler_follow_the_dtype():
    fp32, bf16 = Precision(torch.device("cpu")), Precision(torch.device("cpu"), torch.bfloat16)
    fp16 = Precision(torch.device("cpu"), torch.float16)
    layer = nn.Linear(4, 4)
    with fp32.autocast():
        assert layer(torch.randn(2, 4)).dtype == torch.float32
    with bf16.autocast():
        assert layer(torch.randn(2, 4)).dtype == torch.bfloat16
    assert not fp32.grad_scaler().is_enabled() and not bf16.grad_scaler().is_enabled()
    assert fp16.grad_scaler().is_enabled()


def test_prepare_keeps_every_trainable_tensor_fp32():
    model = tiny_model("bert").to(torch.bfloat16)
    loralab.inject(model, loralab.LoraConfig(r=4, modules_to_save=["classifier"], bias="all"))
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {p.dtype for p in trainable} == {torch.float32, torch.bfloat16}    # the head and biases are bf16 copies
    assert keep_trainable_fp32(model) > 0
    Precision(torch.device("cpu"), torch.bfloat16).prepare(model)
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    assert {p.dtype for p in model.parameters() if not p.requires_grad} == {torch.bfloat16}
    # Without autocast too (the trainer uses autocast): the fp32 head takes the bf16 hidden states and gives
    # bf16 logits back. (fp32 biases inside frozen bf16 layers, bias="all", need autocast.)
    model = tiny_model("bert").to(torch.bfloat16)
    loralab.inject(model, loralab.LoraConfig(r=4, modules_to_save=["classifier"]))
    Precision(torch.device("cpu"), torch.bfloat16).prepare(model)
    logits = model(**tiny_inputs(model)).logits
    logits.float().sum().backward()
    assert logits.dtype == torch.bfloat16
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters() if p.requires_grad)


def test_fp16_loss_scaling_skips_an_overflowing_step_on_cpu():
    layer = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    scaler = Precision(torch.device("cpu"), torch.float16).grad_scaler()
    before = layer.weight.detach().clone()
    scaler.scale(layer(torch.full((1, 4), 1e35)).sum()).backward()     # scaled by 2**16: inf gradients
    scaler.unscale_(optimizer)
    scaler.step(optimizer)
    scaler.update()
    assert torch.equal(layer.weight, before) and scaler.get_scale() < 65536.0


@pytest.mark.gpu
@needs_cuda
def test_bf16_lora_step_on_a_gpu_matches_the_cpu():
    torch.manual_seed(0)
    cpu = tiny_model("llama")
    loralab.inject(cpu, loralab.LoraConfig(r=4))
    gpu = tiny_model("llama")
    loralab.inject(gpu, loralab.LoraConfig(r=4))
    gpu.load_state_dict(cpu.state_dict())
    precision = Precision.resolve("cuda", "bf16")
    precision.prepare(gpu.to(torch.bfloat16))
    ids = torch.randint(0, 100, (2, 9))
    with precision.autocast():
        loss_gpu = gpu(input_ids=ids.cuda(), labels=ids.cuda()).loss
    loss_cpu = cpu(input_ids=ids, labels=ids).loss
    assert abs(float(loss_gpu) - float(loss_cpu)) < 0.02 * float(loss_cpu)


def test_dtype_auto_is_bf16_only_where_bf16_is_native(monkeypatch):
    import loralab.precision as precision

    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    assert precision.resolve_dtype(cpu, "auto") == torch.bfloat16
    assert precision.Precision.resolve("cpu", "auto").name == "bf16"
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    assert precision.resolve_dtype(cpu, "auto") == torch.float32
    assert precision.Precision.resolve("cpu", "auto") == precision.Precision(cpu, torch.float32)
    assert precision.resolve_dtype(cpu, "fp16") == torch.float16      # a named dtype is taken as named
    with pytest.raises(LoraLabError, match="unknown dtype 'fp64'"):
        precision.resolve_dtype(cpu, "fp64")
