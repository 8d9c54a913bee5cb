"""When a run stops: after --max-iters steps, when its time budget is spent, or when it is interrupted.

A time budget (--max-time 5m) becomes an iteration budget at the start of the run. A few steps, an evaluation
and a checkpoint are timed on a snapshot of the run, which is then put back exactly as it was, so the
measurement leaves no trace in the weights, the optimizer, the data order or the random numbers. The time
left divided by the measured cost of an iteration (a step, plus its share of an evaluation and a checkpoint)
is the iteration count. A few steps are a noisy measure, so where warmup is long enough (REFINE_STEPS) the
count is settled again at the end of warmup from the pace of the run's own steps: up to there the
learning-rate schedule does not depend on the count. The count is recorded in the run's config.json
(train.max_iters, with the measurement under "budget"), and the run follows iterations alone: the schedule
ends where the budget does, a resumed run equals an uninterrupted one, and `--max-iters N --max-time none`
replays the run exactly.

Ctrl-C, or SIGTERM as torchrun and cluster schedulers send it, sets a flag that the loop reads between steps.
"""

from __future__ import annotations

import signal
import statistics
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

WARM_STEPS = 4  # untimed: the first steps allocate memory (and compile, with --compile), and run slower
TIMED_STEPS = 6
REFINE_STEPS = 20  # the fewest steps of the run itself whose pace may settle the count at the end of warmup


class Cost(NamedTuple):
    """The measured seconds of one iteration: its step, and its share of evaluations and checkpoints."""

    step: float
    overhead: float

    @property
    def per_iter(self) -> float:
        return self.step + self.overhead


def measure(step: Callable[[], object], extras: list[tuple[Callable[[], object], float]],
            sync: Callable[[], None], compiled: bool = False) -> Cost:
    """The cost of an iteration: the median of TIMED_STEPS steps after WARM_STEPS (a slow step, say a page fault,
    does not count), and, for each (call, share) of extras, share times the call's time: an evaluation and a
    checkpoint come once every eval_interval steps. With a compiled model each extra is called once untimed
    first (an evaluation compiles again). The caller restores the run's state afterwards."""
    for _ in range(WARM_STEPS):
        step()
    sync()
    times = []
    for _ in range(TIMED_STEPS):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    overhead = 0.0
    for call, share in extras:
        if compiled:
            call()
            sync()
        start = time.perf_counter()
        call()
        sync()
        overhead += (time.perf_counter() - start) * share
    return Cost(statistics.median(times), overhead)


def iteration_budget(max_time: float, elapsed: float, it: int, per_iter: float, cap: int) -> int:
    """The iteration at which the time left runs out (at least one more step), and no later than cap."""
    left = max(0.0, max_time - elapsed)
    return min(cap, it + max(1, int(left / max(per_iter, 1e-9))))


class StopFlag:
    """Ctrl-C or SIGTERM sets `set`, which the loop reads between steps; a second Ctrl-C interrupts at once."""

    def __init__(self):
        self.set = False
        self.previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.set and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.set = True

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
