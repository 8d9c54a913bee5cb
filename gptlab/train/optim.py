"""Optimizers and the learning-rate schedule.

- AdamW with weight decay only on the matrices that multiply activations: norms, biases and
  embeddings are left alone (decaying them only pulls useful parameters towards zero).
- Muon (Jordan et al., 2024) for the hidden matrices of a transformer: SGD momentum whose update is
  orthogonalized by a few Newton-Schulz iterations. Embeddings, the output head, norms and biases
  stay with AdamW, as in the fastest GPT training records.
- Linear warmup, then cosine decay to min_lr. Progress is the larger of iterations done over
  max_iters and time spent over max_time, so a time-limited run still ends its schedule on time.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn


def _split_params(model: nn.Module):
    """(matrices, embeddings, others): hidden 2-D weights, embedding tables, and norms/biases/vectors."""
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    matrices, embeddings, others, seen = [], [], [], set()
    for p in model.parameters():  # parameters() yields a tied weight once
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if id(p) in embedding_ids:
            embeddings.append(p)
        elif p.dim() >= 2:
            matrices.append(p)
        else:
            others.append(p)
    return matrices, embeddings, others


def _head_ids(model: nn.Module) -> set[int]:
    head = getattr(model, "lm_head", None)
    return {id(head.weight)} if head is not None else set()


def adamw(params_groups, lr, betas, device_type):
    # The fused kernel is fastest where it exists; foreach (one kernel per group of tensors) otherwise.
    kwargs = dict(fused=True) if device_type in ("cuda", "cpu") else dict(foreach=True)
    try:
        return torch.optim.AdamW(params_groups, lr=lr, betas=betas, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params_groups, lr=lr, betas=betas)


def build_optimizers(model: nn.Module, cfg, device_type: str) -> list[torch.optim.Optimizer]:
    """The optimizers for `cfg.optimizer`; each param group remembers its peak lr as 'base_lr'."""
    matrices, embeddings, others = _split_params(model)
    betas = (cfg.beta1, cfg.beta2)
    if cfg.optimizer == "adamw":
        groups = [dict(params=matrices, weight_decay=cfg.weight_decay, base_lr=cfg.lr),
                  dict(params=embeddings + others, weight_decay=0.0, base_lr=cfg.lr)]
        return [adamw([g for g in groups if g["params"]], cfg.lr, betas, device_type)]
    if cfg.optimizer == "muon":
        heads = _head_ids(model)
        hidden = [p for p in matrices if id(p) not in heads]
        rest = [p for p in matrices if id(p) in heads]
        groups = [dict(params=rest, weight_decay=cfg.weight_decay, base_lr=cfg.lr),
                  dict(params=embeddings + others, weight_decay=0.0, base_lr=cfg.lr)]
        opts = [Muon(hidden, lr=cfg.muon_lr, weight_decay=0.0)] if hidden else []
        for g in opts[0].param_groups if opts else []:
            g["base_lr"] = cfg.muon_lr
        return opts + [adamw([g for g in groups if g["params"]], cfg.lr, betas, device_type)]
    from gptlab.errors import GptlabError

    raise GptlabError(f"unknown --optimizer {cfg.optimizer!r}; choose adamw or muon")


def lr_factor(it: int, elapsed: float, cfg, max_time: float | None) -> float:
    """Multiplier of each group's peak lr at iteration `it` after `elapsed` seconds of training."""
    if it < cfg.warmup_iters:
        return (it + 1) / (cfg.warmup_iters + 1)
    progress = (it - cfg.warmup_iters) / max(1, cfg.max_iters - cfg.warmup_iters)
    if max_time:
        progress = max(progress, elapsed / max_time)
    progress = min(1.0, progress)
    floor = cfg.min_lr / cfg.lr
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizers, factor: float) -> None:
    for opt in optimizers:
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * factor


def orthogonalize(G: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximately U V^T of G = U S V^T by a quintic Newton-Schulz iteration (Muon's coefficients).

    G is a matrix (r, c) or a stack of them (n, r, c). The coefficients push every singular value into
    about [0.7, 1.2] in five steps; exactness is not needed. Runs in bfloat16, which is fast on GPUs and
    on CPUs with native bf16.
    """
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.to(torch.bfloat16)
    transposed = X.size(-2) > X.size(-1)
    if transposed:  # iterate on the wide orientation: X X^T is then the smaller Gram matrix
        X = X.mT
    # The spectral norm is at most the Frobenius norm: dividing by it starts inside the basin.
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    if transposed:
        X = X.mT
    return X.to(G.dtype)


class Muon(torch.optim.Optimizer):
    """MomentUm Orthogonalized by Newton-Schulz, for 2-D hidden weight matrices only.

    Matrices of one shape are orthogonalized together, as one batched product per step: on a CPU
    that is several times fewer, larger matmuls.
    """

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True,
                 weight_decay: float = 0.0, ns_steps: int = 5):
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov,
                                      weight_decay=weight_decay, ns_steps=ns_steps))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            by_shape: dict[tuple, list] = {}
            for p in group["params"]:
                if p.grad is not None:
                    by_shape.setdefault(tuple(p.shape), []).append(p)
            for shape, params in by_shape.items():
                grads = []
                for p in params:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(p)
                    buf = state["momentum_buffer"]
                    buf.mul_(group["momentum"]).add_(p.grad)
                    grads.append(p.grad.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf)
                updates = orthogonalize(torch.stack(grads), group["ns_steps"])
                # An orthogonal update has RMS 1/sqrt(max dim); scale so tall matrices get comparable steps.
                scale = max(1.0, shape[0] / shape[1]) ** 0.5
                for p, update in zip(params, updates):
                    if group["weight_decay"]:
                        p.mul_(1 - group["lr"] * group["weight_decay"])
                    p.add_(update, alpha=-group["lr"] * scale)
        return None
