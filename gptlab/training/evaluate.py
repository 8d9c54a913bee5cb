"""Evaluation: the mean loss over the same batches every time, averaged over processes."""

from __future__ import annotations

import torch

from gptlab.device import autocast


@torch.no_grad()
def evaluate(model, sources: dict, iters: int, seed: int, device, dtype, dist) -> dict[str, float]:
    """{split: mean loss} over `iters` batches of each source, drawn from a fixed seed. Under several processes
    each evaluates its share of every batch and the means are averaged. With a loss mask (chat finetuning) the
    loss is the mean over every counted target, however they fall into batches and processes."""
    model.eval()
    out = {}
    for split, batches in sources.items():
        batches.generator.manual_seed(seed)
        total, counted, masked = torch.zeros((), device=device), torch.zeros((), device=device), False
        for _ in range(iters):
            batch = batches.next()
            with autocast(device, dtype):
                _, loss = model(*batch)
            if len(batch) > 2:  # a loss mask: weigh each batch's mean by the targets it counts
                masked, count = True, batch[2].sum()
                loss, counted = loss * count, counted + count
            total += loss.float()
        if masked:
            out[split] = dist.sum(float(total)) / max(dist.sum(float(counted)), 1.0)
        else:
            out[split] = dist.mean(total / iters)
    model.train()
    return out
