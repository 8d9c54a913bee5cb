"""The training run, top to bottom.

    plan = plan_run(values, ...)     what to train, from what, into which folder (checked before anything runs)
    trainer = Trainer(plan, dist, source)   data, model, optimizers, batches, the step, progress: the parts
    trainer.train()                  a time budget becomes iterations; then step / log / evaluate / save

The loop itself is Trainer.loop. It is the same for one process and for several under torchrun, where
every process runs it in step with the others and only rank 0 writes.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gptlab import rundir
from gptlab.cores import Threads
from gptlab.data.corpora import load_corpus
from gptlab.data.tokenizer import load_tokenizer
from gptlab.data.tokens import bits_per_char, check_length, get_tokenizer, prepare
from gptlab.device import device_name, pick_device, setup
from gptlab.errors import GptlabError
from gptlab.models import build_model, config_to_dict, make_config, split_section
from gptlab.records import read_config, read_metrics
from gptlab.training.batches import RandomWindows
from gptlab.training.config import (
    PRESETS,
    TrainConfig,
    add_end,
    check_overrides,
    check_values,
    default_preset,
    parse_duration,
    resolve,
    resume_values,
    saved_values,
    split_values,
    to_dict,
)
from gptlab.training.distributed import Distributed
from gptlab.training.evaluate import evaluate
from gptlab.training.memory import MemoryMeter, forecast
from gptlab.training.metrics import MetricsLog, ProgressLine, TensorBoard, Timer, tensorboard_writer
from gptlab.training.optim import build_optimizers, load_state, schedulers
from gptlab.training.step import Stepper
from gptlab.training.stopping import Budget, Cost, Pacer, StopFlag, measure

STATE_FORMAT = 2  # trainer.pt: torch optimizers, the random-number state of every process


@dataclass
class TrainResult:
    run_dir: Path
    iters: int
    val_loss: float | None
    best_val_loss: float | None
    elapsed: float
    checkpoint: Path | None
    stopped_by: str  # "max_iters" | "max_time" | "interrupt"


@dataclass
class Plan:
    """What a run will do, fully checked: no file has been touched yet."""

    cfg: TrainConfig
    model: dict  # the model section {"family": ..., its values}; vocab_size comes from the tokenizer
    run_dir: Path
    resume_from: Path | None = None  # the checkpoint a resumed run continues from
    budget: Budget | None = None  # how an earlier part of the run turned its time budget into iterations
    cap: int = 0  # the most iterations a time budget may give
    sections: dict = field(default_factory=dict)  # further sections of config.json (a finetune's, say)
    stopping: str = ""  # what decides when the run ends, and who set it, for its first lines
    force: bool = False  # start even where the memory forecast exceeds what is free

    @property
    def max_time(self) -> float | None:
        return parse_duration(self.cfg.max_time)


def plan_run(values: dict | None = None, *, preset: str | None = None, out: str | Path | None = None,
             resume: bool = False, overwrite: bool = False, check_folder: bool = True) -> Plan:
    """The configuration of a new or resumed run, and its folder's policy, checked before anything is written."""
    overrides = dict(values or {})
    if resume:
        return _plan_resume(overrides, preset, out)
    device_type = pick_device(overrides.get("device", "auto")).type
    cfg, model = resolve(preset, overrides, device_type)
    if "max_iters" in overrides and "max_time" not in overrides:
        cfg.max_time = None  # a count the user gave is the count: a preset's budget does not cut it short
    cfg.max_time = cfg.max_time if parse_duration(cfg.max_time) else None  # ("none" is no budget)
    check_overrides(cfg, model, overrides)
    run_dir = Path(out) if out is not None else rundir.default_run_dir(cfg)
    if check_folder:
        rundir.check_new(run_dir, overwrite)
    check_values(cfg, model)
    preset = preset or default_preset(device_type)
    return Plan(cfg, model, run_dir, cap=cfg.max_iters,
                stopping=stopping_note(cfg, overrides, f"preset {preset}", PRESETS.get(preset, {}).get("max_time")))


def stopping_note(cfg: TrainConfig, given: dict, origin: str, origin_time: str | None = None) -> str:
    """What decides when a new run ends, and who chose it: the user's flags, or `origin` (a preset, say, whose
    own budget origin_time a count given alone leaves out)."""
    def source(name: str) -> str:
        return f"--{name.replace('_', '-')}" if name in given else origin

    if cfg.max_time is not None:
        return (f"stopping: when the time budget of {cfg.max_time} ({source('max_time')}) is spent, "
                f"at most {cfg.max_iters:,} iterations ({source('max_iters')})")
    left_out = f"; {origin}'s {origin_time} budget is left out" if origin_time and "max_time" not in given else ""
    return f"stopping: after {cfg.max_iters:,} iterations ({source('max_iters')}){left_out}"


