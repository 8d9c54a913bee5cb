"""One optimizer step: the micro-batches of gradient accumulation under autocast, loss scaling, clipping.

    for each of grad_accum micro-batches:       loss = model(*batch) / grad_accum;  backward
    unscale (fp16), clip the gradient norm, optimizer steps, schedule one step on, gradients to None

One code path for every setting: the GradScaler is disabled unless the format is float16 (it then scales
the loss so that small gradients survive, and skips a step whose gradients overflowed). Under DDP the
gradients are averaged over processes during the last micro-batch's backward only.
"""

from __future__ import annotations

import contextlib
import re
import warnings

import torch

from gptlab.device import autocast
from gptlab.errors import GptlabError


class Stepper:
    def __init__(self, model: torch.nn.Module, forward: torch.nn.Module, optimizers: list, schedulers: list,
                 cfg, device: torch.device, dtype: torch.dtype, notice=print, compiled: bool = False):
        """model: the plain model (its parameters are clipped); forward: what runs the batch (the model under
        DDP and/or torch.compile). A compiled forward that fails on its first step is dropped for `eager`."""
        self.model, self.forward, self.eager = model, forward, forward
        if compiled:
            self.forward = torch.compile(forward)
        self.untried = compiled
        self.optimizers, self.schedulers = optimizers, schedulers
        self.cfg, self.device, self.dtype, self.notice = cfg, device, dtype, notice
        self.scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    def __call__(self, batches) -> torch.Tensor:
        """One optimizer step; returns the last micro-batch's loss (this process's, detached)."""
        if not self.untried:
            return self._step(batches)
        try:
            loss = self._step(batches)
        except Exception as e:  # torch.compile is optional: fall back to eager, once
            if isinstance(e, GptlabError):
                raise
            self.notice(f"torch.compile failed ({str(e).splitlines()[0][:120]}); continuing without it")
            for opt in self.optimizers:
                opt.zero_grad(set_to_none=True)
            self.forward = self.eager
            loss = self._step(batches)
        self.untried = False
        return loss

    def _step(self, batches) -> torch.Tensor:
        accum = self.cfg.grad_accum
        for micro in range(accum):
            batch = batches.next()
            with self._sync(micro == accum - 1), autocast(self.device, self.dtype):
                _, loss = self.forward(*batch)
            self.scaler.scale(loss / accum).backward()
        self.last_lr = self.optimizers[-1].param_groups[0]["lr"]  # the rate of this step (logged)
        for opt in self.optimizers:
            self.scaler.unscale_(opt)
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        for opt in self.optimizers:
            self.scaler.step(opt)
        self.scaler.update()
        with warnings.catch_warnings():  # LambdaLR warns when the scaler skipped the first optimizer step
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
            for scheduler in self.schedulers:
                scheduler.step()
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        return loss.detach()

    def _sync(self, last: bool):
        """DDP's gradient all-reduce runs in the last micro-batch's backward; the others skip it."""
        no_sync = getattr(self.eager, "no_sync", None)
        return contextlib.nullcontext() if last or no_sync is None else no_sync()
