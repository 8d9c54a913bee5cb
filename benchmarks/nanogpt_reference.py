"""The real nanoGPT's CPU recipe, timed and measured the way gptlab's runs are, for side-by-side figures.

    python benchmarks/nanogpt_reference.py --nanogpt ../shared/reference/nanogpt --mirror ../shared/data

nanoGPT is not part of gptlab: pass the path of a checkout. It is copied to a temporary folder with Tiny
Shakespeare from the mirror, its own data preparation runs there, then its documented CPU recipe
(config/train_shakespeare_char.py with the README's CPU flags). Prints one JSON line: the median
milliseconds per iteration (from nanoGPT's own log), tokens/s, the final validation loss, the wall time and
the peak resident memory of the training process.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RECIPE = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
          "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128",
          "--max_iters=2000", "--lr_decay_iters=2000", "--dropout=0.0"]
TOKENS_PER_ITER = 12 * 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nanogpt", required=True, help="a nanoGPT checkout (train.py, model.py, config/, data/)")
    parser.add_argument("--mirror", required=True, help="a folder holding tinyshakespeare/input.txt")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "nanogpt"
        shutil.copytree(args.nanogpt, work)
        shutil.copy(Path(args.mirror) / "tinyshakespeare" / "input.txt", work / "data" / "shakespeare_char")
        subprocess.run([sys.executable, "data/shakespeare_char/prepare.py"], cwd=work, check=True,
                       capture_output=True)
        start = time.time()
        proc = subprocess.run([sys.executable, "train.py", *RECIPE], cwd=work, capture_output=True, text=True)
        seconds = time.time() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    times = [float(t) for t in re.findall(r"iter \d+: loss [\d.]+, time ([\d.]+)ms", proc.stdout)]
    vals = re.findall(r"step \d+: train loss [\d.]+, val loss ([\d.]+)", proc.stdout)
    ms = statistics.median(times[10:]) if len(times) > 10 else None
    print(json.dumps({
        "bench": "nanogpt_reference", "exit_code": proc.returncode, "iters": len(times),
        "ms_per_iter_median": round(ms, 2) if ms else None,
        "tokens_per_s": round(TOKENS_PER_ITER / ms * 1000) if ms else None,
        "final_val_loss": float(vals[-1]) if vals else None, "process_seconds": round(seconds, 2),
        "peak_rss_bytes": peak,
    }))


if __name__ == "__main__":
    main()
