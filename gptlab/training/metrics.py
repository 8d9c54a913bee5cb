"""Where a run's numbers go: a JSONL log and a live progress line (loss.png: gptlab.pictures.losses)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from gptlab.errors import GptlabError
from gptlab.records import read_metrics


class MetricsLog:
    """Appends one JSON object per line to RUN_DIR/metrics.jsonl (rank 0 only, under several processes), and,
    given a board, the same numbers to TensorBoard."""

    def __init__(self, path: Path, resume_from: int | None = None, enabled: bool = True,
                 board: TensorBoard | None = None):
        self.path, self.enabled, self.board = path, enabled, board
        if enabled and resume_from is not None and path.exists():  # forget what came after the checkpoint
            try:
                records = read_metrics(path)  # (a last line cut short by a crash is left out)
            except GptlabError as e:
                raise GptlabError(f"{e}: mend or remove that line to resume") from None
            kept = [r for r in records if r["iter"] <= resume_from]
            path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def write(self, **record) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
            if self.board is not None:
                self.board.write(record)

    def close(self) -> None:
        if self.board is not None:
            self.board.close()


def tensorboard_writer():
    """torch.utils.tensorboard's SummaryWriter; one line where the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise GptlabError("--tensorboard needs the tensorboard package: pip install 'gptlab[tensorboard]'") from None
    return SummaryWriter


class TensorBoard:
    """metrics.jsonl's numbers as TensorBoard scalars, at their iteration, in RUN_DIR/tensorboard (`tensorboard
    --logdir runs` shows every run). A resumed run drops the events after its checkpoint, as metrics.jsonl does."""

    TAGS = {"loss": "train/loss", "lr": "train/lr", "tokens_per_s": "train/tokens_per_s",
            "grad_norm": "train/grad_norm", "peak_mem": "train/peak_memory_bytes", "train_loss": "eval/train_loss",
            "val_loss": "eval/val_loss", "val_bpc": "eval/val_bpc", "choices_acc_norm": "eval/choices_acc_norm"}

    def __init__(self, folder: Path, resume_from: int | None = None):
        self.writer = tensorboard_writer()(str(folder), purge_step=None if resume_from is None else resume_from + 1)

    def write(self, record: dict) -> None:
        for key, tag in self.TAGS.items():
            if key in record:
                self.writer.add_scalar(tag, record[key], record["iter"])

    def close(self) -> None:
        self.writer.close()


class ProgressLine:
    """A live bar on a terminal (step, loss, tokens/s, ETA) from start() on; plain log lines when stderr is
    not one. Quiet prints nothing."""

    def __init__(self, quiet: bool = False):
        from rich.console import Console

        self.console = Console(stderr=True)
        self.quiet = quiet
        self.progress = None

    def start(self, total: int, done: int) -> None:
        if self.quiet or not self.console.is_terminal:
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("step {task.completed}/{task.total}"), BarColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[tps]} tok/s"),
            TextColumn("ETA"), TimeRemainingColumn(), console=self.console, transient=False)
        self.task = self.progress.add_task("train", total=total, completed=done, loss="-", tps="-")
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
            self.progress = None


class Timer:
    """Seconds since the start of a run (already: from its earlier parts), read from `clock`."""

    def __init__(self, already: float = 0.0, clock=time.perf_counter):
        self.clock = clock
        self.restart(already)

    def restart(self, already: float) -> None:
        """Go on from `already` seconds (a checkpoint's, or where calibration started)."""
        self.start = self.clock() - already

    def elapsed(self) -> float:
        return self.clock() - self.start
