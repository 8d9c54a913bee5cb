"""A run's loss curves as numbers: what `gptlab plot` draws, read from the run folder without torch.

    curves = load_curves("runs/shakespeare-char")     # a Curves: train and val points, tokens per step, ...
    y, why = choose_y([a, b], "auto")                  # "bpc" where the runs' tokenizers differ, else "loss"
    xs, ys = series(curves, "train", x="tokens", y="bpc", smooth=10)
    numbers = to_json([a, b], x="steps", y=y, split="both", smooth=1)

Every point has its step, the tokens trained on by then, the wall time ("time" in
metrics.jsonl: seconds since the run began, a resumed run's included), its loss in nats per token and, where
the run evaluated a validation split, bits per character. A validation point's bits per character is the
val_bpc the run wrote; a training point's is its loss times the run's own factor val_bpc / val_loss
(1 / (ln 2 x characters per validation token)).

Tokens are the "tokens" the trainer writes into every record (every process's, counted across resumes).
Runs written before it did have none: their tokens are step x batch_size x grad_accum x window (the
model's block_size, or train.seq_len for a recurrent net) for one process, and a note says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from gptlab.errors import GptlabError
from gptlab.records import CONFIG, METRICS, WEIGHTS, is_number, read_config, read_metrics

X_AXES = ("steps", "tokens", "time")
Y_AXES = ("loss", "bpc", "choices", "auto")
SPLITS = ("train", "val", "both")
X_LABELS = {"steps": "step", "tokens": "tokens seen", "time": "wall time (s)"}
X_FIELDS = {"steps": "step", "tokens": "tokens", "time": "time"}


@dataclass
class Point:
    step: int
    tokens: int  # trained on by the end of this step
    time: float | None  # seconds since the run began ("time" in metrics.jsonl)
    loss: float  # nats per token
    bpc: float | None  # bits per character; None where the run has no validation bits per character
    choices: float | None = None  # an evaluation's multiple-choice acc_norm (train --eval-choices), where it has one


@dataclass
class Curves:
    name: str  # the run folder's name
    path: Path
    tokenizer: str  # config.json's train.tokenizer: char, word, bpe, chat or a tokenizer file
    vocab_size: int | None
    tokens_per_step: int  # one process's: batch_size x grad_accum x window
    tokens_note: str | None  # set where tokens are not the run's own count (a run that predates it)
    bpc_per_loss: float | None  # val_bpc / val_loss: bits per character per nat per token
    train: list[Point] = field(default_factory=list)  # the training loss of each logged step (batch loss)
    val: list[Point] = field(default_factory=list)  # the validation loss of each evaluation
    notices: list[str] = field(default_factory=list)  # what was left out of metrics.jsonl, and why

    @property
    def tokenizer_id(self) -> str:
        """The tokenizer as `auto` compares them: its kind and vocabulary size."""
        return self.tokenizer if self.vocab_size is None else f"{self.tokenizer} {self.vocab_size}"


# --- reading a run --------------------------------------------------------------------------------------------

def load_curves(run_dir: str | Path) -> Curves:
    """The curves of one run folder; one GptlabError line for anything that is not a readable run."""
    path = Path(run_dir)
    if not path.exists():
        raise GptlabError(f"no such run folder: {path}")
    if not path.is_dir():
        raise GptlabError(f"{path} is a file, not a run folder")
    if (path / WEIGHTS).exists() and not (path / METRICS).exists():
        raise GptlabError(f"{path} is a checkpoint; pass its run folder, {path.resolve().parent.parent}")
    if not (path / METRICS).exists():
        if not (path / CONFIG).exists():
            raise GptlabError(f"{path} is not a run folder (it has no {CONFIG} and no {METRICS}); "
                              f"is it a folder written by 'gptlab train'?")
        raise GptlabError(f"{path} has no {METRICS}: the run has not logged a step yet")
    if not (path / CONFIG).exists():
        raise GptlabError(f"{path} has {METRICS} but no {CONFIG}; is it a folder written by 'gptlab train'?")
    config = read_config(path)
    train_cfg, model_cfg = config["train"], config["model"]
    window = model_cfg.get("block_size") or train_cfg.get("seq_len")
    per_process = [train_cfg.get("batch_size"), train_cfg.get("grad_accum", 1), window]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in per_process):
        raise GptlabError(f"{path / CONFIG} lacks the batch size, gradient accumulation or window "
                          f"(model.block_size or train.seq_len) that tokens per step are made of")
    tokens_per_step = math.prod(per_process)
    curves = Curves(name=path.resolve().name, path=path, tokenizer=str(train_cfg.get("tokenizer", "?")),
                    vocab_size=model_cfg.get("vocab_size"), tokens_per_step=tokens_per_step, tokens_note=None,
                    bpc_per_loss=None)
    records = read_metrics(path / METRICS, curves.notices)
    if not records and not curves.notices:
        raise GptlabError(f"{path / METRICS} is empty: the run has not logged a step yet")
    if any("tokens" not in r for r in records):
        curves.tokens_note = f"{curves.name}: its metrics predate token counts; tokens assume one process"
    evals = [r for r in records if "val_loss" in r and "val_bpc" in r]
    if evals:
        last = evals[-1]  # every evaluation has the same factor: the validation split's characters per token
        curves.bpc_per_loss = last["val_bpc"] / last["val_loss"] if last["val_loss"] else None
    for r in records:
        point = dict(step=r["iter"], tokens=r.get("tokens", r["iter"] * tokens_per_step), time=r.get("time"))
        if "loss" in r:
            curves.train.append(Point(**point, loss=r["loss"], bpc=_to_bpc(r["loss"], curves.bpc_per_loss)))
        if "val_loss" in r:  # the run's own val_bpc (converted only where a record lacks one)
            bpc = r["val_bpc"] if "val_bpc" in r else _to_bpc(r["val_loss"], curves.bpc_per_loss)
            curves.val.append(Point(**point, loss=r["val_loss"], bpc=bpc, choices=r.get("choices_acc_norm")))
    if not curves.train and not curves.val:
        raise GptlabError(f"{path / METRICS} holds no losses (no 'loss' or 'val_loss' on any line)")
    return curves


def _to_bpc(loss: float, bpc_per_loss: float | None) -> float | None:
    return None if bpc_per_loss is None else loss * bpc_per_loss


def choose_y(runs: list[Curves], y: str = "auto") -> tuple[str, str]:
    """What to plot, "loss" or "bpc", and why. auto: bits per character where the runs' tokenizers (kind and
    vocabulary size) differ, since a loss per token depends on what a token is; else the loss. Bits per character
    need every run to have evaluated a validation split."""
    if y not in Y_AXES:
        raise GptlabError(f"--y must be one of {', '.join(Y_AXES)}, not {y!r}")
    kinds = list(dict.fromkeys(r.tokenizer_id for r in runs))
    if y == "loss":
        return "loss", "--y loss"
    if y == "choices":
        for r in runs:
            if not any(is_number(p.choices) for p in r.val):
                raise GptlabError(f"{r.path} has no multiple-choice scores in its {METRICS} (train it with "
                                  f"--eval-choices TASK)")
        return "choices", "--y choices: the acc_norm of train --eval-choices at each evaluation"
    if y == "auto" and len(kinds) == 1:
        return "loss", f"auto: every run has the same tokenizer ({kinds[0]})"
    reason = "--y bpc" if y == "bpc" else \
        f"auto: the runs' tokenizers differ ({', '.join(kinds)}), so their losses per token do not compare"
    for r in runs:
        if r.bpc_per_loss is None:
            why = "" if y == "bpc" else "; the runs' tokenizers differ, and --y loss plots losses per token anyway"
            raise GptlabError(f"{r.path} has no evaluation with bits per character (val_bpc) in its {METRICS}, "
                              f"so it cannot be plotted in bits per character{why}")
    return "bpc", reason


def y_label(y: str, split: str) -> str:
    if y == "choices":
        return "multiple-choice accuracy (acc_norm)"
    if y == "bpc":
        return "bits per character"
    return {"val": "validation loss", "train": "training loss", "both": "loss"}[split] + " (nats/token)"


def smooth(values: list[float], n: int) -> list[float]:
    """A running mean over the last n values (fewer at the start), one out for each in."""
    if n < 1:
        raise GptlabError(f"--smooth must be at least 1 (1: no smoothing), not {n}")
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= n:
            total -= values[i - n]
        out.append(total / min(i + 1, n))
    return out


def series(run: Curves, split: str, x: str = "steps", y: str = "loss", smooth_n: int = 1
           ) -> tuple[list[float], list[float]]:
    """The x and y values of one run's "train" or "val" curve (the training curve smoothed over smooth_n)."""
    if x not in X_AXES:
        raise GptlabError(f"--x must be one of {', '.join(X_AXES)}, not {x!r}")
    points = drawn(run, split, y)
    if x == "time":
        missing = [p.step for p in points if p.time is None]
        if missing:
            raise GptlabError(f"{run.path / METRICS} has no time at step {missing[0]}, so it cannot be plotted "
                              f"against wall time")
    xs = [getattr(p, X_FIELDS[x]) for p in points]
    ys = [p.choices if y == "choices" else p.bpc if y == "bpc" else p.loss for p in points]
    if any(v is None for v in ys):
        raise GptlabError(f"{run.path} has no bits per character for its {split} points")
    return xs, smooth(ys, smooth_n) if split == "train" else ys


