"""When a run stops: after --max-iters steps, when its time budget is spent, or when it is interrupted.

A time budget (--max-time 5m) becomes an iteration count, which the run settles again as it goes:
- At the start, a few steps, an evaluation and a checkpoint are timed on a snapshot of the run, which is then put
  back exactly as it was (the measurement leaves no trace in the weights, the optimizer, the data order or the
  random numbers). The time left divided by the measured cost of an iteration is the first count. Where that
  count would end the run inside its warmup, the budget is shorter than the warmup would take: the warmup is
  shortened to a quarter of the count, and the run says so.
- At the end of warmup (where it lasts at least REFINE_STEPS steps), whatever the first count was, the count is
  settled again from the pace of the run's own steps: up to there the learning-rate schedule does not depend on it.
  Where warmup is shorter and no evaluation comes before the first count would end the run, the count is settled
  after REFINE_STEPS steps instead (a shorter count: at its last step but one). A resumed run measures at least
  REFINE_STEPS steps of its own first, leaving out the one-off time of its first WARM_STEPS steps.
- At every evaluation, the count is settled again from the pace since the last settlement (steps, evaluations
  and checkpoints together), where the run would otherwise end more than TOLERANCE of the budget early or late
  (until then the window grows, and its pace is less noisy):
  a machine that slows down or speeds up midway still ends the run on time. Past warmup, the cosine decay then
  runs on from where it is to the new end (gptlab.training.optim.lr_factor), and the moved end is recorded in
  the configuration (train.schedule_ends), so that the schedule stays a function of the iteration and the
  recorded settlements.
Every settlement is recorded in the run's config.json and its checkpoints ("budget"), and from it the run follows
iterations alone: a resumed run equals the uninterrupted one, and `--max-iters N --max-time none` with the
recorded --schedule-ends replays it exactly. A count the user gives on resuming (--max-iters) is never moved.

Budget holds the count and its record; Pacer measures the run's own pace and says when to settle; the trainer
calibrates (it alone can snapshot and put back the run) and moves the count.

Ctrl-C, or SIGTERM as torchrun and cluster schedulers send it, sets a flag that the loop reads between steps.
"""

from __future__ import annotations

import signal
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

from gptlab.errors import GptlabError
from gptlab.training.config import parse_duration

WARM_STEPS = 4  # untimed: the first steps allocate memory (and compile, with --compile), and run slower
TIMED_STEPS = 6
REFINE_STEPS = 20  # the fewest steps of the run itself whose pace may settle the count at the end of warmup
TOLERANCE = 0.02  # an evaluation moves the count where the run would end more than this share of the budget off
SHORT_WARMUP = 4  # a budget shorter than the warmup warms up over a quarter of its count instead


class Cost(NamedTuple):
    """The measured seconds of one iteration: its step, and its share of evaluations and checkpoints."""

    step: float
    overhead: float

    @property
    def per_iter(self) -> float:
        return self.step + self.overhead


def measure(step: Callable[[], object], extras: list[tuple[Callable[[], object], float]],
            sync: Callable[[], None], compiled: bool = False, clock: Callable[[], float] = time.perf_counter) -> Cost:
    """The cost of an iteration: the median of TIMED_STEPS steps after WARM_STEPS (a slow step, say a page fault,
    does not count), and, for each (call, share) of extras, share times the call's time: an evaluation and a
    checkpoint come once every eval_interval steps. With a compiled model each extra is called once untimed
    first (an evaluation compiles again). The caller restores the run's state afterwards."""
    for _ in range(WARM_STEPS):
        step()
    sync()
    times = []
    for _ in range(TIMED_STEPS):
        start = clock()
        step()
        sync()
        times.append(clock() - start)
    overhead = 0.0
    for call, share in extras:
        if compiled:
            call()
            sync()
        start = clock()
        call()
        sync()
        overhead += (clock() - start) * share
    return Cost(statistics.median(times), overhead)


def iteration_budget(max_time: float, elapsed: float, it: int, per_iter: float, cap: int) -> int:
    """The iteration at which the time left runs out (at least one more step), and no later than cap."""
    left = max(0.0, max_time - elapsed)
    return min(cap, it + max(1, int(left / max(per_iter, 1e-9))))


