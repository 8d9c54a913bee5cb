"""The training loop, top to bottom: data, model, optimizer, then step / log / evaluate / save."""

from __future__ import annotations

import json
import math
import re
import shutil
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from gptlab.corpora import NAMED, load_corpus
from gptlab.data import Batches, TokenData, bits_per_char, check_length, get_tokenizer, prepare
from gptlab.device import autocast, pick_device, setup
from gptlab.errors import GptlabError
from gptlab.models import build_model, model_config
from gptlab.tokenizer import KINDS, load_tokenizer
from gptlab.train import checkpoint as ckpt_io
from gptlab.train.config import TrainConfig, parse_duration, resolve, split_values, to_dict
from gptlab.train.metrics import MetricsLog, ProgressLine, Timer, plot_losses
from gptlab.train.optim import build_optimizers, lr_factor, set_lr

# Values a resumed run may change; everything else must match the checkpoint.
RESUMABLE = {"max_iters", "max_time", "eval_interval", "eval_iters", "log_interval", "device", "compile",
             "threads", "corpus"}


@dataclass
class TrainResult:
    run_dir: Path
    iters: int
    val_loss: float | None
    best_val_loss: float | None
    elapsed: float
    checkpoint: Path | None
    stopped_by: str  # "max_iters" | "max_time" | "interrupt"


def default_run_dir(cfg: TrainConfig) -> Path:
    """runs/CORPUS-TOKENIZER, with CORPUS a named corpus or the stem of the user's path before any glob."""
    corpus = cfg.corpus
    if corpus not in NAMED:
        plain = Path(re.split(r"[*?\[]", corpus)[0] or ".")
        corpus = (plain.stem if plain.suffix else plain.name) or "corpus"
    corpus = re.sub(r"[^\w.-]+", "_", corpus)
    tok = cfg.tokenizer if cfg.tokenizer in KINDS else "custom"
    return Path("runs") / f"{corpus}-{tok}"


MINIMUMS = dict(max_iters=1, batch_size=1, grad_accum=1, eval_interval=1, eval_iters=1, log_interval=1,
                warmup_iters=0, threads=0, seed=0, min_lr=0.0, weight_decay=0.0, grad_clip=0.0)


def check_values(cfg: TrainConfig, model_values: dict) -> None:
    """Values that would otherwise fail deep inside torch (or much later), as one clear message each."""
    for name, low in MINIMUMS.items():
        if not getattr(cfg, name) >= low:
            raise GptlabError(f"--{name.replace('_', '-')} must be at least {low}")
    if cfg.seed >= 2**63:
        raise GptlabError("--seed must be below 2**63")
    for name in ("lr", "muon_lr"):
        if not getattr(cfg, name) > 0:
            raise GptlabError(f"--{name.replace('_', '-')} must be positive")
    if cfg.min_lr > cfg.lr:
        raise GptlabError(f"--min-lr ({cfg.min_lr}) cannot be above --lr ({cfg.lr}): the schedule decays to it")
    if not (0 <= cfg.beta1 < 1 and 0 <= cfg.beta2 < 1):
        raise GptlabError("--beta1 and --beta2 must be in [0, 1)")
    try:  # the model's own checks, before any corpus is downloaded or tokenized
        model_config(cfg.arch, vocab_size=1, **model_values)
    except (TypeError, ValueError) as e:
        raise GptlabError(f"invalid model config: {e}") from None


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """A new run needs an empty (or new) folder; --overwrite may only clear a folder that holds a gptlab run."""
    if resume or not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise GptlabError(f"--out {run_dir} is a file, not a folder")
    if not any(run_dir.iterdir()):
        return
    if not ((run_dir / ckpt_io.CKPT_DIR).is_dir() or _is_run_config(run_dir / "config.json")):
        raise GptlabError(f"--out {run_dir} is a folder with other files in it; choose a new or empty folder")
    if not overwrite:
        raise GptlabError(f"{run_dir} already holds a trained run; pass --resume to continue it, "
                          f"--overwrite to start over, or another --out")


