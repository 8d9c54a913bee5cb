"""gptlab on a shared machine: N `gptlab train` processes started at once, each measured as its user sees it.

    python benchmarks/shared_machine.py --runs 2                  # two default runs (5 minutes each) side by side
    python benchmarks/shared_machine.py --runs 2 --code /tmp/old  # the same with another checkout (before/after)
    python benchmarks/shared_machine.py --runs 1 -- --max-time 1m # extra flags go to every `gptlab train`

One JSON line per run: the iterations it trained, its process's wall seconds, its time budget and every
settlement of it, its final validation loss and the thread count it chose (from its first lines); then a
summary line. --code runs the gptlab found in another folder (a commit unpacked with `git archive`, say), so
that the code before and after a change can be timed in one sitting.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def start(code: Path, out: Path, flags: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(code)}
    return subprocess.Popen([sys.executable, "-m", "gptlab", "train", "--out", str(out), *flags],
                            stdout=subprocess.DEVNULL, stderr=open(log, "w"), env=env, cwd=out.parent)


def result(out: Path, log: Path, seconds: float, code: int) -> dict:
    config = json.loads((out / "config.json").read_text()) if (out / "config.json").exists() else {}
    evals = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "val_loss" in r] \
        if (out / "metrics.jsonl").exists() else []
    text = log.read_text()
    threads = re.search(r"computing with (\d+) of|threads: (\d+)", text)
    budget = config.get("budget", {})
    return dict(run=out.name, exit=code, iters=config.get("train", {}).get("max_iters"), seconds=round(seconds, 1),
                max_time=budget.get("max_time"), settlements=len(budget.get("settlements", [])),
                val_loss=evals[-1]["val_loss"] if evals else None,
                threads=int(next(g for g in threads.groups() if g)) if threads else None)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=2, help="processes started at once (default: 2)")
    p.add_argument("--code", type=Path, default=ROOT, help="the gptlab checkout to run (default: this one)")
    p.add_argument("flags", nargs="*", help="flags for every `gptlab train` (after --)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="gptlab-shared-") as tmp:
        outs = [Path(tmp) / f"run{i}" for i in range(args.runs)]
        logs = [Path(tmp) / f"run{i}.log" for i in range(args.runs)]
        began = time.perf_counter()
        procs = [start(args.code.resolve(), out, args.flags, log) for out, log in zip(outs, logs)]
        ended = []
        for proc in procs:
            ended.append((proc.wait(), time.perf_counter() - began))
        rows = [result(out, log, seconds, code) for out, log, (code, seconds) in zip(outs, logs, ended)]
    for row in rows:
        print(json.dumps({**row, "code": str(args.code), "runs": args.runs}))
    losses = [r["val_loss"] for r in rows if r["val_loss"] is not None]
    print(json.dumps(dict(summary=True, code=str(args.code), runs=args.runs, flags=args.flags,
                          seconds=max(r["seconds"] for r in rows), iters=[r["iters"] for r in rows],
                          val_loss=round(sum(losses) / len(losses), 4) if losses else None)))
    return 0 if all(r["exit"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
