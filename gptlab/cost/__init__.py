"""What a model costs: to train (FLOPs, time, money, energy) and to hold in memory, checked against gptlab's runs.

    shapes.py    a transformer's sizes -> parameters (embedding and not) and training FLOPs per token;
                 GPT-2, GPT-3, Chinchilla and Llama 2 as examples; a gptlab run or preset as a shape
    hardware.py  GPUs' peak FLOP/s, memory, bandwidth and power; this machine's CPU measured on the spot
    memory.py    bytes by part (weights, gradients, optimizer state, activations) for fp32, bf16 and mixed
                 precision, with and without activation checkpointing; how many devices it takes
    estimate.py  the whole estimate: compute, time, cost, energy, CO2, compute-optimal sizes, generation speed
    runs.py      a finished run: predicted peak memory and step time against what its metrics measured
    report.py    the tables and the JSON that `gptlab cost` prints

The formulas are plain Python; torch is needed only to measure: this CPU (hardware.measure_cpu) and torch's own
memory for training on it (runs.runtime_overhead).

Training reads its pre-run forecast through this package's interface alone (forecast_training, size), not its
modules.
"""

from __future__ import annotations

from collections.abc import Callable


def forecast_training(family: str, model: dict, *, params: Callable[[], int], width: int, batch_size: int,
                      tokens_per_row: int, optimizer: str, device_type: str, dtype: str,
                      shards: int = 1) -> dict[str, float]:
    """What a training step's tensors will take, in bytes by part (weights, gradients, optimizer, weight_copies,
    activations, working) and in all ("total"): a GPT's by the formulas (its config's values in `model`), another
    family's from its exact parameter count (params(), asked only then), its width and a rough allowance per
    token for activations. shards: processes the states are split over (train --fsdp; a GPT's formulas)."""
    from gptlab.cost.memory import rough_training_memory
    from gptlab.cost.runs import precision_of, training_need

    parts = training_need(family, model, batch_size, optimizer, device_type, dtype, shards)
    if parts is None:
        parts = rough_training_memory(params(), batch_size * tokens_per_row, width, model.get("n_layer", 1),
                                      model["vocab_size"], precision_of(dtype), optimizer)
    return parts


def size(n: float) -> str:
    """Bytes, readable: "1.23 GB"."""
    from gptlab.cost.report import size

    return size(n)
