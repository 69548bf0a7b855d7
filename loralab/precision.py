"""Where a model runs and in which precision: the device, the dtype of the frozen weights, autocast and the
fp16 loss scaler. Every command's `--device` / `--dtype` and TrainConfig's `device` / `dtype` go through here.

    precision = Precision.resolve("auto", "bf16")     # a GPU when there is one; bf16 frozen weights
    model = load_model(spec, dtype=precision.dtype)     # the base loads in bf16
    loralab.inject(model, config)                       # LoRA factors are created in fp32 (core/lora.py)
    precision.prepare(model)                            # every trainable tensor fp32, the model on the device
    with precision.autocast():                          # matmuls in bf16, reductions in fp32
        loss = model(**batch).loss

device: "auto" (CUDA, else Apple's MPS, else the CPU), "cpu", "cuda", "cuda:N" or "mps".
dtype: "fp32", "bf16" or "fp16": the precision of the FROZEN weights and of the compute under autocast;
"auto" (training's default) is bf16 where the device runs bf16 natively and fp32 elsewhere (resolve_dtype).
Trainable tensors (LoRA factors, trained heads and biases) and the optimizer state stay fp32 in every dtype
(mixed precision, Micikevicius et al. 2018): a 16-bit copy of the frozen base halves its memory, while the
few trained values keep full precision for their small updates. fp16's narrow exponent range needs a loss
scaler (`grad_scaler`); bf16 has fp32's range and needs none.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from loralab.errors import LoraLabError

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# "auto": bf16 where the device runs it natively (native_bf16), fp32 elsewhere; resolved per machine by
# resolve_dtype, so a run's config says "auto" and its log says what it became.
AUTO_DTYPE = "auto"
DTYPE_SETTINGS = (*DTYPES, AUTO_DTYPE)
DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"
# What `--quantize` / TrainConfig.quantize take is loralab.quantization.QUANTIZE_CHOICES, read from its registry.


class PrecisionWarning(UserWarning):
    """A device/dtype pair that runs, but not well (fp16 on a CPU, bf16 on a CPU without native bf16)."""


def dtype_of(name: str | torch.dtype) -> torch.dtype:
    """torch dtype for "fp32" / "bf16" / "fp16" (a torch dtype among them is returned as is)."""
    if isinstance(name, torch.dtype) and name in DTYPES.values():
        return name
    if name not in DTYPES:
        raise LoraLabError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def resolve_dtype(device: torch.device, name: str | torch.dtype) -> torch.dtype:
    """The torch dtype a setting means on `device`: "auto" is bf16 where its matmuls are native there
    (native_bf16: bf16 GPUs, CPUs with AVX-512 BF16 or AMX), else fp32; other names as dtype_of."""
    if name == AUTO_DTYPE:
        return torch.bfloat16 if native_bf16(device) else torch.float32
    return dtype_of(name)


def dtype_name(dtype: torch.dtype) -> str:
    """"fp32" / "bf16" / "fp16" for a torch dtype (its torch name for others)."""
    return next((name for name, value in DTYPES.items() if value == dtype), str(dtype).removeprefix("torch."))


def native_bf16(device: torch.device) -> bool:
    """True where bf16 matmuls run natively: CUDA GPUs with bf16 (compute capability 8.0+), Apple GPUs, and
    CPUs with AVX-512 BF16 or AMX. Elsewhere a CPU emulates bf16 through fp32 and is slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "mps":
        return _mps_bf16()
    check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool((check and check()) or (amx and amx()))


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """The torch device `spec` names; LoraLabError (one line) when it is not there."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    text = str(spec).strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        if not _mps_available():
            raise LoraLabError("--device mps: no Apple GPU (MPS) is available to torch here; use --device cpu or auto")
        return torch.device("mps")
    kind, _, index = text.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise LoraLabError(f"unknown device {spec!r}; use {DEVICE_CHOICES}")
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise LoraLabError(f"--device {text}: no CUDA GPU is visible to torch {torch.__version__} ({build}); use "
                           "--device cpu, or auto to take a GPU only when there is one")
    number = int(index) if index else torch.cuda.current_device()
    if number >= torch.cuda.device_count():
        raise LoraLabError(f"--device {text}: there are only {torch.cuda.device_count()} CUDA device(s) "
                           f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return torch.device("cuda", number)


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def check_dtype(device: torch.device, dtype: torch.dtype) -> None:
    """Refuse (LoraLabError) a dtype the device cannot run; warn (PrecisionWarning) where it runs but slowly."""
    name = dtype_name(dtype)
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        gpu = torch.cuda.get_device_name(device)
        raise LoraLabError(f"--dtype bf16: the GPU {gpu} has no bf16 (it needs compute capability 8.0 or newer); "
                           "use --dtype fp16 (with loss scaling) or fp32")
    if device.type == "mps" and dtype == torch.bfloat16 and not _mps_bf16():
        raise LoraLabError("--dtype bf16: MPS runs bf16 from macOS 14 on; use --dtype fp16 or fp32")
    if device.type == "cpu" and dtype == torch.float16:
        warnings.warn("fp16 on the CPU runs, but slowly (CPUs have no fast fp16 matmul); use --dtype bf16 for "
                      "16-bit speed on a CPU", PrecisionWarning, stacklevel=3)
    if device.type == "cpu" and dtype == torch.bfloat16 and not native_bf16(device):
        warnings.warn(f"--dtype {name}: this CPU has no native bf16 (no AVX-512 BF16 or AMX), so bf16 is emulated "
                      "and slower than fp32; it still halves the frozen weights' memory", PrecisionWarning,
                      stacklevel=3)


def _mps_bf16() -> bool:
    check = getattr(torch.backends.mps, "is_macos_or_newer", None)
    return bool(check and check(14, 0))


@dataclass(frozen=True)
class Precision:
    """A checked (device, dtype) pair and what follows from it: autocast, the loss scaler, model placement."""

    device: torch.device
    dtype: torch.dtype = torch.float32

    @classmethod
    def resolve(cls, device: str | torch.device = "auto", dtype: str | torch.dtype = "fp32") -> "Precision":
        """Resolve a device name and the dtype on it ("auto" included), check the pair (errors and warnings as
        in check_dtype)."""
        resolved = resolve_device(device)
        torch_dtype = resolve_dtype(resolved, dtype)
        check_dtype(resolved, torch_dtype)
        return cls(resolved, torch_dtype)

    @property
    def name(self) -> str:
        return dtype_name(self.dtype)

    @property
    def mixed(self) -> bool:
        """True for 16-bit frozen weights: forward and backward run under autocast."""
        return self.dtype != torch.float32

    def autocast(self) -> contextlib.AbstractContextManager:
        """torch.autocast in the 16-bit dtype (matmuls 16-bit, reductions and losses fp32); nothing for fp32.
        The context is per thread: enter it in the thread that runs the model."""
        if not self.mixed:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A loss scaler for fp16 (dynamic scale, steps with inf/NaN gradients skipped); disabled, i.e. a plain
        pass-through, for bf16 and fp32."""
        with warnings.catch_warnings():   # an enabled scaler on CPU warns once about being experimental
            warnings.simplefilter("ignore")
            return torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)

    def prepare(self, model: nn.Module) -> nn.Module:
        """Every trainable floating tensor in fp32 (factors, trained heads, trained biases), then the model on
        the device. Call after inject and before building the optimizer. Returns the model."""
        keep_trainable_fp32(model)
        return model.to(self.device)