@dataclass
class Budget:
    """A time budget as an iteration count, and every settlement of it (config.json's "budget" record)."""

    max_time: str  # as the user wrote it ("5m")
    seconds: float
    cap: int  # the most iterations it may give (--max-iters)
    iters: int  # the count in force
    seconds_per_iter: float  # the pace behind it
    overhead_per_iter: float = 0.0  # calibration's share of an evaluation and a checkpoint per iteration
    measured_at_iter: int = 0
    settle_at: int | None = None  # where the run's own pace first settles the count (None: done, or not due)
    fixed: bool = False  # the user gave --max-iters (or --max-time none) on resuming: the count stays
    settled_at_iter: int | None = None  # where the run's own pace first settled it
    warmup_from: int | None = None  # the warmup that a budget shorter than it shortened
    settlements: list[dict] = field(default_factory=list)  # {"iter", "iters", "seconds_per_iter"}, in order

    @property
    def final(self) -> bool:
        """Whether the count no longer waits for its first settlement on the run's own pace."""
        return self.settle_at is None

    @classmethod
    def first(cls, max_time: str, seconds: float, cap: int, cost: Cost, elapsed: float, it: int) -> Budget:
        """The count from calibration's measured cost of an iteration."""
        iters = iteration_budget(seconds, elapsed, it, cost.per_iter, cap)
        return cls(max_time, seconds, cap, iters, round(cost.per_iter, 6), round(cost.overhead, 6), it)

    def shorten_warmup(self, warmup: int) -> int:
        """The warmup the run keeps: where the first count would end a new run inside it, the budget is shorter
        than the warmup would take, and the warmup becomes a quarter of the count (a count that --max-iters cut
        short is the user's own choice, and keeps it)."""
        if self.measured_at_iter > 0 or not self.iters <= warmup < self.cap:
            return warmup
        self.warmup_from = warmup
        return self.iters // SHORT_WARMUP

    def plan(self, warmup: int, eval_interval: int) -> None:
        """Where the run's own pace first settles the count: at the end of warmup, where warmup leaves
        REFINE_STEPS steps to measure and ends before the count; else, where no evaluation comes before the count
        would end the run, after REFINE_STEPS steps (or the step before the last, for a shorter count); else the
        evaluations settle it."""
        start = self.measured_at_iter + REFINE_STEPS
        first_evaluation = (self.measured_at_iter // eval_interval + 1) * eval_interval
        early = min(start, self.iters - 1)
        if start <= warmup < self.iters:
            self.settle_at = warmup
        elif self.measured_at_iter < early and self.iters <= first_evaluation:
            self.settle_at = early
        else:
            self.settle_at = None

    def settle(self, it: int, elapsed: float, per_iter: float, least: int = 0, first: bool = False) -> int | None:
        """The new count from the pace per_iter at iteration it (elapsed seconds), at least `least` and at most
        the cap; None where an evaluation's count would stay within TOLERANCE of the budget (the first settlement
        on the run's own pace, `first`, moves it regardless)."""
        iters = min(self.cap, max(least, iteration_budget(self.seconds, elapsed, it, per_iter, self.cap)))
        if not first and abs(iters - self.iters) * per_iter <= TOLERANCE * self.seconds:
            return None
        self.iters, self.seconds_per_iter = iters, round(per_iter, 6)
        if first:
            self.settle_at, self.settled_at_iter = None, it
        self.settlements.append(dict(iter=it, iters=iters, seconds_per_iter=round(per_iter, 6)))
        return iters

    def record(self) -> dict:
        return {**{k: v for k, v in asdict(self).items() if v is not None}, "final": self.final}

    @classmethod
    def from_record(cls, record: dict, warmup: int, max_iters: int) -> Budget:
        """A budget from config.json. Records of earlier versions may lack the newer fields: the seconds (from
        max_time), the cap (the count), and where an unsettled count settles (at the end of warmup)."""
        known = {k: v for k, v in record.items() if k in cls.__dataclass_fields__}
        known.setdefault("seconds", parse_duration(record.get("max_time")))
        known.setdefault("cap", max_iters)
        if "settle_at" not in record and record.get("final") is False:
            known["settle_at"] = warmup
        try:
            return cls(**known)
        except TypeError:
            raise GptlabError("the run's time budget record is incomplete; resume it with --max-iters N") from None


class Pacer:
    """The pace of the run's own steps, which settles a time budget's count as the run goes (the module's
    docstring says when): where the pace is measured from, the seconds spent evaluating, and which iteration the
    first settlement is due at. It reads the run's time through `elapsed`, every process's largest through
    `agree` (the counts must be the same everywhere), after `sync`; it says when to settle and at what pace, and
    the trainer moves the count (Trainer.settle), then tells it (settled)."""

    def __init__(self, budget: Budget | None, elapsed: Callable[[], float], agree: Callable[[float], float],
                 sync: Callable[[], None]):
        self.budget, self.elapsed, self.agree, self.sync = budget, elapsed, agree, sync
        self.since: tuple[float, int] | None = None  # (elapsed, iteration) evaluations measure from (checkpointed)
        self.eval_seconds = 0.0  # spent evaluating and saving, which the pace of the steps leaves out
        self.first_at: int | None = None  # where the first settlement on the run's own pace is due
        self.measured_from: tuple[float, int, float] = (0.0, 0, 0.0)  # that: (elapsed, iteration, eval_seconds)
        self.warm: tuple[int, float] | None = None  # a resumed run: (iteration, elapsed) of its warm steps' end

    @property
    def active(self) -> bool:
        """Whether the count may still move: a budget the user has not replaced by a count of their own."""
        return self.budget is not None and not self.budget.fixed

    def begin(self, it: int, max_iters: int) -> None:
        """Start measuring at iteration `it` (a new run's first, or a resumed run's). A resumed run goes on measuring
        its pace from where its checkpoint had come to, and measures at least REFINE_STEPS steps of its own before
        a first settlement."""
        now = self.elapsed()
        self.first_at, self.measured_from, self.warm = self._first_at(it, max_iters), (now, it, self.eval_seconds), None
        if self.since is None:
            self.since = (self.agree(now), it)
        elif self.active:
            self.warm = (it + WARM_STEPS, self.agree(now))

    def _first_at(self, it: int, max_iters: int) -> int | None:
        budget = self.budget
        if not budget or budget.final or budget.fixed:
            return None
        at = budget.settle_at if it == budget.measured_at_iter else max(budget.settle_at, it + REFINE_STEPS)
        if at < max_iters:
            return at
        budget.settle_at = None  # (too close to its end to measure: the count stays)
        return None

    def after_step(self, it: int) -> tuple[float, str, bool] | None:
        """After step `it`: the pace to settle the count by now (seconds per iteration, over what, whether it is
        the first settlement), or None. The first is the pace of the run's own steps since `measured_from`,
        evaluations left out, plus calibration's share of evaluations per iteration."""
        if self.warm and it == self.warm[0]:
            self._discount_warm_steps()
        if it != self.first_at:
            return None
        start, start_it, eval_start = self.measured_from
        self.sync()
        step = (self.elapsed() - start - (self.eval_seconds - eval_start)) / (it - start_it)
        return self.agree(step) + self.budget.overhead_per_iter, f"over {it - start_it} steps", True

    def _discount_warm_steps(self) -> None:
        """A resumed process's first WARM_STEPS steps allocate memory (and compile, with --compile): the time they
        take beyond the run's pace is a one-off, left out of the pace that settles the count (the budget still
        pays for it)."""
        excess = max(0.0, self.agree(self.elapsed()) - self.warm[1] - WARM_STEPS * self.budget.seconds_per_iter)
        self.since = (self.since[0] + excess, self.since[1])
        self.measured_from = (self.measured_from[0] + excess, *self.measured_from[1:])

    def after_evaluation(self, it: int) -> tuple[float, str, bool] | None:
        """After an evaluation at iteration `it`: the pace since the last settlement (steps, evaluations and
        checkpoints together). The window grows until a settlement moves the count: a step's time varies by
        several percent on a shared machine, and a short window would move the count back and forth."""
        start, start_it = self.since
        self.sync()
        now = self.agree(self.elapsed())
        if it == start_it:  # the end of warmup has just settled it: measure from after this evaluation, so
            self.since = (now, it)  # that each window holds one evaluation per eval_interval steps
            return None
        return (now - start) / (it - start_it), f"over the last {it - start_it} iterations", False

    def settled(self, elapsed: float, it: int) -> None:
        """The count moved at iteration `it`: the next pace is measured from here."""
        self.since = (elapsed, it)


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
