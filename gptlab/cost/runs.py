"""A finished gptlab run against the estimate: predicted peak memory and step time beside what it measured.

A run's metrics.jsonl records, while it trains, the peak memory of its steps (`peak_mem`: the CUDA allocator's
peak, or the process's resident set on a CPU), the memory before its model was built (`mem_base`: the
interpreter, torch, the token files), its device, number format and processes, and each logged interval's
seconds per step (`step_s`). The prediction for a CPU run adds to mem_base the memory torch itself takes to
train on this machine (kernels, thread pools, allocator slack), measured now with a tiny GPT; for a GPU run it
is 0 (the allocator's count leaves out the CUDA context).

    predicted step time = FLOPs per step / (peak FLOP/s · MFU)
    MFU: --mfu, or measured on another run of the same hardware (--calibrate RUN)
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass
from pathlib import Path

from gptlab.cost.hardware import Hardware
from gptlab.cost.memory import training_memory
from gptlab.cost.shapes import Shape, gpt_shape
from gptlab.errors import GptlabError
from gptlab.models.configs import explicit_attention
from gptlab.records import CONFIG, METRICS, read_config, read_metrics


def precision_of(dtype: str) -> str:
    """gptlab's training format (--dtype) in the estimate's terms: autocast to 16 bits is mixed precision."""
    return "fp32" if dtype in ("float32", "fp32") else "mixed"


def attention_path(on_cpu: bool, dtype: str, dropout: float) -> str:
    """The attention that gptlab's GPT runs: explicit where the model chooses it (models.configs.explicit_attention),
    and where torch's fused CPU kernel falls back to the same products for dropout; fused otherwise."""
    chosen = explicit_attention("cpu" if on_cpu else "cuda", dtype)
    return "explicit" if chosen or on_cpu and dropout > 0 else "fused"


def training_need(name: str, model: dict, batch_size: int, optimizer: str, device_type: str,
                  dtype: str, shards: int = 1) -> dict[str, float] | None:
    """What a training run's tensors will take, before it starts (the trainer says it), in bytes by part:
    weights, gradients, optimizer state, copies, activations and working memory, and their total; None for a
    family the formulas do not describe (they are a GPT's)."""
    try:
        shape = gpt_shape(name, model)
    except GptlabError:
        return None
    on_cpu, dropout = device_type == "cpu", model.get("dropout", 0.0)
    return training_memory(shape, precision_of(dtype), batch_size, optimizer, attention_path(on_cpu, dtype, dropout),
                           dropout, typed_masks=on_cpu, shards=shards)


@dataclass
class Run:
    path: Path
    shape: Shape
    train: dict  # the run's training values (batch_size, grad_accum, optimizer, compile) and the model's dropout
    device: str  # "cpu: AMD EPYC (2 threads)", "cuda: NVIDIA H100 80GB HBM3"
    dtype: str  # float32, bfloat16, float16
    mem_base: int
    peak_mem: int
    scope: str  # steps: the peak of the training steps; process: of the whole process (no reset possible)
    step_s: float  # the median seconds per step over the logged intervals after the first
    world_size: int = 1
    lora: bool = False  # a LoRA finetune (frozen weights)
    tokens: float = 0  # tokens trained on, every process's (the metrics' count, cumulative over resumes)
    fsdp: bool = False  # trained with --fsdp: the states sharded over the processes

    @property
    def on_cpu(self) -> bool:
        return self.device.startswith("cpu")

    @property
    def threads(self) -> int:
        found = re.search(r"\((\d+) threads\)", self.device)
        return int(found.group(1)) if found else 0

    @property
    def precision(self) -> str:
        return precision_of(self.dtype)

    @property
    def attention(self) -> str:
        return attention_path(self.on_cpu, self.dtype, self.train["dropout"])

    @property
    def step_flops(self) -> float:
        """FLOPs of one process's optimizer step."""
        return self.shape.flops_per_token() * self.train["batch_size"] * self.train["grad_accum"] * self.shape.context


