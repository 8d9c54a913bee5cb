"""gptlab.cores: torch's thread count chosen from the cores that other processes leave free, and followed as they
come and go; the load itself measured from /proc/stat, without this process or the children it waited for."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gptlab import cores


class Loads:
    """A load that reads the given numbers, one per look (the last one again when they run out)."""

    def __init__(self, *values: float):
        self.values = list(values)

    def others(self) -> float:
        return self.values.pop(0) if len(self.values) > 1 else self.values[0]


@pytest.fixture
def four_cores(monkeypatch):
    """A machine of four cores whose torch would run four threads; torch's own count is put back afterwards."""
    before = torch.get_num_threads()
    monkeypatch.setattr(cores, "usable_cores", lambda: 4)
    monkeypatch.setattr(cores, "default_threads", lambda: 4)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    yield
    torch.set_num_threads(before)


def test_threads_leave_the_cores_that_others_keep_busy(four_cores):
    counts = {load: cores.Threads(load=Loads(load)).count for load in (0.0, 0.6, 0.7, 1.5, 2.0, 9.0)}
    assert counts == {0.0: 4, 0.6: 4, 0.7: 3, 1.5: 3, 2.0: 2, 9.0: 1}  # a core is taken at 0.7 of it; one at least
    shared = cores.Threads(load=Loads(1.0))
    assert torch.get_num_threads() == 3
    assert shared.note == ("warning: other processes keep 1.0 of the 4 cores busy: computing with 3 of 4 threads "
                           "(--threads 4 to use them anyway)")
    assert cores.Threads(load=Loads(0.1)).note == "threads: 4, of 4 cores"


def test_a_count_the_user_gives_stays_and_is_warned_about(four_cores, monkeypatch):
    mine = cores.Threads(4, load=Loads(2.0, 0.0))
    assert mine.count == 4 and torch.get_num_threads() == 4 and mine.adjust() is None
    assert mine.note == "warning: other processes keep 2.0 of the 4 cores busy, and 4 threads (--threads) will share " \
                        "them: expect slow steps"
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # torchrun's, or the user's
    assert not cores.Threads(load=Loads(3.0)).auto


def test_a_run_follows_the_load_as_it_changes(four_cores):
    """Fewer threads as soon as another process takes a core; more only once it has really left (FREED)."""
    threads = cores.Threads(load=Loads(0.0, 2.1, 2.0, 0.5, 0.5, 0.2))
    assert threads.count == 4
    assert threads.adjust() == "threads: now 2, as 2.1 of the 4 cores are busy with other processes"
    assert threads.adjust() is None and torch.get_num_threads() == 2
    assert threads.adjust() == "threads: now 3, as 0.5 of the 4 cores are busy with other processes"
    assert threads.adjust() is None  # half a core still busy: not yet all four
    assert threads.adjust() is not None and threads.count == 4
    assert cores.Threads(4, load=Loads(0.0)).adjust() is None  # a count the user gave never moves


def test_the_load_is_the_busy_time_less_this_process_and_its_children(monkeypatch):
    """Between two looks: the cores' busy seconds, less this process's own CPU seconds (its waited-for children's
    included), per second of wall time."""
    wall, busy, own = iter([10.0, 12.0, 12.0]), iter([100.0, 104.5]), iter([50.0, 51.5])  # (a look, then two reads)
    monkeypatch.setattr(cores.time, "monotonic", lambda: next(wall))
    monkeypatch.setattr(cores, "_busy_seconds", lambda: next(busy))
    monkeypatch.setattr(cores, "_own_seconds", lambda: next(own))
    assert cores.Load().others() == pytest.approx((4.5 - 1.5) / 2.0)


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="measures the load through Linux's /proc/stat")
def test_a_busy_process_beside_this_one_is_about_one_core():
    """Measured for real: a spinning process beside this one adds about one core to the load; this process's own
    work, and a child it waited for (a command it ran, say), add none. Against the load measured
    just before, so that the machine's own background does not count."""
    spin = "import time\nt = time.time()\nwhile time.time() - t < {}: pass"
    load = cores.Load()
    time.sleep(0.5)
    background = load.others()
    if background > 0.5:
        pytest.skip(f"other processes keep {background:.1f} cores busy: the measurement would be theirs too")
    busy = subprocess.Popen([sys.executable, "-c", spin.format(1.0)])
    try:
        time.sleep(0.2)
        load.others()  # from here on the other process is running
        time.sleep(0.5)
        beside = load.others()
    finally:
        busy.wait()
    load.others()
    start = time.monotonic()
    while time.monotonic() - start < 0.3:  # this process, busy
        sum(range(1000))
    subprocess.run([sys.executable, "-c", spin.format(0.3)], check=True)  # a child it waits for
    mine = load.others()
    assert 0.6 < beside - background < 1.4 and mine - background < 0.4, (background, beside, mine)


def test_a_quota_caps_the_threads_and_is_measured_by_its_cgroup(tmp_path, monkeypatch):
    """In a container of 2 CPUs' quota on a machine of many cores, torch's default would be the machine's cores:
    gptlab takes at most the quota, and the load that counts is the cgroup's (its cpu.stat), not the host's."""
    (tmp_path / "cpu.max").write_text("200000 100000\n")
    stat = tmp_path / "cpu.stat"
    stat.write_text("usage_usec 5000000\nuser_usec 4000000\n")
    monkeypatch.setattr(cores, "CPU_MAX", tmp_path / "cpu.max")
    monkeypatch.setattr(cores, "CPU_STAT", stat)
    monkeypatch.setattr(cores, "default_threads", lambda: 32)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        assert cores._busy_seconds() == 5.0
        assert cores.Threads(load=Loads(0.0)).count == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="reads the CPU affinity (Linux)")
def test_a_cgroup_quota_caps_the_usable_cores(tmp_path, monkeypatch):
    quota = tmp_path / "cpu.max"
    monkeypatch.setattr(cores, "CPU_MAX", quota)
    affinity = len(os.sched_getaffinity(0))
    quota.write_text("max 100000\n")
    assert cores.usable_cores() == affinity
    quota.write_text("50000 100000\n")  # half a core
    assert cores.usable_cores() == 1
    quota.write_text("150000 100000\n")
    assert cores.usable_cores() == min(affinity, 2)
