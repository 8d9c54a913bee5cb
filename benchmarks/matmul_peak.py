"""The machine's measured matrix-multiply peak: the yardstick for every other figure.

    python benchmarks/matmul_peak.py [--device cpu|cuda] [--size N]

Prints one JSON line per dtype: {"bench": "matmul_peak", "dtype": ..., "flops": ...}.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure_peak(device: torch.device, dtype: torch.dtype, size: int | None = None, seconds: float = 2.0) -> float:
    """FLOP/s of a square matmul on random data, the best of repeated timed rounds."""
    n = size or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    best, deadline = 0.0, time.perf_counter() + seconds
    reps = 10 if device.type == "cuda" else 2
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        _sync(device)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    for dtype in (torch.float32, torch.bfloat16):
        flops = measure_peak(device, dtype, args.size)
        print(json.dumps({"bench": "matmul_peak", "device": device.type, "dtype": str(dtype).split(".")[-1],
                          "threads": torch.get_num_threads(), "flops": round(flops)}))


if __name__ == "__main__":
    main()
