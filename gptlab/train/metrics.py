"""Where a run's numbers go: a JSONL log, a live progress line, and a loss-curve PNG at the end."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn


class MetricsLog:
    """Appends one JSON object per line to RUN_DIR/metrics.jsonl."""

    def __init__(self, path: Path, resume_from: int | None = None):
        self.path = path
        if resume_from is not None and path.exists():  # forget what came after the checkpoint we resume
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("iter", 0) <= resume_from]
            path.write_text("".join(line + "\n" for line in kept))
        elif resume_from is None and path.exists():
            path.unlink()

    def write(self, **record) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_losses(metrics_path: Path, png_path: Path) -> None:
    """Training loss per logged step and validation loss per evaluation, on one chart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [(r["iter"], r["loss"]) for r in records if "loss" in r]
    val = [(r["iter"], r["val_loss"]) for r in records if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train (batch)", alpha=0.6, linewidth=1)
    if val:
        ax.plot(*zip(*val), "o-", label="validation", linewidth=2)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title(png_path.parent.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)


class ProgressLine:
    """A live bar on a terminal (step, loss, tokens/s, ETA); plain log lines when stderr is not one."""

    def __init__(self, total: int, start: int, quiet: bool = False):
        self.console = Console(stderr=True)
        self.live = self.console.is_terminal and not quiet
        self.quiet = quiet
        self.progress = None
        if self.live:
            self.progress = Progress(
                TextColumn("step {task.completed}/{task.total}"), BarColumn(),
                TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[tps]} tok/s"),
                TextColumn("ETA"), TimeRemainingColumn(), console=self.console, transient=False)
            self.task = self.progress.add_task("train", total=total, completed=start, loss="-", tps="-")
            self.progress.start()

    def update(self, it: int, loss: float, tokens_per_s: float, total: int) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=it, total=total, loss=f"{loss:.4f}",
                                 tps=f"{tokens_per_s:,.0f}")

    def message(self, text: str) -> None:
        if self.quiet:
            return
        if self.progress is not None:
            self.progress.console.print(text, highlight=False)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


class Timer:
    def __init__(self, already: float = 0.0):
        self.start = time.perf_counter() - already

    def elapsed(self) -> float:
        return time.perf_counter() - self.start
