"""The monitor: samples the worker's process tree and the whole machine from the parent.

The counters come from the measurement path (``sweep.platforms``). On Linux, CPU time of the
tree comes from ``/proc/<pid>/task/<tid>/schedstat`` (nanoseconds, no 10 ms tick
quantization) and machine CPU from the per-core lines of ``/proc/stat`` (ticks). Every rate
divides a counter delta by the *actual* time between the two readings, never the nominal
window: a late wake-up under load must not inflate a spike.

Threads that exit between two readings lose their last partial window, at most
one window of one thread; llama.cpp's compute threads are long-lived.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from sweep.platforms import Sampler, sampler


@dataclass
class Window:
    t0: float
    t1: float
    tree_cpu_s: float          # CPU seconds used by the worker tree in the window
    core_busy: list[float]     # per-core busy fraction of the machine, 0..1
    rss_anon_kb: int = 0
    rss_file_kb: int | None = 0  # None: the OS does not split resident memory (the portable path off Linux)
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
    platform: dict[str, Any] = field(default_factory=dict)  # the measurement path (``Sampler.describe``)


def machine_busy_pct(seconds: float) -> float:
    """Whole-machine busy percent over the next ``seconds`` (blocks)."""
    machine = sampler().machine
    before = machine()
    time.sleep(seconds)
    after = machine()
    busy = sum(b1 - b0 for (b0, _), (b1, _) in zip(before, after))
    total = sum(n1 - n0 for (_, n0), (_, n1) in zip(before, after))
    return 100 * busy / total if total else 0.0


def noise_guard(settings: Any) -> tuple[float, bool]:
    """One look at the machine for ``noise_check_seconds``: its busy %, and whether that is over
    ``noise_max_pct``. Waiting and looking again is the runner's one retry policy (``run_trial``)."""
    pct = machine_busy_pct(settings.noise_check_seconds)
    return pct, pct > settings.noise_max_pct


def tree_pids(pid: int, source: Sampler | None = None) -> list[int]:
    children = (source or sampler()).children
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo.extend(children(p))
    return pids


class Monitor:
    """Sample every ``window_s`` seconds in a background thread until ``stop()``.

    ``on_sample`` is called after each window with it (the runner uses this to
    enforce a memory limit as soon as it is crossed).
    """

    def __init__(self, window_s: float = 0.1, on_sample: Callable[[Window], None] | None = None) -> None:
        self.source = sampler()
        self.series = Series(window_s=window_s, ncpu=len(self.source.machine()), platform=self.source.describe())
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
        for pid in tree_pids(self._pid, self.source):
            now.update(self.source.thread_ns(pid))
        # A thread not seen before was born after the previous reading (the worker
        # is attached right after fork), so all of its time belongs to this window.
        delta = sum(ns - self._last_ns.get(key, 0) for key, ns in now.items())
        self._last_ns = now
        return delta / 1e9

    def _tree_rss_kb(self) -> tuple[int, int | None]:
        """Anonymous and file-backed KiB of the tree (file-backed None where the OS does not split them)."""
        anon, file_ = 0, 0
        known = True
        for pid in {p for p, _ in self._last_ns}:
            a, f = self.source.rss_kb(pid)
            anon += a
            if f is None:
                known = False
            else:
                file_ += f
        return anon, file_ if known else None

    def _loop(self) -> None:
        cpu0, wall0 = time.thread_time(), time.monotonic()
        prev_stat, prev_psi = self.source.machine(), self.source.psi_some_us()
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
            stat, psi = self.source.machine(), self.source.psi_some_us()
            busy = [(b1 - b0) / (n1 - n0) if n1 > n0 else 0.0 for (b0, n0), (b1, n1) in zip(prev_stat, stat)]
            psi_s = (psi - prev_psi) / 1e6 if psi is not None and prev_psi is not None else None
            window = Window(prev_t, t, tree_s, busy, anon, file_, psi_s, prev_half + half)
            self.series.windows.append(window)
            if self._on_sample:
                self._on_sample(window)
            prev_t, prev_half, prev_stat, prev_psi = t, half, stat, psi
        self.series.monitor_cpu_s = time.thread_time() - cpu0
        self.series.monitor_wall_s = time.monotonic() - wall0
