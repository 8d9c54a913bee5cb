"""The whole estimate for training one model on some tokens on some hardware.

    FLOPs    = (6·N + 12·L·C·T) · D                     N parameters, D tokens (6·N·D alone is the usual rule)
    seconds  = FLOPs / (devices · peak FLOP/s · MFU)     MFU: the share of the peak a run achieves
    cost     = devices · hours · price;  energy = devices · hours · watts · PUE;  CO2 = energy · grid intensity
    compute-optimal (Chinchilla): D ≈ 20·N, so a budget of F FLOPs buys N = sqrt(F / 120), D = 20·N
    generation at batch 1: every token reads every weight (and the KV cache), so tokens/s ≤ bandwidth / bytes
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gptlab.cost.hardware import Hardware
from gptlab.cost.memory import (
    PRECISIONS,
    STATES,
    bytes_per_param,
    devices_needed,
    fits,
    inference_memory,
    training_memory,
)
from gptlab.cost.shapes import TOKENS_PER_PARAM, Shape, compute_optimal
from gptlab.errors import GptlabError


@dataclass
class Assumptions:
    hardware: Hardware
    tokens: float | None = None  # None: what the published model trained on, else compute-optimal
    tokens_per_param: float = TOKENS_PER_PARAM
    precision: str = "mixed"  # fp32, mixed (fp32 weights, 16-bit matmuls), bf16
    optimizer: str = "adamw"
    batch: int = 1  # sequences per micro-batch on each device
    mfu: float = 0.4  # model FLOPs utilisation
    devices: int | None = None  # None: the fewest that hold the training
    price: float | None = None  # US dollars per device-hour; None: the hardware table's assumption
    carbon: float = 0.4  # kg CO2 per kWh of the grid
    pue: float = 1.2  # power usage effectiveness of the data centre (cooling and the rest per watt of compute)

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise GptlabError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.optimizer not in STATES:
            raise GptlabError(f"optimizer must be one of {', '.join(STATES)}, not {self.optimizer!r}")
        if not 0 < self.mfu <= 1:
            raise GptlabError(f"mfu is a share of the peak: above 0 and at most 1, not {self.mfu}")
        if self.tokens is not None and not self.tokens > 0:
            raise GptlabError(f"tokens must be positive, not {self.tokens}")
        if self.batch < 1 or (self.devices is not None and self.devices < 1):
            raise GptlabError("batch and devices must be at least 1")


def estimate(s: Shape, a: Assumptions) -> dict:
    """Everything `gptlab cost` shows for one model, as plain numbers (bytes, FLOPs, seconds, dollars, kg)."""
    n = s.params()
    tokens = a.tokens if a.tokens is not None else s.tokens_trained or a.tokens_per_param * n["total"]
    flops = dict(per_token=s.flops_per_token(), six_nd=6 * n["total"] * tokens,
                 total=s.flops_per_token() * tokens)
    needed, checkpointing = devices_needed(s, a.precision, a.batch, a.hardware.memory, a.optimizer)
    devices = a.devices or needed or 1
    if a.devices:  # more devices than the fewest may hold it without checkpointing
        checkpointing = not fits(s, a.precision, a.batch, a.hardware.memory, a.optimizer, shards=devices)
    return dict(model=s.to_dict(), params=n, tokens=tokens, tokens_per_param=tokens / n["total"], flops=flops,
                memory=memory_table(s, a.batch, a.optimizer),
                fit=dict(device=a.hardware.name, device_memory=a.hardware.memory, batch=a.batch,
                         precision=a.precision, optimizer=a.optimizer, devices_needed=needed,
                         checkpointing=checkpointing),
                training=training_time(flops["total"], a, devices),
                compute_optimal=optimal_for(flops["total"], a.tokens_per_param),
                generation=generation(s, a.hardware), notes=notes(a, needed, checkpointing, devices))


def notes(a: Assumptions, needed: int | None, checkpointing: bool, devices: int) -> list[str]:
    out = []
    if checkpointing:
        out.append("with activation checkpointing each block's forward pass runs twice: about a third more "
                   "compute (8ND rather than 6ND) than the time below counts")
    if needed is None:
        out.append(f"a micro-batch of {a.batch} does not fit one {a.hardware.name} even with activation "
                   f"checkpointing: the time below assumes it did")
    elif devices < needed:
        out.append(f"{devices} device(s) cannot hold the training: it takes {needed}; the time below assumes they did")
    if a.precision != "fp32" and a.hardware.bf16 is None and a.hardware.fp16 is not None:
        out.append(f"{a.hardware.name} has no bf16: it computes in fp16 (with loss scaling) at its fp16 peak")
    return out


def memory_table(s: Shape, batch: int, optimizer: str) -> dict:
    """Training memory by part in each precision, with and without activation checkpointing."""
    table = {}
    for name in PRECISIONS:
        parts = training_memory(s, name, batch, optimizer)
        checkpointed = training_memory(s, name, batch, optimizer, checkpointing=True)
        parts.update(total_checkpointed=checkpointed["total"], activations_checkpointed=checkpointed["activations"],
                     bytes_per_param=bytes_per_param(s, name, optimizer))
        table[name] = parts
    return table


def training_time(flops: float, a: Assumptions, devices: int) -> dict:
    hw = a.hardware
    per_second = devices * hw.peak(a.precision) * a.mfu
    seconds = flops / per_second
    hours = devices * seconds / 3600
    price = a.price if a.price is not None else hw.price
    energy = hours * hw.watts / 1000 * a.pue
    return dict(devices=devices, mfu=a.mfu, flops_per_s=per_second, seconds=seconds, device_hours=hours,
                price_per_hour=price, cost=hours * price if price is not None else None, energy_kwh=energy,
                co2_kg=energy * a.carbon, carbon_per_kwh=a.carbon, pue=a.pue)


def optimal_for(flops: float, tokens_per_param: float) -> dict:
    params, tokens = compute_optimal(flops, tokens_per_param)
    return dict(flops=flops, params=params, tokens=tokens, tokens_per_param=tokens_per_param)


def generation(s: Shape, hw: Hardware, weight_bytes: int = 2) -> dict:
    """Upper bounds on generation speed at batch 1 in 16-bit weights: memory bandwidth (every weight, and at a full
    context the whole KV cache, read per token) and compute (2 FLOPs per weight per token); the first binds."""
    mem = inference_memory(s, weight_bytes)
    peak = hw.bf16 or hw.fp16 or hw.fp32
    return dict(weight_bytes=mem["weights"], kv_cache_bytes=mem["kv_cache"],
                devices_to_hold=math.ceil(mem["total"] / (hw.memory * 0.9)),
                tokens_per_s_bandwidth=hw.bandwidth / mem["weights"],
                tokens_per_s_bandwidth_full_context=hw.bandwidth / mem["total"],
                tokens_per_s_compute=peak / (2 * s.params()["matmul"]))
