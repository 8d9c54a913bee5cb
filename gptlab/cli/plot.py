"""`gptlab plot RUN [RUN ...]`: the training and validation loss curves of several runs on one figure (PNG),
and, with --json, their numbers on stdout. Notices and the picture's path go to stderr."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from gptlab.errors import GptlabError

PICTURES = (".png", ".svg", ".pdf")  # the format follows the extension, as matplotlib's savefig does


def add_parser(sub, argv: list[str]) -> None:
    p = sub.add_parser("plot", help="loss curves of several runs on one figure",
                       description="Draw the training and validation loss of one or more run folders on one "
                                   "figure, one colour per run: validation as a line with markers, training as a "
                                   "thinner line of the same colour. Runs with different tokenizers compare "
                                   "fairly in bits per character (--y auto picks it for them).")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders written by gptlab train or finetune")
    p.add_argument("--y", default="auto", choices=("loss", "bpc", "auto"),
                   help="loss: nats per token; bpc: bits per character; auto: bpc where the runs' tokenizers "
                        "(kind and vocabulary size) differ, else loss (default: auto)")
    p.add_argument("--x", default="steps", choices=("steps", "tokens", "time"),
                   help="steps; tokens trained on (every process's); or wall time "
                        "in seconds (default: steps)")
    p.add_argument("--split", default="both", choices=("train", "val", "both"),
                   help="the curves drawn (default: both)")
    p.add_argument("--smooth", type=int, default=1, metavar="N",
                   help="a running mean over N training-loss points (default: 1, none)")
    p.add_argument("--out", default="plot.png", help="the picture: .png, .svg or .pdf (default: plot.png)")
    p.add_argument("--json", action="store_true",
                   help="also print the curves' numbers as JSON on stdout (the picture is drawn too)")
    p.add_argument("--title", default=None, help="the figure's title (default: the runs' names)")


def _out(path: str) -> Path:
    out = Path(path)
    if out.is_dir():
        raise GptlabError(f"--out {out} is a folder; name a picture file, e.g. {out / 'plot.png'}")
    if out.suffix.lower() not in PICTURES:
        raise GptlabError(f"--out {out}: name a {', '.join(PICTURES)} file")
    if not out.parent.is_dir():
        raise GptlabError(f"--out {out}: the folder {out.parent} does not exist")
    return out


def run(args) -> int:
    from gptlab.views import curves

    out = _out(args.out)
    if args.smooth < 1:
        raise GptlabError(f"--smooth must be at least 1 (1: no smoothing), not {args.smooth}")
    runs = [curves.load_curves(path) for path in args.runs]
    names = curves.labels(runs)  # refuses a folder named twice
    curves.check_splits(runs, args.split)
    y, why = curves.choose_y(runs, args.y)
    numbers = curves.to_json(runs, x=args.x, y=y, split=args.split, smooth_n=args.smooth, y_reason=why)
    for r in runs:
        for notice in r.notices:
            print(f"gptlab: warning: {notice}", file=sys.stderr)
    draw(runs, names, numbers, out, args.title)
    if args.json:
        print(json.dumps(numbers, indent=1))
    print(f"{curves.y_label(y, args.split)} against {curves.X_LABELS[args.x]}; {why}", file=sys.stderr)
    for note in numbers["notes"]:
        print(f"note: {note}", file=sys.stderr)
    print(f"picture: {out}", file=sys.stderr)
    return 0


def draw(runs, names: list[str], numbers: dict, out: Path, title: str | None = None) -> None:
    """One colour per run; validation with markers, training thinner and lighter; notes under the axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    from gptlab.views.curves import X_FIELDS

    x_field, split = X_FIELDS[numbers["x"]], numbers["split"]
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    if len(runs) > len(palette):
        palette = [plt.get_cmap("turbo")(i / (len(runs) - 1)) for i in range(len(runs))]
    differ = len({r.tokenizer_id for r in runs}) > 1
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    for i, (run, entry, name) in enumerate(zip(runs, numbers["runs"], names)):
        colour, label = palette[i], f"{name} ({run.tokenizer_id})" if differ else name
        val, train = entry.get("val") or [], entry.get("train") or []
        if val:
            ax.plot([p[x_field] for p in val], [p["y"] for p in val], "o-", color=colour, linewidth=2,
                    markersize=4, label=label, zorder=3)
        if train:
            ax.plot([p[x_field] for p in train], [p["y"] for p in train], "-", color=colour, linewidth=0.9,
                    alpha=0.55, label=None if val else label, zorder=2)
    handles, _ = ax.get_legend_handles_labels()
    if split == "both":
        smoothed = f", mean of {numbers['smooth']}" if numbers["smooth"] > 1 else ""
        handles += [Line2D([], [], color="grey", marker="o", linewidth=2, markersize=4, label="validation"),
                    Line2D([], [], color="grey", linewidth=0.9, alpha=0.55, label=f"training (batch{smoothed})")]
    ax.legend(handles=handles, fontsize="small")
    if numbers["x"] != "time":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole steps and tokens
    ax.set_xlabel(numbers["x_label"])
    ax.set_ylabel(numbers["y_label"])
    ax.set_title(title if title is not None else ", ".join(names) if len(", ".join(names)) <= 80
                 else f"{len(runs)} runs")
    ax.grid(alpha=0.3)
    notes = numbers["notes"]
    if notes:
        fig.text(0.01, 0.01, "\n".join(notes), fontsize="x-small", color="dimgrey", va="bottom", ha="left")
    fig.tight_layout(rect=(0, 0.035 * len(notes), 1, 1))
    fig.savefig(out)
    plt.close(fig)
