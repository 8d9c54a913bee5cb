"""The machines an estimate runs on: common GPUs from their data sheets, and this machine's CPU, measured.

Peak FLOP/s are dense (no 2:4 sparsity), per device, for matrix products on tensor cores (bf16, fp16) and
for fp32; tf32 is what an fp32 run's matmuls reach on a GPU that has it (gptlab turns TF32 on under CUDA).
Prices are assumed on-demand rental prices in US dollars per device-hour; they change often: pass --price.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, replace
from functools import cache

from gptlab.errors import GptlabError

T, G = 1e12, 1e9
# Assumed model FLOPs utilisation where none is given or calibrated. GPU: about what gptlab's GPT-2 124M reached
# on one H100 (0.37 of the data sheet's bf16 peak); CPU, by format: about the median of what gptlab's GPTs of
# widths 128-512 reached of the measured matmul peak on the 2-core project machine (bf16 0.40-0.55, fp32 0.61-0.88:
# benchmarks/cost_check.py). fp32's peak is lower, so the rest of a step weighs less against it.
GPU_MFU, CPU_MFU = 0.4, {"fp32": 0.75, "mixed": 0.45, "bf16": 0.45}


@dataclass(frozen=True)
class Hardware:
    name: str
    bf16: float | None  # peak FLOP/s; None: no such format
    fp16: float | None
    fp32: float
    memory: float  # bytes per device
    bandwidth: float  # memory bandwidth, bytes/s
    watts: float  # board power (TDP)
    price: float | None  # assumed US dollars per device-hour
    tf32: float | None = None
    measured: bool = False  # True for this machine's CPU, measured on the spot

    def peak(self, precision: str) -> float:
        """Peak FLOP/s for training in a precision: fp32 (TF32 where there is one), or mixed and bf16, which compute
        in bf16, or in fp16 with loss scaling on a device without bf16 (T4, V100), as gptlab does."""
        if precision == "fp32":
            return self.tf32 or self.fp32
        value = self.bf16 or self.fp16
        if value is None:
            raise GptlabError(f"{self.name} has no 16-bit format: use --precision fp32")
        return value

    def to_dict(self) -> dict:
        return asdict(self)


# NVIDIA and AMD data sheets (SXM boards unless named otherwise).
GPUS: dict[str, Hardware] = {h.name: h for h in [
    Hardware("h100", 989 * T, 989 * T, 67 * T, 80 * G, 3350 * G, 700, 2.50, tf32=495 * T),
    Hardware("h100-pcie", 756 * T, 756 * T, 51 * T, 80 * G, 2000 * G, 350, 2.20, tf32=378 * T),
    Hardware("h200", 989 * T, 989 * T, 67 * T, 141 * G, 4800 * G, 700, 3.50, tf32=495 * T),
    Hardware("a100-80gb", 312 * T, 312 * T, 19.5 * T, 80 * G, 2039 * G, 400, 1.60, tf32=156 * T),
    Hardware("a100-40gb", 312 * T, 312 * T, 19.5 * T, 40 * G, 1555 * G, 400, 1.30, tf32=156 * T),
    Hardware("a100-pcie", 312 * T, 312 * T, 19.5 * T, 80 * G, 1935 * G, 300, 1.40, tf32=156 * T),
    Hardware("l40s", 362 * T, 362 * T, 91.6 * T, 48 * G, 864 * G, 350, 1.00, tf32=183 * T),
    Hardware("l4", 121 * T, 121 * T, 30.3 * T, 24 * G, 300 * G, 72, 0.70, tf32=60 * T),
    Hardware("a10", 125 * T, 125 * T, 31.2 * T, 24 * G, 600 * G, 150, 0.75, tf32=62.5 * T),
    Hardware("t4", None, 65 * T, 8.1 * T, 16 * G, 320 * G, 70, 0.35),
    Hardware("v100", None, 125 * T, 15.7 * T, 32 * G, 900 * G, 300, 0.80),
    Hardware("rtx4090", 165 * T, 165 * T, 82.6 * T, 24 * G, 1008 * G, 450, 0.40, tf32=82.6 * T),
    Hardware("rtx3090", 71 * T, 71 * T, 35.6 * T, 24 * G, 936 * G, 350, 0.25, tf32=35.6 * T),
    Hardware("mi300x", 1307 * T, 1307 * T, 163.4 * T, 192 * G, 5300 * G, 750, 2.50, tf32=654 * T),
]}


# How CUDA names each GPU of the table (torch.cuda.get_device_name, lower case); a GPU that matches none, an
# L40 or an A10G say, is not guessed at.
NAMES = [("h100-pcie", r"h100\b.*pcie"), ("h100", r"h100(?!.*(pcie|nvl))"), ("h200", r"\bh200\b(?!.*nvl)"),
         ("a100-pcie", r"a100.*80gb.*pcie|a100-pcie-80gb"), ("a100-80gb", r"a100-sxm4?-80gb"),
         ("a100-40gb", r"a100-sxm4?-40gb"), ("l40s", r"\bl40s\b"), ("l4", r"\bl4$"), ("a10", r"\ba10$"),
         ("t4", r"\bt4$"), ("v100", r"v100-sxm2-32gb"), ("rtx4090", r"rtx 4090$"), ("rtx3090", r"rtx 3090$"),
         ("mi300x", r"mi300x")]


def match_gpu(device: str) -> Hardware | None:
    """The table's GPU for a CUDA device name ("NVIDIA H100 80GB HBM3" -> h100), or None."""
    name = device.lower().removeprefix("cuda:").strip()
    if "mig" in name.split():  # a slice of a GPU is not the GPU
        return None
    for key, pattern in NAMES:
        if re.search(pattern, name):
            return GPUS[key]
    return None


def get_hardware(name: str, cpu_watts: float = 65.0) -> Hardware:
    """A GPU from the table, or "cpu": this machine's CPU, measured now."""
    if name == "cpu":
        import torch

        return replace(measure_cpu(torch.get_num_threads()), watts=cpu_watts)
    if name not in GPUS:
        raise GptlabError(f"unknown --gpu {name!r}; choose cpu or one of: {', '.join(GPUS)}")
    return GPUS[name]


def _matmul_flops(dtype, n: int = 1024, seconds: float = 0.4) -> float:
    """The FLOP/s of n x n matrix products in dtype, best of repeated timings."""
    import torch

    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm up (thread pool, kernel choice)
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best


def _bandwidth(size: int = 64 * 2**20, seconds: float = 0.3) -> float:
    """Bytes/s of copying a 64 MiB buffer (read and write)."""
    import torch

    src, dst = torch.empty(size, dtype=torch.uint8), torch.empty(size, dtype=torch.uint8)
    dst.copy_(src)
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * size / best


def _total_memory() -> float:
    try:
        import os

        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0.0


@cache
def measure_cpu(threads: int = 0) -> Hardware:
    """This machine's CPU with `threads` of torch's threads (0: torch's default): matmul FLOP/s in fp32 and bf16
    (emulated where the CPU has no bf16 instructions: what a bf16 run would get), copy bandwidth, memory. Power is
    not measurable from here: watts is an assumption (--watts)."""
    import torch

    from gptlab.device import cpu_model

    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        name = f"cpu: {cpu_model()} ({torch.get_num_threads()} threads)"
        return Hardware(name, _matmul_flops(torch.bfloat16), None, _matmul_flops(torch.float32), _total_memory(),
                        _bandwidth(), 65.0, None, measured=True)
    finally:
        torch.set_num_threads(before)