def _whole(value, low: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _measurements(path: Path) -> list[dict]:
    """The last process's records (a resumed run logs its base again): the first holds mem_base and the rest."""
    records = read_metrics(path / METRICS)
    if not records and (path / METRICS).exists():
        raise GptlabError(f"{path / METRICS} is empty: the run has not logged a step yet")
    starts = [i for i, r in enumerate(records) if _whole(r.get("mem_base"), 0)]
    return records[starts[-1]:] if starts else []


def read_run(path: str | Path) -> Run:
    """A run folder's shape and measurements; a one-line error for a folder that is not a finished GPT run, or
    whose metrics predate the measurements."""
    path = Path(path)
    config = read_config(path)
    train, model = config["train"], config["model"]
    records = _measurements(path)
    peaks = [r["peak_mem"] for r in records if _whole(r.get("peak_mem"), 0)]
    steps = [r["step_s"] for r in records if isinstance(r.get("step_s"), (int, float)) and r["step_s"] > 0]
    tokens = max((r["tokens"] for r in records if isinstance(r.get("tokens"), (int, float))), default=0)
    if not records or not peaks or not steps:
        raise GptlabError(f"{path} has no memory or step-time measurements in its metrics (runs trained before "
                          f"gptlab recorded them, or without /proc: macOS, Windows); `gptlab cost "
                          f"{path / CONFIG}` estimates without them")
    first = records[0]
    values = dict(batch_size=train.get("batch_size"), grad_accum=train.get("grad_accum", 1),
                  optimizer=train.get("optimizer", "adamw"), compile=bool(train.get("compile")),
                  dropout=model.get("dropout", 0.0))
    if not (_whole(values["batch_size"]) and _whole(values["grad_accum"])) or \
            not isinstance(values["dropout"], (int, float)) or values["optimizer"] not in ("adamw", "muon"):
        raise GptlabError(f"{path / CONFIG} lacks a whole batch_size and grad_accum, a dropout or a known "
                          f"optimizer")
    finetune = config.get("finetune") if isinstance(config.get("finetune"), dict) else {}
    return Run(path, gpt_shape(path.name, model), values, str(first.get("device", "cpu")),
               str(first.get("dtype", "float32")), first["mem_base"], max(peaks), str(first.get("mem_scope", "steps")),
               statistics.median(steps[1:] or steps), first.get("world_size", 1) if _whole(first.get("world_size"))
               else 1, bool(finetune.get("lora_rank")), tokens, bool(train.get("fsdp")))


def predicted_memory(run: Run, overhead: float) -> dict:
    """The run's steps' peak memory by part, and in all (the run's mem_base and the runtime's overhead added).
    Under DDP (several processes) each process also keeps its gradients' all-reduce buckets: another copy. Under
    FSDP (--fsdp) each process holds 1/world_size of the weights, gradients and optimizer state, and gathers
    whole blocks to compute with them."""
    shards = run.world_size if run.fsdp else 1
    parts = training_memory(run.shape, run.precision, run.train["batch_size"], run.train["optimizer"],
                            run.attention, run.train["dropout"], typed_masks=run.on_cpu, shards=shards)
    parts["ddp_buckets"] = parts["gradients"] if run.world_size > 1 and not run.fsdp else 0.0
    parts["total"] += parts["ddp_buckets"]
    parts["runtime"] = overhead
    parts["peak"] = run.mem_base + parts["total"] + overhead
    return parts


def measured_mfu(run: Run, hardware: Hardware) -> float:
    """The share of the hardware's peak FLOP/s that the run's steps achieved."""
    return run.step_flops / run.step_s / hardware.peak(run.precision)


def compare(run: Run, hardware: Hardware, mfu: float, overhead: float) -> dict:
    """Predicted against measured: the steps' peak memory (all of it; above mem_base; and the part the formulas
    count, the runtime's measured overhead taken off both), and seconds per step."""
    memory = predicted_memory(run, overhead)
    step = run.step_flops / (hardware.peak(run.precision) * mfu)
    above = run.peak_mem - run.mem_base
    rows = [("peak memory", memory["peak"], run.peak_mem),
            ("memory above the base", memory["peak"] - run.mem_base, above),
            ("memory the formulas count", memory["total"], above - overhead),
            ("seconds per step", step, run.step_s)]
    return dict(run=str(run.path), device=run.device, dtype=run.dtype, precision=run.precision,
                attention=run.attention, mem_base=run.mem_base, scope=run.scope, world_size=run.world_size,
                hardware=hardware.name, mfu=mfu, measured_mfu=measured_mfu(run, hardware), memory=memory,
                notes=notes(run, hardware),
                rows=[dict(what=w, predicted=p, measured=m, error=p / m - 1 if m > 0 else None) for w, p, m in rows])


def notes(run: Run, hardware: Hardware) -> list[str]:
    """What the reader of a comparison should know about this run."""
    out = []
    if run.scope == "process":
        out.append("this system could not reset the peak memory: the measured peak covers the whole process, "
                   "loading the data included")
    if run.on_cpu and hardware.measured and run.device != hardware.name:
        out.append(f"the run trained on {run.device}; its step time is predicted from this machine ({hardware.name})")
    if run.lora:
        out.append("a LoRA finetune: the prediction counts every weight as trained (gradients, optimizer state and "
                   "6 FLOPs per token for the frozen ones too, where LoRA spends about 4), so it overestimates")
    if run.train["compile"]:
        out.append("compiled (torch.compile fuses operations): activations are usually below the eager formulas")
    if measured_mfu(run, hardware) > 1:
        out.append(f"the run went faster than {hardware.name}'s peak measured now: the machine is busier now than "
                   f"it was (or another machine trained it), so predicted times run long")
    if run.world_size > 1:
        out.append(f"{run.world_size} processes: the peak is the largest process's, the step time each one's")
    if run.fsdp:
        out.append(f"--fsdp: weights, gradients and optimizer state are predicted split {run.world_size} ways, and "
                   f"a gathered block (and the next one, prefetched) whole")
    return out


def runtime_overhead(dtype: str = "bfloat16") -> float:
    """Bytes that torch takes on this CPU to train, beyond the tensors the formulas count (kernels and their
    caches, thread pools, the allocator's slack): a tiny GPT trains three steps, and what its formulas give is
    taken off the growth of the resident set. Call it before anything else in the process has trained."""
    import torch

    from gptlab.device import autocast
    from gptlab.models.gpt import GPT, GPTConfig
    from gptlab.training.memory import MemoryMeter

    meter, device = MemoryMeter(torch.device("cpu")), torch.device("cpu")
    base = meter.current()
    if base is None:
        return 0.0
    meter.reset()
    shape, batch = Shape("tiny", 2, 64, 4, 65, 64), 4
    model = GPT(GPTConfig(vocab_size=65, block_size=64, n_layer=2, n_head=4, n_embd=64))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(3):
        idx = torch.randint(0, 65, (batch, 64))
        with autocast(device, getattr(torch, dtype)):
            _, loss = model(idx, idx)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    formulas = training_memory(shape, precision_of(dtype), batch, "adamw", attention_path(True, dtype, 0.0))["total"]
    return max(0.0, meter.peak() - base - formulas)
