"""Training steps on pairs: seconds per step with the batches drawn from rows of about one length (buckets, the
default) and drawn from all rows alike (one bucket), alternating, in one process.

    python benchmarks/pair_batches.py --corpus tatoeba-da-en --model seq2seq --steps 30 --rounds 2

Prints one JSON line per (round, way): seconds per step, and the mean width of a batch (its longest row).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from gptlab.training import pairs
from gptlab.training.distributed import Distributed
from gptlab.training.trainer import Trainer, plan_run, source_for


def measure(trainer, steps: int) -> tuple[float, float]:
    widths, probe = [], trainer.batches.sibling()  # (draws like the steps' batches do, on its own)
    for _ in range(3):  # warm-up: the allocator and oneDNN's kernels
        trainer.stepper(trainer.batches)
    started = time.perf_counter()
    for _ in range(steps):
        widths.append(probe.next()[0].size(1))
        trainer.stepper(trainer.batches)
    return (time.perf_counter() - started) / steps, sum(widths) / len(widths)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", default="tatoeba-da-en")
    p.add_argument("--model", default="seq2seq")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    for round_ in range(args.rounds):
        for way, bucket in (("buckets", pairs.BUCKET), ("all rows", 10**9)):
            pairs.BUCKET = bucket
            with tempfile.TemporaryDirectory() as out:
                plan = plan_run({"model": args.model, "corpus": args.corpus, "max_time": None, "max_iters": 10**6},
                                out=out, overwrite=True)
                trainer = Trainer(plan, Distributed.from_env(), source_for(plan.cfg.corpus, args.model), quiet=True)
                seconds, width = measure(trainer, args.steps)
            print(json.dumps(dict(round=round_, batches=way, model=args.model, corpus=args.corpus,
                                  step_s=round(seconds, 4), mean_width=round(width, 1))), flush=True)


if __name__ == "__main__":
    main()
