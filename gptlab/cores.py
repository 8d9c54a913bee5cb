"""How many threads torch computes with on a CPU: the cores this process may use, less those that other
processes keep busy.

Two processes that each run as many threads as there are cores slow each other down many times over: a
parallel region ends only when its slowest thread does, and a thread that shares its core with another process
arrives late every time (on 2 cores, a finetune beside a training run took 2,261 s instead of 241 s). So where
the user names no thread count (--threads 0, and no OMP_NUM_THREADS), gptlab counts the cores it may use (its CPU
affinity, and a cgroup's CPU quota where there is one), measures how much of them other processes used since the
last look (Linux's /proc/stat, or under a quota the cgroup's cpu.stat, less this process's own CPU time and its
waited-for children's), and takes the rest, at least one thread and at most torch's own default. A training run
looks again as it goes (Threads.adjust) and follows the machine.

    threads = Threads(requested=0)     # chooses, and sets torch's thread count
    threads.note                       # what was chosen and why, for the run's first lines
    threads.adjust()                   # later: fewer threads when another process got busy, more when it left

Without /proc/stat (macOS) the load average stands in for the measurement, and a run does not adjust.
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

STAT = Path("/proc/stat")
CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "QUOTA PERIOD" in microseconds, or "max PERIOD"
CPU_STAT = Path("/sys/fs/cgroup/cpu.stat")  # cgroup v2: "usage_usec N", the CPU time of the cgroup's processes
TAKEN = 0.7  # a core counts as another process's when it keeps that much of it busy ...
FREED = 0.4  # ... and as free again when it uses no more than this (between the two, nothing changes)
MIN_WINDOW = 0.2  # seconds: a shorter look back is too coarse (the kernel counts CPU time in 10 ms ticks)


def _quota() -> float | None:
    """The cores' worth of CPU time a cgroup's quota allows this process (a container's --cpus), or None."""
    try:
        quota, period = CPU_MAX.read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity, capped by a cgroup's CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = _quota()
    return cores if quota is None else min(cores, max(1, math.ceil(quota)))


@cache
def default_threads() -> int:
    """torch's own thread count (its physical cores, or OMP_NUM_THREADS) before gptlab changed it."""
    import torch

    return torch.get_num_threads()


def _busy_seconds() -> float | None:
    """CPU seconds that the cores this process may use have been busy (every process's), or None. Under a cgroup
    quota, the cgroup's own (cpu.stat): the other processes that count are those that share the quota, not the
    host's other tenants."""
    if _quota() is not None:
        try:
            usage = re.search(r"^usage_usec (\d+)", CPU_STAT.read_text(), re.MULTILINE)
            return int(usage.group(1)) / 1e6 if usage else None
        except OSError:
            return None
    try:
        lines = STAT.read_text().splitlines()
        mine = {f"cpu{i}" for i in os.sched_getaffinity(0)}
    except (OSError, AttributeError):
        return None
    ticks = 0
    for line in lines:
        name, *values = line.split()
        if name in mine:  # user nice system idle iowait irq softirq steal: all but idle and iowait are busy
            v = [int(x) for x in values[:8]]
            ticks += v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
    return ticks / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    """CPU seconds of this process (every thread) and of the children it has waited for (a command it ran,
    say, is not another process)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


@dataclass
class Look:
    """One reading: the time, the CPU time of every process on our cores, and this process's own CPU time."""

    wall: float
    busy: float | None
    own: float

    @classmethod
    def now(cls) -> Look:
        return cls(time.monotonic(), _busy_seconds(), _own_seconds())


class Load:
    """How many cores other processes keep busy, measured between two looks at /proc/stat."""

    def __init__(self):
        self.last, self.value = Look.now(), None

    def others(self) -> float:
        """Cores' worth of CPU that other processes used since the last measurement (or since this Load was
        made). Asked again within MIN_WINDOW, it gives the last measurement, which is that fresh."""
        waited = time.monotonic() - self.last.wall
        if waited < MIN_WINDOW:
            if self.value is not None:
                return self.value
            time.sleep(MIN_WINDOW - waited)
        now, last = Look.now(), self.last
        self.last = now
        if now.busy is None or last.busy is None:  # no /proc/stat: the 1-minute load average
            self.value = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        else:
            self.value = max(0.0, (now.busy - last.busy) - (now.own - last.own)) / (now.wall - last.wall)
        return self.value


STARTUP = Load()  # made when gptlab.cores is first imported (the CLI does at once): the first look covers start-up


class Threads:
    """torch's CPU thread count for a computation: the user's, or chosen from the cores others leave free."""

    def __init__(self, requested: int = 0, load: Load | None = None, follow: bool = True):
        """requested: the user's count (0: choose); follow False keeps torch's default where none is requested
        (a GPU run, whose CPU threads matter little)."""
        import torch

        self.auto = follow and requested == 0 and "OMP_NUM_THREADS" not in os.environ
        self.cores = usable_cores()
        self.most = min(default_threads(), self.cores)  # (torch counts the machine's cores, not a quota's)
        self.load = load or STARTUP
        self.others = self.load.others()
        self.count = self._fitting(self.most) if self.auto else requested or self.most
        torch.set_num_threads(self.count)

    def _fitting(self, current: int) -> int:
        """The threads that fit beside the others' load: a core is theirs at TAKEN of it, and free again at
        FREED; torch's default share of what is left."""
        taken = math.floor(self.others + 1 - TAKEN)
        threads = self.most * (self.cores - taken) // self.cores
        if threads > current:  # more threads only once the others have really left
            freed = math.floor(self.others + 1 - FREED)
            threads = max(current, self.most * (self.cores - freed) // self.cores)
        return max(1, min(self.most, threads))

    @property
    def free(self) -> int:
        """The cores the others leave."""
        return max(0, self.cores - math.floor(self.others + 1 - TAKEN))

    @property
    def note(self) -> str:
        """The choice and why, for a command's first lines; it starts with "warning:" where the cores are shared."""
        busy = f"other processes keep {self.others:.1f} of the {self.cores} cores busy"
        if self.auto and self.count < self.most:
            return (f"warning: {busy}: computing with {self.count} of {self.most} threads (--threads {self.most} "
                    f"to use them anyway)")
        source = "" if self.auto else " (OMP_NUM_THREADS)" if "OMP_NUM_THREADS" in os.environ else " (--threads)"
        if self.count > self.free:
            return f"warning: {busy}, and {self.count} threads{source} will share them: expect slow steps"
        return f"threads: {self.count}{source}, of {self.cores} cores"

    def adjust(self) -> str | None:
        """Follow the load since the last look: a message where the thread count changed, else None."""
        if not self.auto:
            return None
        import torch

        self.others = self.load.others()
        count = self._fitting(self.count)
        if count == self.count:
            return None
        self.count = count
        torch.set_num_threads(count)
        return f"threads: now {count}, as {self.others:.1f} of the {self.cores} cores are busy with other processes"
