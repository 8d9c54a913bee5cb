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
"""
