"""A time budget (--max-time 5m) becomes an iteration budget, once, at the start of the run.

A few steps and one evaluation are timed on a snapshot of the run, which is then put back exactly as it
was, so the measurement leaves no trace in the weights, the optimizer, the data order or the random
numbers. The time left divided by the measured cost of an iteration (a step, plus its share of an
evaluation) is the iteration count. It is recorded in the run's config.json (train.max_iters, with the
measurement under "budget"), and from then on the run follows iterations alone: the learning-rate
schedule ends where the budget does, a resumed run equals an uninterrupted one, and
`--max-iters N --max-time none` replays the run exactly.
"""

from __future__ import annotations

import time
from collections.abc import Callable

WARM_STEPS = 2  # untimed: the first steps allocate memory (and compile, with --compile)
TIMED_STEPS = 6


def measure(step: Callable[[], object], evaluate: Callable[[], object], eval_interval: int,
            sync: Callable[[], None]) -> float:
    """Seconds per iteration: the mean of TIMED_STEPS steps after WARM_STEPS, plus 1/eval_interval of an
    evaluation. The caller restores the run's state afterwards."""
    for _ in range(WARM_STEPS):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(TIMED_STEPS):
        step()
    sync()
    per_step = (time.perf_counter() - start) / TIMED_STEPS
    start = time.perf_counter()
    evaluate()
    sync()
    return per_step + (time.perf_counter() - start) / eval_interval


def iteration_budget(max_time: float, elapsed: float, it: int, per_iter: float, cap: int) -> int:
    """The iteration at which the time left runs out (at least one more step), and no later than cap."""
    left = max(0.0, max_time - elapsed)
    return min(cap, it + max(1, int(left / max(per_iter, 1e-9))))