def _plan_resume(overrides: dict, preset: str | None, out) -> Plan:
    if preset is not None:
        raise GptlabError("--resume continues with the run's own configuration; leave out --preset")
    ckpt = rundir.resume_checkpoint(out)
    saved = read_config(ckpt)
    if isinstance(saved.get("train"), dict) and saved["train"].get("imported"):
        raise GptlabError(f"{out} was imported (gptlab import), not trained here: it has no training to resume; "
                          f"finetune it (gptlab finetune {out} ...)")
    try:
        values = saved_values(saved)
    except GptlabError as e:
        raise GptlabError(f"{ckpt / rundir.CONFIG} is {e}") from None
    cfg, model = split_values(resume_values(values, overrides))
    check_values(cfg, model)
    record = saved.get("budget") if isinstance(saved.get("budget"), dict) else None
    budget = Budget.from_record(record, cfg.warmup_iters, cfg.max_iters) if record else None
    seconds = parse_duration(cfg.max_time)
    if seconds is None or (budget and seconds == budget.seconds):
        cfg.max_time = None  # no budget ("none"), or the same one again: its iterations are already in max_iters
    cap = cfg.max_iters if "max_iters" in overrides or not budget else budget.cap
    if budget and ("max_iters" in overrides or "max_time" in overrides and seconds is None):
        budget.settle_at, budget.fixed = None, True  # the count is the user's now: no settling
    sections = {k: v for k, v in saved.items() if k not in ("train", "model", "budget")}
    stopping = (f"stopping: after {cfg.max_iters:,} iterations" if cfg.max_time is None else
                f"stopping: when the new time budget of {cfg.max_time} is spent")
    if budget and not budget.fixed and cfg.max_time is None:
        stopping = f"stopping: when the time budget of {budget.max_time} is spent (now {cfg.max_iters:,} iterations)"
    return Plan(cfg, model, Path(out), ckpt, budget, cap, sections, stopping)


def _rng_state(device: torch.device) -> dict:
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def _waiter(device: torch.device) -> Callable[[], None]:
    """What waits for the device's queued work before the time is read (the queued steps count in the time too)."""
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def _to_cpu(obj):
    """A copy of a (nested) state with every tensor copied to host memory: a snapshot that costs no GPU memory."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


class Source:
    """What a run learns from and what it trains, passed to the Trainer: its tokenizer and data, its model, its
    batches, and what a checkpoint keeps of the model. The trainer asks in this order: data, model (the
    tokenizer and data are set by then), batches; each method is given the trainer for its plan, configuration,
    device and progress line (and keeps no reference to it). This base class keeps the model as it is: its
    weights in checkpoints, no state of its own, the engine's memory forecast."""

    def data(self, t: Trainer):
        """(tokenizer, data, the corpus's name); called in rank 0 first (a download, a cache)."""
        raise NotImplementedError

    def model(self, t: Trainer):
        """(the model's config, the model on t.device, the tokens a row of a step holds)."""
        raise NotImplementedError

    def batches(self, t: Trainer):
        """The training batches, and the sources evaluation reads ("train", and "val" where there is one)."""
        raise NotImplementedError

    def forecast(self, t: Trainer, parts: dict[str, float], flags: dict[str, str]):
        """The memory forecast's parts and flags, changed for what this source trains (LoRA, say)."""
        return parts, flags

    def load_weights(self, t: Trainer, ckpt: Path) -> None:
        rundir.load_weights(t.model, ckpt)

    def weights(self, t: Trainer) -> torch.nn.Module:
        """The model as a checkpoint stores it."""
        return t.model

    def state(self, t: Trainer) -> dict:
        """What a checkpoint's trainer state keeps beside the weights (LoRA's adapters, say)."""
        return {}

    def restore(self, t: Trainer, state: dict) -> None:
        """Put back what state() kept."""


class TextSource(Source):
    """A corpus read in random windows, and a new model of the plan's family: what `gptlab train` learns from."""

    def __init__(self, mirror: str | Path | None = None):
        self.mirror = mirror

    def data(self, t: Trainer):
        corpus = load_corpus(t.cfg.corpus, mirror=self.mirror)
        if t.plan.resume_from is not None:
            tokenizer = load_tokenizer(t.plan.resume_from / rundir.TOKENIZER)
        else:
            tokenizer = get_tokenizer(corpus, t.cfg.tokenizer, t.cfg.vocab_size, t.cfg.val_fraction)
        data = prepare(corpus, tokenizer, t.cfg.val_fraction)
        return tokenizer, data, corpus.name  # training reads the token files: the text itself is let go

    def model(self, t: Trainer):
        config, model, window = new_model(t)
        check_length(t.data, window, t.cfg.val_fraction)
        return config, model, window

    def batches(self, t: Trainer):
        cfg, dist = t.cfg, t.dist
        args = (t.seq_len, cfg.batch_size, t.device, cfg.seed, dist.rank, dist.world_size)
        batches = RandomWindows(t.data.train, *args)
        sources = {"train": batches.sibling()}  # evaluate() reseeds them; the tokens are shared
        if len(t.data.val) > t.seq_len:
            sources["val"] = RandomWindows(t.data.val, *args)
        return batches, sources


