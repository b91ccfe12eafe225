"""The portable measurement path: psutil and the standard library (macOS, Windows, the BSDs;
``SWEEP_PLATFORM=portable`` on Linux).

Per-thread CPU is psutil's ``Process.threads()`` (user plus system time), and where the OS
refuses it (another user's process on macOS, say) the process's own ``cpu_times()`` as one
entry. Its resolution is the OS's: on Linux psutil reads ``/proc/<pid>/task/<tid>/stat``, in
clock ticks (10 ms at ``CLK_TCK`` 100), so a 100 ms window of one busy thread reads in steps of
10 points, where the Linux path's nanoseconds read smooth; a trial's mean is unaffected.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import psutil


class PortableSampler:
    def __init__(self) -> None:
        # One psutil.Process per pid, kept across readings: making one reads the process's start
        # time, which was three times per window per process.
        self._procs: dict[int, psutil.Process] = {}

    def _proc(self, pid: int) -> psutil.Process:
        p = self._procs.get(pid)
        if p is None:
            if len(self._procs) > 256:  # the pids of earlier trials
                self._procs.clear()
            p = self._procs[pid] = psutil.Process(pid)
        return p

    def _gone(self, pid: int) -> None:
        self._procs.pop(pid, None)

    def machine(self) -> list[tuple[float, float]]:
        out: list[tuple[float, float]] = []
        for t in psutil.cpu_times(percpu=True):
            total = sum(t)
            out.append((total - t.idle - getattr(t, "iowait", 0.0), total))  # idle and iowait are not busy
        return out

    def thread_ns(self, pid: int) -> dict[tuple[int, int], int]:
        try:
            p = self._proc(pid)
            try:
                return {(pid, t.id): round((t.user_time + t.system_time) * 1e9) for t in p.threads()}
            except psutil.AccessDenied:
                c = p.cpu_times()
                return {(pid, 0): round((c.user + c.system) * 1e9)}
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            self._gone(pid)
            return {}

    def children(self, pid: int) -> list[int]:
        try:
            return [c.pid for c in self._proc(pid).children()]
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            self._gone(pid)
            return []

    def rss_kb(self, pid: int) -> tuple[int, int | None]:
        """Linux's psutil gives the shared (file-backed and shmem) part, so anonymous = rss - shared;
        elsewhere only the total is known, recorded as anonymous, file-backed unknown (None)."""
        try:
            m = self._proc(pid).memory_info()
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            self._gone(pid)
            return 0, 0
        shared = getattr(m, "shared", None)
        if shared is None:
            return m.rss // 1024, None
        return (m.rss - shared) // 1024, shared // 1024

    def psi_some_us(self) -> int | None:
        return None  # no portable source

    def describe(self) -> dict[str, Any]:
        tick = 1 / os.sysconf("SC_CLK_TCK") if sys.platform.startswith("linux") else None
        return {"platform": "portable", "os": sys.platform, "psutil": psutil.__version__,
                "thread_cpu": "psutil threads()", "thread_cpu_resolution_s": tick,
                "clock_resolution_s": time.get_clock_info("monotonic").resolution}
