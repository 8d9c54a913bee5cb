"""Evaluation: the mean loss over the same batches every time, averaged over processes."""

from __future__ import annotations

import torch

from gptlab.device import autocast


@torch.no_grad()
def evaluate(model, sources: dict, iters: int, seed: int, device, dtype, dist) -> dict[str, float]:
    """{split: mean loss} over `iters` batches of each source, drawn from a fixed seed. Under several processes
    each evaluates its share of every batch and the means are averaged."""
    model.eval()
    out = {}
    for split, batches in sources.items():
        batches.generator.manual_seed(seed)
        total = torch.zeros((), device=device)
        for _ in range(iters):
            with autocast(device, dtype):
                _, loss = model(*batches.next())
            total += loss.float()
        out[split] = dist.mean(total / iters)
    model.train()
    return out