def new_model(t: Trainer):
    """(config, model on t.device, training window) of a new model of the plan's family, its vocabulary the
    tokenizer's; the window is its context, or --seq-len for a family without one."""
    family, values = split_section(t.plan.model)
    config = make_config(family, {**values, "vocab_size": t.tokenizer.vocab_size})
    model = build_model(family, config).to(t.device)
    context, seq_len = model.max_context, t.cfg.seq_len
    if context is None and seq_len is None:
        raise GptlabError(f"--model {family} takes any length: set the training window with --seq-len")
    if context is not None and seq_len not in (None, context):
        raise GptlabError(f"--seq-len is for models without a longest context; --model {family} trains on "
                          f"windows of its context, {context} tokens")
    return config, model, seq_len or context


class Trainer:
    """The parts of one run, built once: data, model, optimizers, batch sources, the stepper, the log; then the run,
    top to bottom in the order it happens: announce, calibrate (a time budget), begin, loop (step, log, evaluate
    and save, settle the budget's count), finish, draw loss.png."""

    def __init__(self, plan: Plan, dist: Distributed, source: Source | None = None, *,
                 mirror: str | Path | None = None, quiet: bool = False, clock: Callable[[], float] = time.perf_counter):
        """source: what the run learns from and trains (default: the plan's corpus, read as text, and a new model);
        mirror: where named corpora and tasks are read from; clock: where the run reads the time (its budget and
        its log), which tests give of their own."""
        self.plan, self.cfg, self.dist, self.clock = plan, plan.cfg, dist, clock
        self.source = source or TextSource(mirror)
        cfg = self.cfg
        device, self.dtype = setup(cfg.device, cfg.dtype, seed=cfg.seed + dist.rank)
        self.device = dist.device(device)
        self.threads = Threads(cfg.threads, follow=self.device.type == "cpu")
        self._sync = _waiter(self.device)
        dist.start(self.device)
        self.progress = ProgressLine(quiet=quiet or not dist.is_main)
        if cfg.tensorboard:
            tensorboard_writer()  # (a missing package stops the run, every process of it, before it starts)
        with dist.main_first():
            self.tokenizer, self.data, self.corpus_name = self.source.data(self)
        self.meter = MemoryMeter(self.device)
        self.mem_base = self.meter.current()  # before the model: what the steps' peak is measured above
        self.forecast_bytes = self.check_memory()  # before anything large is allocated
        self.model_config, self.model, self.seq_len = self.source.model(self)
        if plan.resume_from is not None:
            self.source.load_weights(self, plan.resume_from)  # (whole, before any sharding)
        self.sharded = self._check_fsdp()
        forward = dist.wrap(self.model, self.device, fsdp=self.sharded, dtype=self.dtype)  # (FSDP: in place)
        self.optimizers = build_optimizers(self.model, cfg)  # over the parameters as training holds them
        self.stepper = Stepper(self.model, forward, self.optimizers,
                               schedulers(self.optimizers, cfg, 0), cfg, self.device, self.dtype,
                               notice=self.progress.message, compiled=cfg.compile, dist=dist)
        self.batches, self.eval_sources = self.source.batches(self)
        self.choices = self._choice_items(mirror)  # (a bad task file stops the run before its first step)
        self.it, self.best_val = 0, None
        self.tokens = 0  # tokens trained on so far, every process's (a resume with other processes counts right)
        self.timer, self.metrics, self.last_log = Timer(clock=clock), MetricsLog(None, enabled=False), (0.0, 0)
        self.val_loss, self.last_ckpt, self.last_eval_iter, self.last_loss = None, None, None, None
        self.logged_memory = False
        # (nothing the pacer holds may hold the trainer: a cycle would keep the DDP wrapper, and with it the
        # process group and gloo's threads, alive past the run; see Distributed.close)
        self.pacer = Pacer(plan.budget, self.timer.elapsed, dist.max, self._sync)  # the time budget
        if plan.resume_from is not None:
            self.restore(rundir.load_trainer_state(plan.resume_from), plan.resume_from)

    def check_memory(self) -> float:
        """What the steps will take by gptlab cost's formulas (bytes), known before the model is built. A run that
        would take more than is free (on a CPU, every process of this machine together) stops here, naming the
        flag to change; plan.force (--force) starts it anyway."""
        from gptlab.cost import size

        parts, flags = self.memory_forecast()
        free = self.meter.available()
        sharing = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if self.device.type == "cpu" else 1
        too_much = bool(free) and parts["total"] * sharing > free
        if self.dist.any(too_much) and not self.plan.force:  # (every process decides alike)
            largest = max((k for k in parts if k != "total" and k in flags), key=lambda k: parts[k])
            raise GptlabError(f"the steps would take about {size(parts['total'] * sharing)} for tensors (gptlab "
                              f"cost's forecast, {largest.replace('_', ' ')} the most), more than the {size(free)} "
                              f"free: lower {flags[largest]}, or pass --force to try anyway")
        return parts["total"]

    def memory_forecast(self) -> tuple[dict[str, float], dict[str, str]]:
        """The steps' memory by part, and the flags that make each part smaller (training.memory.forecast)."""
        family, values = split_section(self.plan.model)
        config = make_config(family, {**values, "vocab_size": self.tokenizer.vocab_size})
        shards = self.dist.world_size if self.cfg.fsdp else 1  # (--fsdp: the states split over the processes)
        parts, flags = forecast(family, config, self.cfg, self.device.type, str(self.dtype).removeprefix("torch."),
                                shards)
        return self.source.forecast(self, parts, flags)

    def _check_fsdp(self) -> bool:
        """Whether the model is sharded (--fsdp under torchrun): a family with blocks to shard, and AdamW (Muon
        orthogonalizes whole matrices, which a process no longer holds)."""
        cfg = self.cfg
        if not cfg.fsdp:
            return False
        if not self.model.shard_units():
            raise GptlabError(f"--fsdp shards a transformer block by block; --model {self.model.family} has no "
                              f"blocks: train it without --fsdp (DDP)")
        if cfg.optimizer != "adamw":
            raise GptlabError("--fsdp trains with --optimizer adamw: Muon orthogonalizes whole matrices, and under "
                              "FSDP each process holds a shard of them")
        if not self.dist.active:
            self.progress.message("--fsdp: one process, nothing to shard: training as usual")
        return self.dist.active

    def _choice_items(self, mirror) -> list | None:
        if not self.cfg.eval_choices:
            return None
        from gptlab.tasks.choices import check_items
        from gptlab.tasks.data import load_items

        items = load_items(self.cfg.eval_choices, "test", mirror)[:CHOICE_ITEMS]
        check_items(self.tokenizer, items, "this run")
        return items

    # --- state: what a checkpoint holds, and what calibration puts back ---------------------------------------

    def state(self, gathered: bool = True) -> dict:
        """This process's resumable state (live tensors: copy before changing anything); sharded, the optimizer
        state gathered whole for a checkpoint, or this process's own shards (gathered=False: calibration's
        snapshot, which each process puts back itself)."""
        return dict(iter=self.it, tokens=self.tokens, elapsed=self.timer.elapsed(), best_val_loss=self.best_val,
                    optimizers=self._optimizer_states(gathered), batches=self.batches.state_dict(),
                    scaler=self.stepper.scaler.state_dict(),
                    pace_since=list(self.pacer.since) if self.pacer.since else None, **self.source.state(self))

    def _optimizer_states(self, gathered: bool) -> list[dict]:
        """Each optimizer's state; sharded and gathered, whole and keyed by parameter name (every process takes
        part; rank 0 holds it)."""
        if self.sharded and gathered:
            return [self.dist.full_optimizer_state(self.model, o) for o in self.optimizers]
        return [o.state_dict() for o in self.optimizers]

    def checkpoint_weights(self) -> torch.nn.Module | None:
        """The model as a checkpoint stores it (the source's: LoRA's merged, say); sharded, a plain model holding
        the weights gathered whole, which one process loads for sampling, finetuning and export (every process
        takes part; rank 0 gets it)."""
        if not self.sharded:
            return self.source.weights(self) if self.dist.is_main else None
        full = self.dist.full_weights(self.model)
        return self.plain_model(full) if self.dist.is_main else None

    def plain_model(self, state: dict[str, torch.Tensor]) -> torch.nn.Module:
        """A plain model of the run's family and config holding `state` (whole weights by name), built without
        moving the run's random numbers: what a checkpoint stores of a sharded or an adapted model."""
        with torch.random.fork_rng(devices=[]):
            plain = build_model(self.plan.model["family"], self.model_config)
        plain.load_state_dict(state)
        return plain

    def restore(self, state: dict, source: Path | None = None) -> None:
        """Continue from a checkpoint's state (source: its folder) or from calibration's snapshot."""
        if state.get("format", 1) > STATE_FORMAT:
            raise GptlabError(f"checkpoint {source} was written by a newer gptlab; update gptlab to resume it")
        self.source.restore(self, state)
        if len(state["optimizers"]) != len(self.optimizers):
            raise GptlabError(f"checkpoint {source} was written with another optimizer")
        for opt, saved in zip(self.optimizers, state["optimizers"]):
            try:
                if self.sharded and source is not None:  # (a checkpoint's, gathered whole)
                    self.dist.load_optimizer_state(self.model, opt, saved)
                    continue
                load_state(opt, saved)
            except ValueError as e:
                raise GptlabError(f"checkpoint {source} cannot be resumed: {e}") from None
        self.it, self.best_val = state["iter"], state["best_val_loss"]
        per_process = self.tokens_per_iter // self.dist.world_size  # older checkpoints: from the processes they had
        self.tokens = state.get("tokens", self.it * per_process * state.get("world_size", self.dist.world_size))
        self.timer.restart(state["elapsed"])
        saved_pace = state.get("pace_since") if source is not None else None  # (calibration starts it anew)
        self.pacer.since = tuple(saved_pace) if saved_pace else None
        self.stepper.schedulers = schedulers(self.optimizers, self.cfg, self.it)
        self.batches.load_state_dict(state["batches"])
        if state.get("scaler"):
            self.stepper.scaler.load_state_dict(state["scaler"])
        self._restore_rng(state)

    def _restore_rng(self, state: dict) -> None:
        if "rng" not in state:  # gptlab 0.1 saved one process's state
            state = dict(rng=[{"cpu": state["rng_cpu"], "cuda": state.get("rng_cuda")}])
        rng = state["rng"]
        if len(rng) != self.dist.world_size:
            self.progress.message(f"continuing a run of {len(rng)} process(es) with {self.dist.world_size}: the "
                                  f"global batch, the data order and dropout's random numbers change")
            torch.manual_seed(self.cfg.seed + self.dist.rank + self.it)
            return
        mine = rng[self.dist.rank]
        torch.set_rng_state(mine["cpu"])
        if self.device.type == "cuda" and mine.get("cuda") is not None:
            torch.cuda.set_rng_state(mine["cuda"], self.device)

    def save(self, val_loss: float | None) -> Path:
        """A checkpoint at the current step; every process takes part (its random numbers), rank 0 writes."""
        rng = self.dist.gather(_rng_state(self.device))
        path = rundir.checkpoint_path(self.plan.run_dir, self.it)
        state, weights = self.state(), self.checkpoint_weights()  # (sharded: every process gathers them)
        if self.dist.is_main:
            state = dict(state, rng=rng, val_loss=val_loss, world_size=self.dist.world_size, format=STATE_FORMAT)
            path = rundir.save_checkpoint(self.plan.run_dir, self.it, weights, state, self.config(), self.tokenizer)
        self.last_ckpt = path
        return path

    def config(self) -> dict:
        config = to_dict(self.cfg, config_to_dict(self.plan.model["family"], self.model_config))
        config.update(self.plan.sections)
        if self.pacer.budget:
            config["budget"] = self.pacer.budget.record()
        return config

    # --- the run ------------------------------------------------------------------------------------------------

    def train(self, stop_after: int | None = None) -> TrainResult:
        self.announce()
        if self.plan.max_time is not None:
            self.calibrate(self.plan.max_time)
        self.begin()
        try:
            with StopFlag() as stop:
                stopped_by = self.loop(stop, stop_after)
                self.finish(stopped_by)
        finally:
            self.progress.close()
            self.metrics.close()
        if stopped_by != "interrupt" and self.dist.is_main:
            self.draw_losses()
        self.progress.message(f"done: {self.it} iterations in {self.timer.elapsed():.1f}s ({stopped_by}); "
                              f"checkpoint {self.last_ckpt}")
        return TrainResult(self.plan.run_dir, self.it, self.val_loss, self.best_val, self.timer.elapsed(),
                           self.last_ckpt, stopped_by)

    def announce(self) -> None:
        cfg, world = self.cfg, self.dist.world_size
        self.progress.message(
            f"training {self.plan.model['family']} ({self.model.num_params() / 1e6:.2f}M parameters) on "
            f"{self.corpus_name} with a {self.tokenizer.kind} tokenizer ({self.tokenizer.vocab_size} tokens), "
            f"{self.device.type}, {str(self.dtype).replace('torch.', '')}; run folder {self.plan.run_dir}")
        self.progress.message(
            f"global batch: {world} process(es) x {cfg.batch_size} sequences x {cfg.grad_accum} micro-batch(es) "
            f"x {self.seq_len} tokens = {self.tokens_per_iter:,} tokens per step")
        self.progress.message(self.threads.note)
        if self.plan.stopping:
            self.progress.message(self.plan.stopping)
        self.announce_memory()

    def announce_memory(self) -> None:
        free = self.meter.available()
        self.progress.message(f"memory: the steps will take about {self.forecast_bytes / 1e6:,.0f} MB for tensors "
                              f"(gptlab cost)" + (f", of {free / 1e6:,.0f} MB free" if free else ""))

    def calibrate(self, max_time: float) -> None:
        """Turn the time budget into a first iteration count (gptlab.training.stopping), and record it."""
        snapshot = _to_cpu(dict(self.state(gathered=False), rng=[_rng_state(self.device)] * self.dist.world_size,
                                model=self.model.state_dict()))
        batches = min(2, self.cfg.eval_iters)  # an evaluation of `batches`, scaled to eval_iters, per eval_interval
        extras = [(lambda: self.evaluate(batches), self.cfg.eval_iters / batches / self.cfg.eval_interval),
                  (self._scratch_checkpoint, 1 / self.cfg.eval_interval)]
        cost = measure(lambda: self.stepper(self.batches), extras, self._sync, self.cfg.compile, self.clock)
        cost = Cost(self.dist.max(cost.step), self.dist.max(cost.overhead))  # every process: the same count
        elapsed = self.dist.max(self.timer.elapsed())
        budget = Budget.first(self.cfg.max_time, max_time, self.plan.cap, cost, elapsed, self.it)
        cfg = self.cfg
        cfg.warmup_iters = budget.shorten_warmup(cfg.warmup_iters)
        budget.plan(cfg.warmup_iters, cfg.eval_interval)
        cfg.max_iters, cfg.max_time, cfg.schedule_ends = budget.iters, None, None  # the run follows iterations
        self.pacer.budget = budget
        self.model.load_state_dict(snapshot.pop("model"))
        self.restore(snapshot)  # the schedulers are rebuilt for the new max_iters
        self.timer.restart(elapsed)
        shortened = "" if budget.warmup_from is None else \
            f"; shorter than the warmup's {budget.warmup_from}, which is now {cfg.warmup_iters}"
        later = f"about {budget.iters} iterations, to be settled at iteration {budget.settle_at}" if \
            budget.settle_at else f"{budget.iters} iterations (to replay: {self.replay_flags()})"
        self.progress.message(f"time budget {budget.max_time}: {cost.per_iter:.4f} s per iteration, so {later}"
                              f"{shortened}; settled again at each evaluation")

    def _scratch_checkpoint(self) -> None:
        """A checkpoint written to a temporary folder and removed: what saving costs, for the time budget."""
        state, weights = self.state(), self.checkpoint_weights()  # (sharded: every process gathers them)
        if self.dist.is_main:
            with tempfile.TemporaryDirectory(prefix="gptlab-calibration-") as scratch:
                rundir.save_checkpoint(scratch, self.it, weights, state, self.config(), self.tokenizer)

    def begin(self) -> None:
        """Write the run folder's files (an overwritten run's are cleared only now) and open the log."""
        resumed = self.plan.resume_from is not None
        run_dir = self.plan.run_dir
        if self.dist.is_main:
            if not resumed:
                rundir.clear(run_dir)
            rundir.write_run_files(run_dir, self.config(), self.tokenizer)
        start = self.it if resumed else None
        board = TensorBoard(run_dir / rundir.BOARD, start) if self.cfg.tensorboard and self.dist.is_main else None
        self.metrics = MetricsLog(run_dir / rundir.METRICS, resume_from=start, enabled=self.dist.is_main, board=board)
        self.progress.start(self.cfg.max_iters, self.it)

    @property
    def tokens_per_iter(self) -> int:
        return self.dist.world_size * self.cfg.batch_size * self.cfg.grad_accum * self.seq_len

    def loop(self, stop: StopFlag, stop_after: int | None) -> str:
        """Step, log, evaluate and save until the iterations run out or the run is stopped."""
        cfg = self.cfg
        self.last_log = (self.timer.elapsed(), self.it)
        self.pacer.begin(self.it, cfg.max_iters)
        self.meter.reset()  # the peak memory logged is the steps' (evaluations and checkpoints reset it)
        while self.it < cfg.max_iters:
            self.last_loss = self.stepper(self.batches)
            self.it += 1
            self.tokens += self.tokens_per_iter
            pace = self.pacer.after_step(self.it)
            if pace:
                self.settle(pace)
            if self.it % cfg.log_interval == 0 or self.it == cfg.max_iters:
                self.log_step()
            if self.it % cfg.eval_interval == 0 and self.it < cfg.max_iters:
                self.evaluate_and_save()
            stopping = stop.set or (stop_after is not None and self.it >= stop_after)
            if self.it < cfg.max_iters and self.dist.any(stopping):
                return "interrupt"
        return "max_time" if self.pacer.budget and self.pacer.budget.iters == cfg.max_iters else "max_iters"

    def log_step(self) -> None:
        loss = self.dist.mean(self.last_loss)
        if not math.isfinite(loss):
            raise self._non_finite("training loss", loss)
        now = self.timer.elapsed()
        last_time, last_iter = self.last_log
        tps = self.tokens_per_iter * (self.it - last_iter) / max(1e-9, now - last_time)
        self.last_log = (now, self.it)
        norm = self.stepper.last_grad_norm  # (left out where clipping is off, or fp16's scaler skipped the step)
        norm = {"grad_norm": round(float(norm), 6)} if norm is not None and torch.isfinite(norm) else {}
        self.metrics.write(iter=self.it, tokens=self.tokens, loss=loss, lr=self.stepper.last_lr, **norm,
                           tokens_per_s=round(tps, 1), step_s=round(self.tokens_per_iter / tps, 6),
                           time=round(now, 3), **self.measured_memory())
        self.progress.update(self.it, loss, tps, self.cfg.max_iters)
        moved = self.threads.adjust()  # another process came or went: follow with the thread count
        if moved:
            self.progress.message(moved)

    def measured_memory(self) -> dict:
        """The steps' peak memory (bytes, the largest of the processes'), and once per process what it stands on:
        the memory before the model was built, the device, the number format (gptlab cost checks against these)."""
        peak = self.meter.peak()
        if peak is None or self.mem_base is None:  # (the same on every process: one device type)
            return {}
        record = dict(peak_mem=int(self.dist.max(peak)))
        if not self.logged_memory:
            self.logged_memory = True
            record.update(mem_base=int(self.dist.max(self.mem_base)), mem_scope=self.meter.scope,
                          device=device_name(self.device), dtype=str(self.dtype).removeprefix("torch."),
                          world_size=self.dist.world_size)
        return record

    def evaluate(self, iters: int | None = None) -> dict[str, float]:
        return evaluate(self.stepper.forward, self.eval_sources, iters or self.cfg.eval_iters, self.cfg.seed + 1,
                        self.device, self.dtype, self.dist)

    def choice_accuracy(self) -> float:
        """The acc_norm of the model as it is now on the --eval-choices items."""
        from types import SimpleNamespace

        from gptlab.tasks.choices import evaluate_choices

        now = SimpleNamespace(model=self.model, tokenizer=self.tokenizer)
        return evaluate_choices(now, "", self.cfg.eval_choices, self.choices).acc_norm

    def evaluate_and_save(self) -> None:
        self.last_eval_iter, started = self.it, self.timer.elapsed()
        losses = self.evaluate()
        for name, value in losses.items():
            if not math.isfinite(value):
                raise self._non_finite(f"{name} loss", value)
        val = losses.get("val")
        record = dict(iter=self.it, tokens=self.tokens, train_loss=losses["train"],
                      time=round(self.timer.elapsed(), 3), unix_time=time.time())
        if val is not None:
            self.best_val = val if self.best_val is None else min(self.best_val, val)
            record.update(val_loss=val, val_ppl=math.exp(min(val, 50.0)),
                          val_bpc=bits_per_char(val, self.data.val_chars_per_token))
        if self.choices:
            record.update(choices_acc_norm=self.choice_accuracy(), choices_task=self.cfg.eval_choices)
        self.metrics.write(**record)
        shown = f"val {val:.4f} (bpc {record['val_bpc']:.3f})" if val is not None else "no validation split"
        shown += f", choices {record['choices_acc_norm']:.1%}" if self.choices else ""
        self.progress.message(f"iter {self.it}: train {losses['train']:.4f}, {shown}, {self.timer.elapsed():.1f}s")
        self.val_loss = val
        pace = self.pacer.after_evaluation(self.it) if self.pacer.active and self.it < self.cfg.max_iters else None
        if pace:
            self.settle(pace)  # before the checkpoint, which a resumed run continues from
        self.save(val)
        self.meter.reset()
        self.last_log = (self.timer.elapsed(), self.it)  # tokens/s counts training alone
        self.pacer.eval_seconds += self.last_log[0] - started

    def settle(self, pace: tuple[float, str, bool]) -> None:
        """Move the count to what the pacer's pace gives (seconds per iteration, over what, whether it is the first
        settlement; never inside warmup); past warmup, the decay runs on from where it is to the new end, which
        the configuration records."""
        per_iter, over, first = pace
        cfg, elapsed = self.cfg, self.dist.max(self.timer.elapsed())
        old = cfg.max_iters
        iters = self.pacer.budget.settle(self.it, elapsed, per_iter, least=cfg.warmup_iters + 1, first=first)
        if iters is None:
            return  # the pace goes on being measured over a longer window, and so with less noise
        self.pacer.settled(elapsed, self.it)
        if self.it > cfg.warmup_iters and iters != old:
            cfg.schedule_ends = add_end(cfg.schedule_ends, self.it, old)
        cfg.max_iters = iters
        self.stepper.schedulers = schedulers(self.optimizers, cfg, self.it)  # the next step's rate, on the new end
        if self.dist.is_main:
            rundir.write_run_files(self.plan.run_dir, self.config(), self.tokenizer)
        self.progress.message(f"time budget {self.pacer.budget.max_time}: {per_iter:.4f} s per iteration {over}, so "
                              f"{iters} iterations (to replay: {self.replay_flags()})")

    def replay_flags(self) -> str:
        """The flags that replay the run without its budget: the count, and what the budget changed of the
        schedule (a shortened warmup, the moved ends of the decay)."""
        cfg = self.cfg
        warmup = "" if self.pacer.budget.warmup_from is None else f" --warmup-iters {cfg.warmup_iters}"
        ends = f" --schedule-ends {cfg.schedule_ends}" if cfg.schedule_ends else ""
        return f"--max-iters {cfg.max_iters} --max-time none{warmup}{ends}"

    def finish(self, stopped_by: str) -> None:
        if stopped_by == "interrupt":
            loss = self.dist.mean(self.last_loss)
            if not math.isfinite(loss):  # never save weights that a NaN step has already spoiled
                raise self._non_finite("training loss", loss)
            self.progress.message(f"interrupted at iteration {self.it}: saving a checkpoint to resume from")
            self.save(None)
            self.dist.barrier()  # no process leaves (and ends the run for torchrun) before rank 0 has saved
        elif self.it != self.last_eval_iter:  # (a run that just evaluated needs no second evaluation)
            self.evaluate_and_save()

    def draw_losses(self) -> None:
        """loss.png from metrics.jsonl, in this process (gptlab.pictures changes no global state); a picture that
        cannot be drawn is reported in one line, and the run has still finished."""
        import warnings

        from gptlab import pictures

        run_dir = self.plan.run_dir
        try:
            with warnings.catch_warnings():  # (a glyph the font lacks, in a run folder's name, say: not the user's)
                warnings.simplefilter("ignore")
                pictures.losses(read_metrics(run_dir / rundir.METRICS), run_dir / rundir.PLOT)
        except Exception as e:  # (matplotlib missing or broken, a full disk: the numbers are in metrics.jsonl)
            self.progress.message(f"could not draw {rundir.PLOT} ({type(e).__name__}: {e}); "
                                  f"{rundir.METRICS} has the numbers")

    def _non_finite(self, what: str, value: float) -> GptlabError:
        """The one-line error for a NaN or inf loss: nothing is saved, and the last good checkpoint is named."""
        ckpt = rundir.newest_intact(self.plan.run_dir)
        last = f"The last good checkpoint, {ckpt}, is intact." if ckpt else "No checkpoint was written yet."
        return GptlabError(f"{what} is {value} at iteration {self.it}; stopped without saving. {last} "
                           f"Try a lower --lr, or --dtype float32.")


