"""The loss-curve PNG of a run: python -m gptlab.training.plot RUN_DIR/metrics.jsonl RUN_DIR/loss.png"""

from __future__ import annotations

import sys
from pathlib import Path

from gptlab.training.metrics import read_metrics


def draw_losses(metrics_path: Path, png_path: Path) -> None:
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


if __name__ == "__main__":
    draw_losses(Path(sys.argv[1]), Path(sys.argv[2]))
