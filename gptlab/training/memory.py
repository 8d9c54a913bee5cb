"""What training measures about memory, for `gptlab cost` to check its predictions against.

On a GPU: the CUDA allocator's bytes (what tensors hold, without its cache). On a CPU: the process's resident
set from /proc/self/status, whose high-water mark Linux lets a process reset (writing 5 to
/proc/self/clear_refs), so that the peak of the training steps is read apart from loading, evaluation and
checkpoints (where the write is refused, the peak is the whole process's, and `scope` says so). Without
/proc (macOS, Windows) and on Apple's GPUs the numbers are None and the trainer records none.

    meter = MemoryMeter(device)
    base = meter.current()      # before the model is built: the interpreter, torch and the token files
    meter.reset()               # before the steps
    ...                         # train
    meter.peak()                # the highest point since the reset (bytes)

Before any of that, forecast() says what the steps will take by gptlab cost's formulas, so that the trainer can
refuse a run that would not fit before it allocates anything.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


def _status(field: str) -> int | None:
    """A size from /proc/self/status (VmRSS, VmHWM) in bytes; None off Linux."""
    try:
        found = re.search(rf"^{field}:\s+(\d+) kB", STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(found.group(1)) * 1024 if found else None


class MemoryMeter:
    """The current and peak memory of this process on its device, in bytes."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.scope = "steps"  # what peak() covers: since the last reset, or the whole process ("process")

    def current(self) -> int | None:
        if self.cuda:
            return torch.cuda.memory_allocated(self.device)
        return _status("VmRSS") if self.device.type == "cpu" else None

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        if self.device.type != "cpu":
            return
        try:
            CLEAR_REFS.write_text("5")  # Linux 4.0 and later: the high-water mark starts again from here
        except OSError:
            pass
        hwm, rss = _status("VmHWM"), _status("VmRSS")
        if hwm is None or rss is None or hwm > rss + 2**20:  # not reset (a sandbox may ignore the write)
            self.scope = "process"  # the peak then covers the whole process, loading included

    def available(self) -> int | None:
        """Bytes still free for tensors: the GPU's free memory, or the system's available memory (MemAvailable)."""
        if self.cuda:
            return torch.cuda.mem_get_info(self.device)[0]
        try:
            found = re.search(r"^MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
        except OSError:
            return None
        return int(found.group(1)) * 1024 if found and self.device.type == "cpu" else None

    def peak(self) -> int | None:
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device)
        if self.device.type != "cpu":
            return None
        return _status("VmHWM")


def forecast(family: str, config, cfg, device_type: str, dtype: str,
             shards: int = 1) -> tuple[dict[str, float], dict[str, str]]:
    """The memory a training step will take, in bytes by part and in all ("total"), by gptlab cost's forecast (a
    GPT's by its formulas; another family's from its exact parameter count, counted on torch's meta device where
    nothing is allocated), and for each part the flags that make it smaller."""
    from gptlab.cost import forecast_training
    from gptlab.models import build_model, config_to_dict, get_family

    def count_params() -> int:
        with torch.device("meta"):
            return build_model(family, config).num_params(non_embedding=False)

    width = get_family(family).width or "n_embd"
    parts = forecast_training(family, config_to_dict(family, config), params=count_params,
                              width=getattr(config, width, 0),
                              batch_size=cfg.batch_size, tokens_per_row=cfg.seq_len or 1, optimizer=cfg.optimizer,
                              device_type=device_type, dtype=dtype, shards=shards)
    sizes, per_token = f"the model's size (--{width.replace('_', '-')}, --n-layer)", "--batch-size (or the context)"
    return parts, dict(weights=sizes, gradients=sizes, optimizer=sizes, weight_copies=sizes, activations=per_token,
                       working=per_token)