def _check_same_kind(plan: Plan) -> None:
    """A resumed run goes on learning what it learned: pairs, or text."""
    from gptlab.data.parallel import is_parallel

    on_pairs = "pairs" in plan.sections
    if on_pairs != is_parallel(plan.cfg.corpus):
        raise GptlabError(f"{plan.run_dir} was trained on {'pairs' if on_pairs else 'text'}; --corpus "
                          f"{plan.cfg.corpus} is {'text' if on_pairs else 'pairs'}: resume it on "
                          f"{'pairs' if on_pairs else 'text'}")


def source_for(corpus: str, family: str, mirror: str | Path | None = None, data: str | None = None) -> Source:
    """What a run learns from: a prepared folder's token shards (data); else its corpus, text read in windows,
    pairs (a parallel corpus) one pair a row."""
    from gptlab.data.parallel import is_parallel

    if data:
        from gptlab.training.shards import ShardSource

        return ShardSource(data)

    if is_parallel(corpus):
        from gptlab.training.pairs import PairSource

        return PairSource(mirror)
    if family == "seq2seq":
        raise GptlabError(f"--model seq2seq learns from pairs, source -> target; {corpus} is text. Give a parallel "
                          f"corpus: tatoeba-da-en, numbers-da, reverse, or a .tsv or .jsonl file of pairs")
    return TextSource(mirror)


