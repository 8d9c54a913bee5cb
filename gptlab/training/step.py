"""One optimizer step: the micro-batches of gradient accumulation under autocast, loss scaling, clipping.

    for each of grad_accum micro-batches:       loss = model(*batch) / grad_accum;  backward
                                                (with a loss mask: weighted by the micro-batch's counted targets)
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
                 cfg, device: torch.device, dtype: torch.dtype, notice=print, compiled: bool = False, dist=None):
        """model: the plain model (its parameters are clipped); forward: what runs the batch (the model under
        DDP and/or torch.compile). A compiled forward that fails on its first step is dropped for `eager`."""
        self.model, self.forward, self.eager = model, forward, forward
        if compiled:
            self.forward = torch.compile(forward)
        self.untried = compiled
        self.optimizers, self.schedulers = optimizers, schedulers
        self.cfg, self.device, self.dtype, self.notice = cfg, device, dtype, notice
        self.scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        self.dist = dist  # several processes: the count of masked targets is summed over them
        self.last_lr, self.last_grad_norm = None, None  # the last step's, for the log

    def __call__(self, batches) -> torch.Tensor:
        """One optimizer step; returns its loss as this process sees it (detached; see _step)."""
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
        micro_batches = [batches.next() for _ in range(accum)]
        shares = self._shares(micro_batches)
        step_loss = 0.0
        for micro, batch in enumerate(micro_batches):
            with self._sync(micro == accum - 1), autocast(self.device, self.dtype):
                _, loss = self.forward(*batch)
            if shares is not None:
                loss = loss * shares[micro]
                step_loss = step_loss + loss.detach()
            self.scaler.scale(loss if shares is not None else loss / accum).backward()
        self.last_lr = self.optimizers[-1].param_groups[0]["lr"]  # the rate of this step (logged)
        for opt in self.optimizers:
            self.scaler.unscale_(opt)
        self.last_grad_norm = None  # (clipping measures it; without clipping it is not computed)
        if self.cfg.grad_clip > 0:
            self.last_grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        for opt in self.optimizers:
            self.scaler.step(opt)
        self.scaler.update()
        with warnings.catch_warnings():  # LambdaLR warns when the scaler skipped the first optimizer step
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
            for scheduler in self.schedulers:
                scheduler.step()
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        # Without a mask, the last micro-batch's loss; with one, this process's part of the step's loss, whose
        # mean over processes is the mean over every counted target of the global batch.
        return loss.detach() if shares is None else step_loss

    def _shares(self, micro_batches: list) -> list[float] | None:
        """With a loss mask, each micro-batch's mean loss is over its own counted targets, and they differ in
        number: weight each by its share of the global batch's count (times the processes, whose gradients DDP
        averages), so that the step follows the mean over every counted target, as one big batch would.
        None: no mask, every micro-batch counts 1 / grad_accum."""
        if len(micro_batches[0]) < 3:
            return None
        counts = torch.stack([batch[2].sum() for batch in micro_batches]).tolist()  # one device sync per step
        world = self.dist.world_size if self.dist else 1
        total = self.dist.sum(sum(counts)) if self.dist else sum(counts)
        return [count * world / max(total, 1.0) for count in counts]

    def _sync(self, last: bool):
        """DDP's gradient all-reduce runs in the last micro-batch's backward; the others skip it."""
        no_sync = getattr(self.eager, "no_sync", None)
        return contextlib.nullcontext() if last or no_sync is None else no_sync()
