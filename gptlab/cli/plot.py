"""`gptlab plot RUN [RUN ...]`: the training and validation loss curves of several runs on one figure (PNG),
and, with --json, their numbers on stdout. Notices and the picture's path go to stderr."""

from __future__ import annotations

import json
import sys

from gptlab.errors import GptlabError


def add_parser(sub, argv: list[str]) -> None:
    p = sub.add_parser("plot", help="loss curves of several runs on one figure",
                       description="Draw the training and validation loss of one or more run folders on one "
                                   "figure, one colour per run: validation as a line with markers, training as a "
                                   "thinner line of the same colour. Runs with different tokenizers compare "
                                   "fairly in bits per character (--y auto picks it for them).")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders written by gptlab train or finetune")
    p.add_argument("--y", default="auto", choices=("loss", "bpc", "choices", "auto"),
                   help="loss: nats per token; bpc: bits per character; choices: the multiple-choice accuracy that "
                        "train --eval-choices recorded (validation points only); auto: bpc where the runs' "
                        "tokenizers (kind and vocabulary size) differ, else loss (default: auto)")
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


def run(args) -> int:
    from gptlab import pictures
    from gptlab.views import curves

    out = pictures.picture_path(args.out)
    if args.smooth < 1:
        raise GptlabError(f"--smooth must be at least 1 (1: no smoothing), not {args.smooth}")
    runs = [curves.load_curves(path) for path in args.runs]
    if args.y == "choices":
        if args.split == "train":
            print("gptlab: multiple-choice scores come with evaluations: the validation points are drawn",
                  file=sys.stderr)
        args.split = "val"
    names = curves.labels(runs)  # refuses a folder named twice
    curves.check_splits(runs, args.split)
    y, why = curves.choose_y(runs, args.y)
    numbers = curves.to_json(runs, x=args.x, y=y, split=args.split, smooth_n=args.smooth, y_reason=why)
    for r in runs:
        for notice in r.notices:
            print(f"gptlab: warning: {notice}", file=sys.stderr)
    pictures.curves(runs, names, numbers, out, args.title)
    if args.json:
        print(json.dumps(numbers, indent=1))
    print(f"{curves.y_label(y, args.split)} against {curves.X_LABELS[args.x]}; {why}", file=sys.stderr)
    for note in numbers["notes"]:
        print(f"note: {note}", file=sys.stderr)
    print(f"picture: {out}", file=sys.stderr)
    return 0
