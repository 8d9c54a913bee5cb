"""Token shards at two sizes: `gptlab prepare`'s MB/s, and training's memory on a small and a large corpus.

    python benchmarks/shards_memory.py --sizes 10,1000 [--tokenizer char] [--steps 200] [--work /tmp/gptlab-shards]

For each size (MB) it writes a corpus of that many megabytes from the mirrored texts (Tiny Shakespeare and
Andersen's tales in English, repeated; never committed), prepares it (`gptlab prepare`, a process of its own,
timed), then trains the `cpu` preset's GPT on it for --steps steps (`gptlab train --data`), and prints one JSON
line: the preparation's MB/s, the shards' size, and the training's memory as the run measured it (the steps' peak
resident memory, VmHWM, and the memory before the model, from metrics.jsonl).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

TEXTS = ("tinyshakespeare/input.txt", "andersen_en/andersen_en_pg1597.txt", "andersen_en/andersen_en_pg27200.txt")


def write_corpus(path: Path, megabytes: int, mirror: Path) -> None:
    """megabytes of the mirrored texts, one after the other and again, written a text at a time."""
    texts = [(mirror / name).read_text(encoding="utf-8") for name in TEXTS]
    left = megabytes * 10**6
    with open(path, "w", encoding="utf-8") as f:
        while left > 0:
            for text in texts:
                piece = text[:left]
                f.write(piece)
                left -= len(piece)
                if left <= 0:
                    break


def gptlab(*argv: str) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "gptlab", *argv], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"gptlab {' '.join(argv)} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - start, done.stderr


def one_size(megabytes: int, args) -> dict:
    work = Path(args.work)
    corpus, data, run = work / f"{megabytes}mb.txt", work / f"{megabytes}mb-shards", work / f"{megabytes}mb-run"
    if not corpus.exists():
        write_corpus(corpus, megabytes, Path(args.mirror))
    for folder in (data, run):
        subprocess.run(["rm", "-rf", str(folder)], check=True)
    seconds, _ = gptlab("prepare", str(corpus), "--out", str(data), "--tokenizer", args.tokenizer, "--quiet")
    manifest = json.loads((data / "manifest.json").read_text())
    gptlab("train", "--data", str(data), "--preset", "cpu", "--block-size", "128", "--batch-size", "32",
           "--max-iters", str(args.steps), "--max-time", "none",
           "--eval-interval", str(args.steps), "--out", str(run), "--quiet")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    peaks = [r["peak_mem"] for r in records if "peak_mem" in r]
    base = next(r["mem_base"] for r in records if "mem_base" in r)
    return {"bench": "shards_memory", "megabytes": megabytes, "tokenizer": args.tokenizer,
            "tokens": sum(s["tokens"] for s in manifest["shards"]),
            "shard_bytes": sum((data / s["file"]).stat().st_size for s in manifest["shards"]),
            "prepare_s": round(seconds, 2), "prepare_mb_per_s": round(megabytes / seconds, 2),
            "encode_s": manifest["seconds"], "encode_mb_per_s": round(megabytes / manifest["seconds"], 2),
            "train_steps": args.steps, "peak_rss_bytes": max(peaks), "mem_base_bytes": base,
            "val_loss": next(r["val_loss"] for r in reversed(records) if "val_loss" in r),
            "cores": len(os.sched_getaffinity(0))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10,1000", help="corpus sizes in MB, comma-separated (default: 10,1000)")
    p.add_argument("--tokenizer", default="char")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--work", default="/tmp/gptlab-shards", help="where the corpora, shards and runs go")
    p.add_argument("--mirror", default=os.environ.get("GPTLAB_MIRROR", "../shared/data"))
    args = p.parse_args()
    Path(args.work).mkdir(parents=True, exist_ok=True)
    for megabytes in (int(s) for s in args.sizes.split(",")):
        print(json.dumps(one_size(megabytes, args)), flush=True)


if __name__ == "__main__":
    main()