def keep_trainable_fp32(model: nn.Module) -> int:
    """Cast the parameters that require grad and are 16-bit to fp32, in place (the Parameter objects stay,
    so optimizers built later see them). Returns how many were cast."""
    cast = 0
    for param in model.parameters():
        if param.requires_grad and param.is_floating_point() and param.dtype in (torch.float16, torch.bfloat16):
            param.data = param.data.float()
            cast += 1
    return cast


def available_memory(device: torch.device | str) -> int | None:
    """Bytes that new tensors on `device` can still take: for the CPU the smallest of the available RAM
    (psutil's when it is installed, else /proc/meminfo's MemAvailable) and the cgroup's limit less its usage
    (a container's share); for a CUDA device its free memory. None where it cannot be known (meta, MPS, a
    system without /proc): callers then check nothing."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    known = [n for n in (_ram_available(), _cgroup_room()) if n is not None]
    return min(known) if known else None


def _ram_available() -> int | None:
    try:
        import psutil
        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024          # the file counts kB
    return None


def _cgroup_room() -> int | None:
    """The cgroup's memory limit less its usage (v2, then v1); None without a limit."""
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        with contextlib.suppress(OSError, ValueError):
            with open(limit, encoding="ascii") as fh:
                text = fh.read().strip()
            if text == "max" or int(text) >= 2**60:                 # v1 writes "no limit" as ~2**63
                return None
            with open(usage, encoding="ascii") as fh:
                return max(0, int(text) - int(fh.read().strip()))
    return None
