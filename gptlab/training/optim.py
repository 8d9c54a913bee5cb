"""Optimizers and the learning-rate schedule, all of them torch's own.

- AdamW (torch.optim.AdamW, fused on CPUs and CUDA GPUs) with weight decay only on the matrices that
  multiply activations: norms, biases and embeddings are left alone (decaying them only pulls useful
  parameters towards zero).
- Muon (torch.optim.Muon; Jordan et al., 2024) for the hidden matrices: SGD momentum whose update is
  orthogonalized by a few Newton-Schulz iterations, with decoupled weight decay (--muon-weight-decay: the
  matrices shrink by lr x decay each step). Embeddings, the output head, norms and biases stay with AdamW,
  as in the fastest GPT training records.
- Which tensor goes where is the model's call (model.param_groups()); nothing here knows a layer's name.
- The schedule is `lr_factor`: linear warmup, then cosine decay to min_lr at max_iters, a function of the
  iteration alone (and of the moves of its end that a time budget made, recorded in cfg.schedule_ends). torch's
  LambdaLR applies it to every group's peak (`initial_lr`: lr for AdamW, muon_lr for Muon).
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from gptlab.errors import GptlabError
from gptlab.models.base import LanguageModel
from gptlab.training.config import parse_ends

FUSED_DEVICES = ("cpu", "cuda")  # where torch's fused AdamW kernel runs (one pass over memory)
MUON_MOMENTUM = 0.95


def build_optimizers(model: LanguageModel, cfg) -> list[torch.optim.Optimizer]:
    """The optimizers for cfg.optimizer, over the model's own split of its parameters."""
    groups = model.param_groups()
    if cfg.optimizer == "adamw":
        return [_adamw(groups.hidden + groups.decay, groups.no_decay, cfg)]
    if cfg.optimizer == "muon":
        muon = []
        if groups.hidden:
            muon = [torch.optim.Muon([dict(params=groups.hidden, initial_lr=cfg.muon_lr)], lr=cfg.muon_lr,
                                     momentum=MUON_MOMENTUM, nesterov=True, weight_decay=cfg.muon_weight_decay)]
        return muon + [_adamw(groups.decay, groups.no_decay, cfg)]
    raise GptlabError(f"unknown --optimizer {cfg.optimizer!r}; choose adamw or muon")


def _adamw(decay: list, no_decay: list, cfg) -> torch.optim.AdamW:
    groups = [dict(params=decay, weight_decay=cfg.weight_decay, initial_lr=cfg.lr),
              dict(params=no_decay, weight_decay=0.0, initial_lr=cfg.lr)]
    groups = [g for g in groups if g["params"]]
    fused = all(p.device.type in FUSED_DEVICES for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused or None)


def lr_factor(it: int, cfg) -> float:
    """The multiplier of each group's peak learning rate at iteration `it` (0 is the first step)."""
    if it < cfg.warmup_iters:
        return (it + 1) / (cfg.warmup_iters + 1)
    progress = decay_progress(it, cfg.warmup_iters, cfg.max_iters, parse_ends(cfg.schedule_ends))
    floor = cfg.min_lr / cfg.lr
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def decay_progress(it: int, warmup: int, end: int, moves: tuple[tuple[int, int], ...] = ()) -> float:
    """How far the cosine decay has gone at iteration it >= warmup: 0 at the end of warmup, 1 at `end`, linear in
    between. moves: (iteration, the end aimed at until then) where a time budget moved the end; from each, the
    progress runs on from where it had come to, toward the next end, so the learning rate never jumps."""
    start, done = warmup, 0.0
    for until, old_end in moves:
        if it < until:
            end = old_end
            break
        done += (1.0 - done) * min(1.0, (until - start) / max(1, old_end - start))
        start = until
    return min(1.0, done + (1.0 - done) * (it - start) / max(1, end - start))


def schedulers(optimizers: list[torch.optim.Optimizer], cfg, it: int) -> list[LambdaLR]:
    """LambdaLR schedulers positioned at iteration `it`: each group's lr is set for the step about to run.
    The schedule depends on the iteration alone, so a resumed run just builds them again."""
    return [LambdaLR(opt, lambda i: lr_factor(i, cfg), last_epoch=it - 1) for opt in optimizers]


# --- optimizer state written by gptlab 0.1, whose AdamW and Muon were classes of its own -------------------------

def load_state(opt: torch.optim.Optimizer, saved: dict) -> None:
    """opt.load_state_dict, also for a state in gptlab 0.1's layout; ValueError if the state is not this
    optimizer's or is for parameters of other shapes. Hyperparameters the saved groups lack are kept."""
    name = type(opt).__name__
    if isinstance(saved, dict) and "kind" in saved:
        saved = _from_gptlab_01(opt, saved)
    fresh = opt.state_dict()["param_groups"]
    try:
        groups = saved["param_groups"]
        if len(groups) != len(fresh) or not all(isinstance(g, dict) for g in groups):
            raise ValueError(f"{len(groups)} parameter groups, not {len(fresh)}")
        opt.load_state_dict({**saved, "param_groups": [{**f, **g} for f, g in zip(fresh, groups)]})
    except (KeyError, TypeError, IndexError, AttributeError, RuntimeError, ValueError) as e:
        raise ValueError(f"the saved optimizer state is not {name}'s ({e})") from None
    for group in opt.param_groups:
        for p in group["params"]:
            state = opt.state.get(p, {})
            if any(isinstance(t, torch.Tensor) and t.dim() and t.shape != p.shape for t in state.values()):
                raise ValueError("the saved optimizer state is for parameters of other shapes")


def _from_gptlab_01(opt: torch.optim.Optimizer, saved: dict) -> dict:
    """gptlab 0.1's {"kind", "shapes", "groups", "state"} in torch's layout. Its Muon kept the momentum as a
    sum (b = mu b + g) where torch keeps an average (b = mu b + (1 - mu) g): the same direction, scaled."""
    name = type(opt).__name__
    if saved.get("kind") != name or not {"shapes", "groups", "state"} <= set(saved):
        raise ValueError(f"the saved optimizer state is not {name}'s")
    mine = [[list(p.shape) for p in g["params"]] for g in opt.param_groups]
    if saved.get("shapes") != mine:
        raise ValueError("the saved optimizer state is for parameters of other shapes")
    scale = 1.0 - MUON_MOMENTUM if name == "Muon" else 1.0
    flat = [dict(st) for group in saved["state"] for st in group]
    for st in flat:
        if "momentum_buffer" in st:
            st["momentum_buffer"] = st["momentum_buffer"] * scale
    fresh = opt.state_dict()
    return {"state": {i: st for i, st in enumerate(flat) if st}, "param_groups": fresh["param_groups"]}