CHOICE_ITEMS = 100  # --eval-choices items scored at each evaluation


def train(values: dict | None = None, *, preset: str | None = None, out: str | Path | None = None,
          resume: bool = False, overwrite: bool = False, mirror: str | Path | None = None,
          quiet: bool = False, stop_after: int | None = None, force: bool = False) -> TrainResult:
    """Train a model from flat config values (the command line's flags, with underscores) and return what happened.

    Under torchrun every process calls this; each trains its share of the global batch and rank 0 writes.
    stop_after: pause after this many iterations as Ctrl-C would (save, return); for tests and demos.
    force: start even where the memory forecast is more than is free.
    """
    plan = plan_run(values, preset=preset, out=out, resume=resume, overwrite=overwrite)
    plan.force = force
    if "finetune" in plan.sections:
        raise GptlabError(f"{out} is a finetuned run; continue it with gptlab finetune --out {out} --resume")
    if resume:
        _check_same_kind(plan)
    dist = Distributed.from_env()
    try:
        source = source_for(plan.cfg.corpus, plan.model["family"], mirror, plan.cfg.data)
        result = Trainer(plan, dist, source, mirror=mirror, quiet=quiet).train(stop_after)
        dist.barrier()  # every process ends the run together (rank 0 was still drawing loss.png)
        return result
    finally:
        dist.close()
