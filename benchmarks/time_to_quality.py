"""Wall time, whole process included, until a preset reaches a validation loss.

    python benchmarks/time_to_quality.py --preset cpu --target 1.886 [--target 1.60] [-- extra gptlab train flags]

It launches `python -m gptlab train` as a fresh process (imports, corpus, tokenizer, data preparation and
compilation all count), then reads the run's metrics.jsonl and prints one JSON line: for each target the
seconds from launch to the first evaluation at or below it (null if never), the final validation loss, and
the process's peak resident memory (the whole run: the figure to hold against another trainer's process).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--target", type=float, action="append", default=[])
    parser.add_argument("--keep", default=None, help="keep the run in this folder (default: a temporary one)")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="more `gptlab train` flags after --")
    args = parser.parse_args()
    targets = args.target or [1.886]
    extra = [a for a in args.extra if a != "--"]

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.keep or Path(tmp) / "run")
        cmd = [sys.executable, "-m", "gptlab", "train", "--preset", args.preset, "--out", str(out),
               "--overwrite", "--quiet", *extra]
        launched = time.time()
        proc = subprocess.run(cmd)
        finished = time.time()
        # The largest resident set among the finished child processes: the run (its loss-plot child is smaller).
        peak_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = [r for r in records if "val_loss" in r]
    reached = {}
    for target in targets:
        hit = next((r for r in evals if r["val_loss"] <= target), None)
        reached[str(target)] = None if hit is None else {"seconds": round(hit["unix_time"] - launched, 2),
                                                         "iter": hit["iter"], "val_loss": round(hit["val_loss"], 4)}
    print(json.dumps({
        "bench": "time_to_quality", "preset": args.preset, "extra": extra, "exit_code": proc.returncode,
        "reached": reached, "final_val_loss": round(evals[-1]["val_loss"], 4) if evals else None,
        "best_val_loss": round(min(r["val_loss"] for r in evals), 4) if evals else None,
        "iters": records[-1]["iter"] if records else 0, "process_seconds": round(finished - launched, 2),
        "peak_rss_bytes": peak_rss,
        "curve": [(r["iter"], round(r["unix_time"] - launched, 1), round(r["val_loss"], 4)) for r in evals],
    }))


if __name__ == "__main__":
    main()
