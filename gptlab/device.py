"""Choosing the device and the number format."""

from __future__ import annotations

import contextlib

import torch

from gptlab.errors import GptlabError


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def pick_device(name: str = "auto") -> torch.device:
    """'auto' picks cuda, then Apple's mps, then the cpu; anything else must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _mps_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise GptlabError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GptlabError("device cuda asked for, but torch sees no CUDA GPU")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise GptlabError(f"device {name} asked for, but torch sees {torch.cuda.device_count()} GPU(s)")
    if device.type == "mps" and not _mps_available():
        raise GptlabError("device mps asked for, but it is not available")
    return device


def cpu_has_native_bf16() -> bool:
    """True where the CPU has bf16 instructions (AVX512-BF16 or AMX), so bf16 autocast pays off.

    Older AVX-512 CPUs (Skylake to Ice Lake) run bf16 by emulation, slower than float32.
    """
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """The autocast number format; 'auto' is bf16 where the hardware does it fast, else float32."""
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if name == "auto":
        if device.type == "cuda":
            try:  # native bf16 (Ampere and later); emulated bf16 on older GPUs is slow: fp16 with loss scaling
                native = torch.cuda.is_bf16_supported(including_emulation=False)
            except TypeError:  # torch before 2.3
                native = torch.cuda.is_bf16_supported()
            return torch.bfloat16 if native else torch.float16
        if device.type == "cpu" and cpu_has_native_bf16():
            return torch.bfloat16
        return torch.float32
    if name not in table:
        raise GptlabError(f"unknown dtype {name!r}; use auto, float32, bfloat16 or float16")
    if table[name] == torch.float16 and device.type == "cpu":
        raise GptlabError("float16 training is for GPUs; on a CPU use bfloat16 or float32")
    return table[name]


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed precision for matmuls in `dtype`; a no-op context for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def setup(device_name: str, dtype_name: str, threads: int = 0, seed: int | None = None):
    """The device and autocast format for a run, with torch's global settings made to match."""
    device = pick_device(device_name)
    dtype = pick_dtype(dtype_name, device)
    if threads:
        torch.set_num_threads(threads)
    if seed is not None:
        torch.manual_seed(seed)
    if device.type == "cuda":  # TF32 for the float32 matmuls that remain under autocast
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device, dtype


def device_name(device: torch.device) -> str:
    """What the device is, for the record: "cuda: NVIDIA H100 80GB HBM3", "cpu: AMD EPYC (2 threads)"."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    if device.type == "cpu":
        return f"cpu: {cpu_model()} ({torch.get_num_threads()} threads)"
    return device.type


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), or what the platform says."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"