def train_step(fwd, model, optimizers, next_batch, cfg, device, dtype, scaler=None) -> torch.Tensor:
    """One optimizer step over cfg.grad_accum micro-batches; returns the last micro-batch's loss."""
    for _ in range(cfg.grad_accum):
        x, y = next_batch()
        with autocast(device, dtype):
            _, loss = fwd(x, y)
        scaled = loss / cfg.grad_accum
        (scaler.scale(scaled) if scaler is not None else scaled).backward()
    if scaler is not None:
        for opt in optimizers:
            scaler.unscale_(opt)
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    for opt in optimizers:
        if scaler is not None:
            scaler.step(opt)
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.update()
    return loss


@torch.no_grad()
def evaluate(model, sources: dict[str, Batches], iters: int, seed: int, device, dtype) -> dict[str, float]:
    """Mean loss over the same `iters` batches of each split every time (a fixed seed)."""
    model.eval()
    out = {}
    for split, batches in sources.items():
        batches.generator.manual_seed(seed)
        total = 0.0
        for _ in range(iters):
            x, y = batches.next()
            with autocast(device, dtype):
                _, loss = model(x, y)
            total += loss.item()
        out[split] = total / iters
    model.train()
    return out


class StopFlag:
    """Ctrl-C sets a flag that the loop reads between steps (a second Ctrl-C interrupts at once)."""

    def __init__(self):
        self.set = False
        self.previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.set:
            raise KeyboardInterrupt
        self.set = True

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def _is_run_config(path: Path) -> bool:
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(saved, dict) and {"train", "model"} <= set(saved)


def _resume_values(run_dir: Path, overrides: dict) -> tuple[dict, Path]:
    ckpt = ckpt_io.latest_checkpoint(run_dir)
    if ckpt is None:
        raise GptlabError(f"--resume: {run_dir} holds no checkpoint to resume")
    saved = ckpt_io.read_config(ckpt)
    try:
        values = {**saved["train"], **{k: v for k, v in saved["model"].items() if k != "vocab_size"}}
    except (KeyError, TypeError, AttributeError):
        raise GptlabError(f"{ckpt / 'config.json'} is not a gptlab run configuration") from None
    changed = sorted(k for k, v in overrides.items() if k not in RESUMABLE and values.get(k) != v)
    if changed:
        raise GptlabError(f"--resume keeps the run's configuration; cannot change {', '.join(changed)} "
                          f"(only {', '.join(sorted(RESUMABLE))})")
    values.update(overrides)
    return values, ckpt