def drawn(run: Curves, split: str, y: str) -> list[Point]:
    """The points of a run's curve that have the value drawn (multiple-choice scores: its evaluations with one)."""
    points = run.train if split == "train" else run.val
    return [p for p in points if is_number(p.choices)] if y == "choices" else points


def check_splits(runs: list[Curves], split: str) -> None:
    """Every run has something to draw for the split asked."""
    if split not in SPLITS:
        raise GptlabError(f"--split must be one of {', '.join(SPLITS)}, not {split!r}")
    for r in runs:
        if split == "val" and not r.val:
            raise GptlabError(f"{r.path} has no validation loss in {METRICS} (no evaluation yet, or no "
                              f"validation split); --split train plots its training loss")
        if split == "train" and not r.train:
            raise GptlabError(f"{r.path} has no training loss in {METRICS}")


def labels(runs: list[Curves]) -> list[str]:
    """The runs' names for a legend: each folder's name, with as many parent folders as tell apart runs that
    share a name. The same folder twice is refused."""
    parts = [r.path.resolve().parts for r in runs]
    seen: dict[tuple, str] = {}
    for r, p in zip(runs, parts):
        if p in seen:
            raise GptlabError(f"{r.path} is given twice (as {seen[p]} and {r.path})")
        seen[p] = str(r.path)
    depth = [1] * len(runs)
    while True:
        names = ["/".join(p[-d:]).lstrip("/") or "/" for p, d in zip(parts, depth)]
        clashing = {n for n in names if names.count(n) > 1}
        if not clashing:
            return names
        before = list(depth)
        for i, n in enumerate(names):
            if n in clashing:
                depth[i] = min(depth[i] + 1, len(parts[i]))
        if depth == before:  # (cannot happen for distinct folders; whole paths, to be sure)
            return [str(r.path.resolve()) for r in runs]


