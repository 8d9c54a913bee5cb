"""Optimizers and the learning-rate schedule.

- AdamW with weight decay only on the matrices that multiply activations: norms, biases and
  embeddings are left alone (decaying them only pulls useful parameters towards zero).
- Muon (Jordan et al., 2024) for the hidden matrices of a transformer: SGD momentum whose update is
  orthogonalized by a few Newton-Schulz iterations. Embeddings, the output head, norms and biases
  stay with AdamW, as in the fastest GPT training records.
- Both are small classes written out here, not torch.optim subclasses (Optimizer says why).
- Linear warmup, then cosine decay to min_lr. Progress is the larger of iterations done over
  max_iters and time spent over max_time, so a time-limited run still ends its schedule on time.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.optim.adamw import adamw as adamw_kernel


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


class Optimizer:
    """The part of torch.optim.Optimizer the trainer uses, written out: parameter groups (dicts holding
    "params" and their hyperparameters, "lr" among them), per-parameter state, step(), zero_grad() and a
    state_dict() for checkpoints. torch.amp.GradScaler drives it like a torch optimizer (it unscales the
    gradients and skips the step after an inf, reading found-inf on the host).

    Why not subclass torch.optim.Optimizer: adding a parameter group to one imports the whole
    torch.compile stack (torch._dynamo) even when nothing is compiled: about 70 MiB of peak memory, a
    fifth of a small CPU run's, and a second of start-up. What needs a real torch.optim.Optimizer (its
    lr schedulers, FSDP's optim_state_dict, ZeroRedundancyOptimizer) does not take these classes.
    """

    def __init__(self, params, defaults: dict):
        if isinstance(params, torch.Tensor):
            raise TypeError("params must be an iterable of tensors or of group dicts, not a tensor")
        params = list(params)
        groups = params if params and isinstance(params[0], dict) else [dict(params=params)]
        self.param_groups = [{**defaults, **g, "params": list(g["params"])} for g in groups]
        every = [p for g in self.param_groups for p in g["params"]]
        if not every:
            raise ValueError("an optimizer needs at least one parameter")
        if len({id(p) for p in every}) != len(every):
            raise ValueError("a parameter appears twice in the optimizer's groups")
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad.zero_()

    def _shapes(self) -> list[list[list[int]]]:
        return [[list(p.shape) for p in g["params"]] for g in self.param_groups]

    def state_dict(self) -> dict:
        """Each group's hyperparameters and each parameter's state, in order, with the shapes to check them by."""
        return dict(kind=type(self).__name__, shapes=self._shapes(),
                    groups=[{k: v for k, v in g.items() if k != "params"} for g in self.param_groups],
                    state=[[self.state.get(p, {}) for p in g["params"]] for g in self.param_groups])

    def load_state_dict(self, saved: dict) -> None:
        """Restores a state_dict(), or torch.optim's layout of the same optimizer (what gptlab checkpoints
        held before these classes); ValueError if it was written by another optimizer or for other parameters."""
        name = type(self).__name__
        if isinstance(saved, dict) and "param_groups" in saved and "kind" not in saved:
            saved = self._from_torch_layout(saved)
        try:
            groups, states, shapes = saved["groups"], saved["state"], saved["shapes"]
            ours = saved["kind"] == name and all(isinstance(g, dict) for g in groups)
        except (TypeError, KeyError):
            ours = False
        if not ours:
            raise ValueError(f"the saved optimizer state is not {name}'s")
        if shapes != self._shapes() or [len(s) for s in states] != [len(g["params"]) for g in self.param_groups]:
            raise ValueError("the saved optimizer state is for parameters of other shapes")
        self.state.clear()
        for group, hyper, group_states in zip(self.param_groups, groups, states):
            group.update(hyper)
            for p, state in zip(group["params"], group_states):
                if state:
                    self.state[p] = {k: v.to(self._state_device(p, k)) for k, v in state.items()}

    def _from_torch_layout(self, saved: dict) -> dict:
        """torch.optim's state_dict (parameters and their state by index) in this class's layout. Shapes are
        read from the saved tensors (a parameter without state is taken as fitting), so a state for other
        parameters is still refused."""
        mine = self._shapes()
        try:
            groups, by_index = saved["param_groups"], saved["state"]
            states = [[by_index.get(i, {}) for i in g["params"]] for g in groups]
            # KeyError when the groups lack one of this optimizer's hyperparameters: another optimizer's.
            hyper = [{k: g[k] for k in group if k != "params"} for g, group in zip(groups, self.param_groups)]
            shapes = [[next((list(t.shape) for t in st.values() if t.dim() > 0), None) for st in g] for g in states]
        except (TypeError, KeyError, AttributeError):
            return {}
        for gi, group_shapes in enumerate(shapes):
            for j, shape in enumerate(group_shapes):
                if shape is None and gi < len(mine) and j < len(mine[gi]):
                    group_shapes[j] = mine[gi][j]
        return dict(kind=type(self).__name__, shapes=shapes, groups=hyper, state=states)

    def _state_device(self, p: torch.Tensor, key: str) -> torch.device:
        return p.device


class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019). At step t, for a parameter p with
    gradient g:

        m = beta1 m + (1 - beta1) g              running mean of the gradient
        v = beta2 v + (1 - beta2) g^2            running mean of its square
        p = p (1 - lr wd) - lr (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)

    torch's functional kernel does the arithmetic: fused (one pass over memory) on CPUs and CUDA GPUs,
    one foreach kernel per operation elsewhere.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @staticmethod
    def _fused(p: torch.Tensor) -> bool:
        return p.device.type in ("cpu", "cuda")

    def _state_device(self, p: torch.Tensor, key: str) -> torch.device:
        # The foreach kernel reads the step count on the host; the fused one where the parameter lives.
        return p.device if key != "step" or self._fused(p) else torch.device("cpu")

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if p not in self.state:
                    self.state[p] = dict(step=torch.zeros((), device=self._state_device(p, "step")),
                                         exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
            states = [self.state[p] for p in params]
            fused = all(self._fused(p) for p in params)
            beta1, beta2 = group["betas"]
            adamw_kernel(params, [p.grad for p in params], [s["exp_avg"] for s in states],
                         [s["exp_avg_sq"] for s in states], [], [s["step"] for s in states],
                         foreach=not fused, fused=fused, amsgrad=False, beta1=beta1, beta2=beta2,
                         lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"], maximize=False)


def build_optimizers(model: nn.Module, cfg) -> list[Optimizer]:
    """The optimizers for `cfg.optimizer`; each param group remembers its peak lr as 'base_lr'."""
    matrices, embeddings, others = _split_params(model)
    betas = (cfg.beta1, cfg.beta2)
    if cfg.optimizer == "adamw":
        groups = [dict(params=matrices, weight_decay=cfg.weight_decay, base_lr=cfg.lr),
                  dict(params=embeddings + others, weight_decay=0.0, base_lr=cfg.lr)]
        return [AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=betas)]
    if cfg.optimizer == "muon":
        heads = _head_ids(model)
        hidden = [p for p in matrices if id(p) not in heads]
        rest = [p for p in matrices if id(p) in heads]
        groups = [dict(params=rest, weight_decay=cfg.weight_decay, base_lr=cfg.lr),
                  dict(params=embeddings + others, weight_decay=0.0, base_lr=cfg.lr)]
        opts = [Muon(hidden, lr=cfg.muon_lr, weight_decay=0.0)] if hidden else []
        for g in opts[0].param_groups if opts else []:
            g["base_lr"] = cfg.muon_lr
        return opts + [AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=betas)]
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


class Muon(Optimizer):
    """MomentUm Orthogonalized by Newton-Schulz, for 2-D hidden weight matrices only.

    Matrices of one shape are orthogonalized together, as one batched product per step: on a CPU
    that is several times fewer, larger matmuls.
    """

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True,
                 weight_decay: float = 0.0, ns_steps: int = 5):
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov,
                                      weight_decay=weight_decay, ns_steps=ns_steps))

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            by_shape: dict[tuple, list] = {}
            for p in group["params"]:
                if p.grad is not None:
                    by_shape.setdefault(tuple(p.shape), []).append(p)
            for shape, params in by_shape.items():
                grads = []
                for p in params:
                    if p not in self.state:
                        self.state[p] = dict(momentum_buffer=torch.zeros_like(p))
                    buf = self.state[p]["momentum_buffer"]
                    buf.mul_(group["momentum"]).add_(p.grad)
                    grads.append(p.grad.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf)
                updates = orthogonalize(torch.stack(grads), group["ns_steps"])
                # An orthogonal update has RMS 1/sqrt(max dim); scale so tall matrices get comparable steps.
                scale = max(1.0, shape[0] / shape[1]) ** 0.5
                for p, update in zip(params, updates):
                    if group["weight_decay"]:
                        p.mul_(1 - group["lr"] * group["weight_decay"])
                    p.add_(update, alpha=-group["lr"] * scale)
