"""The monitor: samples the worker's process tree and the whole machine from the parent.

CPU time of the tree comes from ``/proc/<pid>/task/<tid>/schedstat`` (nanoseconds,
no 10 ms tick quantization). Machine CPU comes from the per-core lines of
``/proc/stat`` (ticks). Every rate divides a counter delta by the *actual*
time between the two readings, never the nominal window: a late wake-up under
load must not inflate a spike.

Threads that exit between two readings lose their last partial window, at most
one window of one thread; llama.cpp's compute threads are long-lived.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class Window:
    t0: float
    t1: float
    tree_cpu_s: float          # CPU seconds used by the worker tree in the window
    core_busy: list[float]     # per-core busy fraction of the machine, 0..1
    rss_anon_kb: int = 0
    rss_file_kb: int = 0
    psi_some_s: float | None = None  # seconds some task stalled waiting for CPU (PSI), if the kernel has it
    # How far the true interval of ``tree_cpu_s`` may be longer than t1 - t0: half of each end's
    # reading of the tree (a reading is stamped at its midpoint; the monitor may be preempted mid-read).
    skew_s: float = 0.0

    @property
    def core_pct(self) -> float:
        """The worker tree's CPU in this window, as percent of one core."""
        return 100 * self.tree_cpu_s / (self.t1 - self.t0)

    @property
    def machine_pct(self) -> float:
        """The whole machine's busy percent in this window (all cores averaged)."""
        return 100 * sum(self.core_busy) / len(self.core_busy) if self.core_busy else 0.0


@dataclass
class Series:
    window_s: float
    ncpu: int
    windows: list[Window] = field(default_factory=list)
    monitor_cpu_s: float = 0.0  # CPU the sampler thread itself used
    monitor_wall_s: float = 0.0


def _read_proc_stat() -> list[tuple[int, int]]:
    """(busy, total) ticks per core."""
    out = []
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                v = [int(x) for x in line.split()[1:9]]
                total = sum(v)
                out.append((total - v[3] - v[4], total))  # idle and iowait are not busy
    return out


def machine_busy_pct(seconds: float) -> float:
    """Whole-machine busy percent over the next ``seconds`` (blocks)."""
    before = _read_proc_stat()
    time.sleep(seconds)
    after = _read_proc_stat()
    busy = sum(b1 - b0 for (b0, _), (b1, _) in zip(before, after))
    total = sum(n1 - n0 for (_, n0), (_, n1) in zip(before, after))
    return 100 * busy / total if total else 0.0


def noise_guard(settings: Any) -> tuple[float, bool]:
    """One look at the machine for ``noise_check_seconds``: its busy %, and whether that is over
    ``noise_max_pct``. Waiting and looking again is the runner's one retry policy (``run_trial``)."""
    pct = machine_busy_pct(settings.noise_check_seconds)
    return pct, pct > settings.noise_max_pct


def _read_psi_some_us() -> int | None:
    """Cumulative microseconds in which some task waited for a CPU (``/proc/pressure/cpu``)."""
    try:
        with open("/proc/pressure/cpu") as f:
            return int(f.readline().rsplit("total=", 1)[1])
    except (OSError, IndexError, ValueError):
        return None


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids.extend(int(x) for x in f.read().split())
    except (FileNotFoundError, ProcessLookupError):
        pass
    return kids


def tree_pids(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo.extend(_children(p))
    return pids


def _thread_ns(pid: int) -> dict[tuple[int, int], int]:
    out: dict[tuple[int, int], int] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                out[(pid, int(tid))] = int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
    return out


def _rss_kb(pid: int) -> tuple[int, int]:
    anon = file_ = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    anon = int(line.split()[1])
                elif line.startswith("RssFile:"):
                    file_ = int(line.split()[1])
    except OSError:  # gone (ProcessLookupError when it exits between open and read): nothing to add
        pass
    return anon, file_


class Monitor:
    """Sample every ``window_s`` seconds in a background thread until ``stop()``.

    ``on_sample`` is called after each window with it (the runner uses this to
    enforce a memory limit as soon as it is crossed).
    """

    def __init__(self, window_s: float = 0.1, on_sample: Callable[[Window], None] | None = None) -> None:
        self.series = Series(window_s=window_s, ncpu=len(_read_proc_stat()))
        self._pid: int | None = None
        self._on_sample = on_sample
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sweep-monitor", daemon=True)
        self._last_ns: dict[tuple[int, int], int] = {}

    def start(self) -> Monitor:
        self._thread.start()
        return self

    def attach(self, pid: int) -> None:
        self._pid = pid

    def stop(self) -> Series:
        self._stop.set()
        self._thread.join()
        return self.series

    def _tree_delta_s(self) -> float:
        """CPU seconds of the tree since the last call: every thread's counter first, in one
        sweep, so the reading is short and its timestamp tight; the memory is read after."""
        if self._pid is None:
            return 0.0
        now: dict[tuple[int, int], int] = {}
        for pid in tree_pids(self._pid):
            now.update(_thread_ns(pid))
        # A thread not seen before was born after the previous reading (the worker
        # is attached right after fork), so all of its time belongs to this window.
        delta = sum(ns - self._last_ns.get(key, 0) for key, ns in now.items())
        self._last_ns = now
        return delta / 1e9

    def _tree_rss_kb(self) -> tuple[int, int]:
        anon = file_ = 0
        for pid in {p for p, _ in self._last_ns}:
            a, f = _rss_kb(pid)
            anon, file_ = anon + a, file_ + f
        return anon, file_

    def _loop(self) -> None:
        cpu0, wall0 = time.thread_time(), time.monotonic()
        prev_stat, prev_psi = _read_proc_stat(), _read_psi_some_us()
        t_a = time.monotonic()
        self._tree_delta_s()  # the first reading only sets the base
        t_b = time.monotonic()
        prev_t, prev_half = (t_a + t_b) / 2, (t_b - t_a) / 2
        deadline = prev_t
        while not self._stop.is_set():
            deadline += self.series.window_s
            delay = deadline - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            else:
                deadline = time.monotonic()  # overslept: restart the grid rather than burst
            # Timestamp the tree reading itself (the midpoint of its reads), so the
            # counter delta and the elapsed time describe the same interval.
            t_a = time.monotonic()
            tree_s = self._tree_delta_s()
            t_b = time.monotonic()
            t, half = (t_a + t_b) / 2, (t_b - t_a) / 2
            anon, file_ = self._tree_rss_kb()
            stat, psi = _read_proc_stat(), _read_psi_some_us()
            busy = [(b1 - b0) / (n1 - n0) if n1 > n0 else 0.0 for (b0, n0), (b1, n1) in zip(prev_stat, stat)]
            psi_s = (psi - prev_psi) / 1e6 if psi is not None and prev_psi is not None else None
            window = Window(prev_t, t, tree_s, busy, anon, file_, psi_s, prev_half + half)
            self.series.windows.append(window)
            if self._on_sample:
                self._on_sample(window)
            prev_t, prev_half, prev_stat, prev_psi = t, half, stat, psi
        self.series.monitor_cpu_s = time.thread_time() - cpu0
        self.series.monitor_wall_s = time.monotonic() - wall0