def train(overrides: dict | None = None, *, preset: str | None = None, out: str | Path | None = None,
          resume: bool = False, overwrite: bool = False, mirror: str | Path | None = None,
          quiet: bool = False, stop_after: int | None = None) -> TrainResult:
    """Train a model from flat config values (TrainConfig's and the model's) and return what happened.

    stop_after: pause after this many iterations as Ctrl-C would (save, return); for tests and demos.
    """
    overrides = dict(overrides or {})
    # --- configuration -------------------------------------------------------------------------------
    resume_ckpt = None
    if resume:
        if out is None:
            raise GptlabError("--resume needs --out RUN_DIR, the run to continue")
        if preset is not None:
            raise GptlabError("--resume continues with the run's own configuration; leave out --preset")
        values, resume_ckpt = _resume_values(Path(out), overrides)
        cfg, model_values = split_values(values)
    else:
        device_hint = pick_device(overrides.get("device", "auto")).type
        cfg, model_values = resolve(preset, overrides, device_hint)
        if overrides.get("vocab_size") is not None and cfg.tokenizer not in ("word", "bpe"):
            fixed = "the char tokenizer's vocabulary is the corpus's characters" if cfg.tokenizer == "char" else \
                "a tokenizer file brings its own vocabulary"
            raise GptlabError(f"--vocab-size applies to the word and bpe tokenizers; {fixed}")
    run_dir = Path(out) if out is not None else default_run_dir(cfg)
    prepare_run_dir(run_dir, resume, overwrite)
    max_time = parse_duration(cfg.max_time)
    check_values(cfg, model_values)

    device, dtype = setup(cfg.device, cfg.dtype, cfg.threads, cfg.seed)

    # --- data and tokenizer --------------------------------------------------------------------------
    corpus = load_corpus(cfg.corpus, mirror=mirror)
    if resume_ckpt is not None:
        tokenizer = load_tokenizer(resume_ckpt / "tokenizer.json")
    else:
        tokenizer = get_tokenizer(corpus, cfg.tokenizer, cfg.vocab_size, cfg.val_fraction)
    data: TokenData = prepare(corpus, tokenizer, cfg.val_fraction)
    corpus_name = corpus.name
    del corpus  # training reads the token files; holding the text would cost its size in memory for the whole run

    # --- model and optimizer -------------------------------------------------------------------------
    mcfg = model_config(cfg.arch, vocab_size=tokenizer.vocab_size, **model_values)  # checked above
    block_size = mcfg.block_size
    check_length(data, block_size, cfg.val_fraction)
    model = build_model(cfg.arch, mcfg).to(device)
    optimizers = build_optimizers(model, cfg)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    batches = Batches(data.train, block_size, cfg.batch_size, device, seed=cfg.seed)
    eval_sources = {"train": batches.sibling()}  # evaluate() reseeds it; the tokens are shared
    if len(data.val) > block_size:
        eval_sources["val"] = Batches(data.val, block_size, cfg.batch_size, device, cfg.seed)
    config_dict = to_dict(cfg, asdict(mcfg))

    it, elapsed_before, best_val = 0, 0.0, None
    if resume_ckpt is not None:
        ckpt_io.load_weights(model, resume_ckpt)
        state = ckpt_io.load_trainer_state(resume_ckpt)
        if len(state["optimizers"]) != len(optimizers):
            raise GptlabError(f"checkpoint {resume_ckpt} was written with another optimizer")
        for opt, s in zip(optimizers, state["optimizers"]):
            try:
                opt.load_state_dict(s)
            except ValueError as e:
                raise GptlabError(f"checkpoint {resume_ckpt} cannot be resumed: {e}") from None
        batches.load_state_dict(state["batches"])
        torch.set_rng_state(state["rng_cpu"])
        if device.type == "cuda" and state.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(state["rng_cuda"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        it, elapsed_before, best_val = state["iter"], state["elapsed"], state["best_val_loss"]

    if not resume:  # everything was checked: only now clear what an overwritten run left
        shutil.rmtree(run_dir / ckpt_io.CKPT_DIR, ignore_errors=True)
        for name in ("config.json", "tokenizer.json", "metrics.jsonl", "loss.png"):
            (run_dir / name).unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(config_dict, indent=1))
    tokenizer.save(run_dir / "tokenizer.json")
    metrics = MetricsLog(run_dir / "metrics.jsonl", resume_from=it if resume else None)

    fwd = model
    if cfg.compile:
        fwd = torch.compile(model)

    def save(at: int, val_loss: float | None) -> Path:
        state = dict(iter=at, elapsed=timer.elapsed(), best_val_loss=best_val,
                     optimizers=[o.state_dict() for o in optimizers], batches=batches.state_dict(),
                     rng_cpu=torch.get_rng_state(),
                     rng_cuda=torch.cuda.get_rng_state() if device.type == "cuda" else None,
                     scaler=scaler.state_dict() if scaler is not None else None, val_loss=val_loss)
        return ckpt_io.save_checkpoint(run_dir, at, model, state, config_dict, tokenizer)

    def eval_and_save(at: int) -> tuple[float | None, Path]:
        nonlocal best_val, last_eval_iter
        last_eval_iter = at
        losses = evaluate(fwd, eval_sources, cfg.eval_iters, cfg.seed + 1, device, dtype)
        val = losses.get("val")
        for name, value in losses.items():
            if not math.isfinite(value):
                raise _non_finite(f"{name} loss", value, at, run_dir)
        record = dict(iter=at, train_loss=losses["train"], time=round(timer.elapsed(), 3), unix_time=time.time())
        if val is not None:
            best_val = val if best_val is None else min(best_val, val)
            record.update(val_loss=val, val_ppl=math.exp(min(val, 50.0)),
                          val_bpc=bits_per_char(val, data.val_chars_per_token))
        metrics.write(**record)
        shown = f"val {val:.4f} (bpc {record['val_bpc']:.3f})" if val is not None else "no validation split"
        progress.message(f"iter {at}: train {losses['train']:.4f}, {shown}, {timer.elapsed():.1f}s")
        return val, save(at, val)

    # --- the loop ------------------------------------------------------------------------------------
    tokens_per_iter = cfg.batch_size * cfg.grad_accum * block_size
    progress = ProgressLine(cfg.max_iters, it, quiet=quiet)
    progress.message(f"training {cfg.arch} ({model.num_params() / 1e6:.2f}M parameters) on {corpus_name} "
                     f"with a {tokenizer.kind} tokenizer ({tokenizer.vocab_size} tokens), {device.type}, "
                     f"{str(dtype).replace('torch.', '')}; run folder {run_dir}")
    timer = Timer(elapsed_before)
    last_log_time, last_log_iter = timer.elapsed(), it
    stopped_by, val_loss, last_ckpt, last_eval_iter = "max_iters", None, None, None
    compiled_ok = not cfg.compile
    try:
        with StopFlag() as stop:
            while it < cfg.max_iters:
                if max_time is not None and timer.elapsed() >= max_time:
                    stopped_by = "max_time"
                    break
                set_lr(optimizers, lr_factor(it, timer.elapsed(), cfg, max_time))
                try:
                    loss = train_step(fwd, model, optimizers, batches.next, cfg, device, dtype, scaler)
                except Exception as e:  # torch.compile is optional: fall back to eager, once
                    if compiled_ok or isinstance(e, GptlabError):
                        raise
                    progress.message(f"torch.compile failed ({str(e).splitlines()[0][:120]}); continuing without it")
                    for opt in optimizers:
                        opt.zero_grad(set_to_none=True)
                    fwd = model
                    loss = train_step(fwd, model, optimizers, batches.next, cfg, device, dtype, scaler)
                compiled_ok = True
                it += 1

                if it % cfg.log_interval == 0 or it == cfg.max_iters:
                    loss_value = loss.item()
                    if not math.isfinite(loss_value):
                        raise _non_finite("training loss", loss_value, it, run_dir)
                    now = timer.elapsed()
                    tps = tokens_per_iter * (it - last_log_iter) / max(1e-9, now - last_log_time)
                    last_log_time, last_log_iter = now, it
                    metrics.write(iter=it, loss=loss_value, lr=optimizers[-1].param_groups[0]["lr"],
                                  tokens_per_s=round(tps, 1), time=round(now, 3))
                    total = cfg.max_iters
                    if max_time is not None and now > 0:
                        total = min(total, int(it / now * max_time) + 1)
                    progress.update(it, loss_value, tps, max(total, it))
                if it % cfg.eval_interval == 0 and it < cfg.max_iters:
                    val_loss, last_ckpt = eval_and_save(it)
                    last_log_time, last_log_iter = timer.elapsed(), it  # tokens/s counts training alone
                if it < cfg.max_iters and (stop.set or (stop_after is not None and it >= stop_after)):
                    stopped_by = "interrupt"
                    break
        if stopped_by == "interrupt":
            if not math.isfinite(loss.item()):  # never save weights that a NaN step has already spoiled
                raise _non_finite("training loss", loss.item(), it, run_dir)
            progress.message(f"interrupted at iteration {it}: saving a checkpoint to resume from")
            last_ckpt = save(it, None)
        elif it != last_eval_iter:  # (a time limit right after an evaluation needs no second one)
            val_loss, last_ckpt = eval_and_save(it)
    finally:
        progress.close()
    if stopped_by != "interrupt":
        failure = plot_losses(run_dir / "metrics.jsonl", run_dir / "loss.png")
        if failure:
            progress.message(f"could not draw loss.png ({failure}); metrics.jsonl has the numbers")
    progress.message(f"done: {it} iterations in {timer.elapsed():.1f}s ({stopped_by}); checkpoint {last_ckpt}")
    return TrainResult(run_dir, it, val_loss, best_val, timer.elapsed(), last_ckpt, stopped_by)


def _non_finite(what: str, value: float, at: int, run_dir: Path) -> GptlabError:
    """The one-line error for a NaN or inf loss: nothing is saved, and the last good checkpoint is named."""
    ckpt = ckpt_io.latest_checkpoint(run_dir)
    last = f"The last good checkpoint, {ckpt}, is intact." if ckpt else "No checkpoint was written yet."
    return GptlabError(f"{what} is {value} at iteration {at}; stopped without saving. {last} "
                       f"Try a lower --lr, or --dtype float32.")
