"""The portable measurement path: psutil and the standard library (macOS, Windows, the BSDs;
``SWEEP_PLATFORM=portable`` on Linux).

Per-thread CPU is psutil's ``Process.threads()`` (user plus system time), and where the OS
refuses it (another user's process on macOS, say) the process's own ``cpu_times()`` as one
entry. Its resolution is the OS's: on Linux psutil reads ``/proc/<pid>/task/<tid>/stat``, in
clock ticks (10 ms at ``CLK_TCK`` 100), so a 100 ms window of one busy thread reads in steps of
10 points, where the Linux path's nanoseconds read smooth; a trial's mean is unaffected.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Any, Iterator

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


# Process control on the portable path: what psutil can do on every OS it supports, and read back
# at the process's level (psutil reads no thread's nice, affinity or policy).

def has_affinity() -> bool:
    """Whether this OS lets a process choose its CPUs (macOS has no such call)."""
    return hasattr(psutil.Process, "cpu_affinity")


def allowed_cpus() -> list[int]:
    """The CPU ids this process may run on: its affinity where the OS has one, else every CPU."""
    if has_affinity():
        return sorted(psutil.Process().cpu_affinity() or [])
    return list(range(psutil.cpu_count() or 1))


@contextlib.contextmanager
def stay_off(cpus: tuple[int, ...] | None) -> Iterator[None]:
    """The calling process on every allowed CPU but ``cpus`` while inside (see ``sweep.procs.stay_off``)."""
    others = sorted(set(allowed_cpus()) - set(cpus)) if cpus and has_affinity() else []
    if not others:
        yield
        return
    p = psutil.Process()
    before = p.cpu_affinity()
    p.cpu_affinity(others)
    try:
        yield
    finally:
        p.cpu_affinity(before)


def mem_total_bytes() -> int:
    return int(psutil.virtual_memory().total)


def apply_knobs(cpus: list[int] | None, nice: int) -> None:
    """Affinity and nice on the calling process, through psutil. Threads created later inherit both.
    Without an affinity call (macOS) a space cannot pin (the knob table refuses it), so ``cpus`` is
    every CPU and there is nothing to set."""
    p = psutil.Process()
    if cpus is not None and has_affinity():
        p.cpu_affinity(sorted(cpus))
    if nice:
        p.nice(nice)


def read_knobs(pid: int) -> list[dict[str, Any]]:
    """The process's affinity and nice as psutil reads them, as one entry: psutil has no per-thread
    read-back, so a thread that changed its own is not seen here (``scope: process`` says so)."""
    p = psutil.Process(pid)
    cpus = p.cpu_affinity() if has_affinity() else None
    return [{"tid": pid, "nice": p.nice(), "policy": None, "scope": "process",
             "cpus": ",".join(map(str, cpus)) if cpus is not None else None}]


def watch_parent(parent: int, poll_s: float = 0.2) -> None:
    """End this process (and its process group, when it leads one) once ``parent`` is gone: a
    daemon thread, where the OS has no parent-death signal."""
    import signal
    import threading

    def watch() -> None:
        while psutil.pid_exists(parent) and os.getppid() == parent:
            time.sleep(poll_s)
        if hasattr(os, "killpg") and os.getpgrp() == os.getpid():
            os.killpg(os.getpid(), signal.SIGKILL)  # its children (llama-server) share its group
        os._exit(1)

    threading.Thread(target=watch, name="sweep-watch-parent", daemon=True).start()


def _each(pid: int, act: str) -> None:
    """``Process.<act>()`` on ``pid`` and each of its descendants, passing over one gone meanwhile."""
    p = psutil.Process(pid)
    for q in [p, *p.children(recursive=True)]:
        try:
            getattr(q, act)()
        except psutil.NoSuchProcess:
            pass


def suspend(pid: int) -> None:
    """Pause ``pid`` and its descendants (``psutil.Process.suspend``: SIGSTOP, or a suspended thread
    on Windows)."""
    _each(pid, "suspend")


def resume(pid: int) -> None:
    _each(pid, "resume")


def lock(fd: int) -> bool:
    """Take an exclusive lock on ``fd`` without waiting (portalocker: ``flock`` on POSIX, so it
    excludes the Linux path's lock on the same file; ``msvcrt.locking`` on Windows)."""
    import portalocker

    try:
        portalocker.lock(fd, portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING)
        return True
    except portalocker.exceptions.LockException:
        return False


def unlock(fd: int) -> None:
    import portalocker

    portalocker.unlock(fd)


def alive(pid: int) -> bool:
    return bool(psutil.pid_exists(pid))