def caption(runs: list[Curves], x: str, y: str, split: str) -> list[str]:
    """What the figure's reader should know beyond its axes: each a short line."""
    notes = []
    if y == "bpc" and split != "val":
        notes.append("training bits per character: the training loss x each run's val_bpc / val_loss")
    if x == "tokens":
        notes += [r.tokens_note for r in runs if r.tokens_note]
    return notes


def to_json(runs: list[Curves], *, x: str = "steps", y: str = "loss", split: str = "both", smooth_n: int = 1,
            y_reason: str = "") -> dict:
    """The numbers of a plot, JSON-ready. Each point holds step, tokens, time, loss (nats/token), bpc (None
    without one) and y, the value drawn (the training curve's smoothed)."""
    out = dict(x=x, x_label=X_LABELS[x], y=y, y_label=y_label(y, split), y_reason=y_reason, split=split,
               smooth=smooth_n, notes=caption(runs, x, y, split), runs=[])
    for run, label in zip(runs, labels(runs)):
        entry = dict(name=run.name, label=label, path=str(run.path), tokenizer=run.tokenizer,
                     vocab_size=run.vocab_size, tokens_per_step=run.tokens_per_step, tokens_note=run.tokens_note,
                     bpc_per_loss=run.bpc_per_loss, notices=list(run.notices))
        for name in (("train", "val") if split == "both" else (split,)):
            points = drawn(run, name, y)
            _, ys = series(run, name, x, y, smooth_n)
            entry[name] = [dict(step=p.step, tokens=p.tokens, time=p.time, loss=p.loss, bpc=p.bpc, y=v)
                           for p, v in zip(points, ys)]
        out["runs"].append(entry)
    return out
