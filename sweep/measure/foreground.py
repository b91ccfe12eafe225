"""The CPU-bound foreground workload: ``python -m sweep.measure.foreground THREADS UNIT_MIB``.

Stands in for a user's build. Each of THREADS threads hashes the same fixed
UNIT_MIB mebibytes (SHA-256, which releases the GIL, so the threads run in
parallel) over and over, as fast as the CPU lets it, and prints
``<start monotonic> <seconds> <process CPU seconds>`` per unit. Nothing in it depends on the
LLM, and the unit is fixed work, not calibrated: when the LLM takes CPU from it, a unit takes
longer, and the ratio of the median unit while the model answers to the median before the
worker started is the slowdown the user feels (``fg_cpu_slowdown``).

The parent pauses it (SIGSTOP; psutil's suspend on the portable path) while the trial's
uncontended figures are measured and resumes it for the contended pass; units cut by a pause
are left out by their times.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from typing import Callable

from sweep.platforms import is_portable, portable
from sweep.procs import Reporter

CHUNK = bytes(1 << 20)


def unit(mib: int) -> None:
    h = hashlib.sha256()
    for _ in range(mib):
        h.update(CHUNK)


class CpuLoad(Reporter[tuple[float, float, float, int]]):
    """The parent's side: the workload at normal priority on every CPU, unpinned, as a user's
    program would run, and the (start, seconds, CPU clock, process) of each unit it reports."""

    def __init__(self, threads: int, unit_mib: int, wrap: Callable[[list[str]], list[str]] | None = None) -> None:
        super().__init__("sweep.measure.foreground", [str(threads), str(unit_mib)], _parse, wrap)

    def pause(self) -> None:
        if is_portable():
            portable.suspend(self.proc.pid)
        else:
            os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if is_portable():
            portable.resume(self.proc.pid)
        else:
            os.killpg(self.proc.pid, signal.SIGCONT)


def _parse(line: str) -> tuple[float, float, float, int]:
    t, dt, cpu, process = line.split()
    return float(t), float(dt), float(cpu), int(process)


def calibrate(competitor: list[str] | None, baseline_s: float = 1.5, seconds: float = 3.0, threads: int | None = None,
              unit_mib: int = 16) -> dict[str, float]:
    """The workload's slowdown when ``competitor`` (a command, or None for nothing) starts after a
    baseline: what ``fg_cpu_slowdown`` reads against a load whose cost is known."""
    from sweep.measure.metrics import percentile, unit_seconds, work_rate
    from sweep.procs import kill_group

    load = CpuLoad(threads or os.cpu_count() or 1, unit_mib)
    other = None
    try:
        time.sleep(baseline_s)
        split = time.monotonic()
        if competitor:
            other = subprocess.Popen(competitor, start_new_session=True)
        time.sleep(seconds)
        end = time.monotonic()
    finally:
        if other:
            kill_group(other.pid)
            other.wait()
        samples = load.stop()
    settled = split + 0.2  # the competitor's start-up
    before, n_before = work_rate(samples, -float("inf"), split)
    after, n_after = work_rate(samples, settled, end)
    units_before, units_after = unit_seconds(samples, -float("inf"), split), unit_seconds(samples, settled, end)
    return {"slowdown": before / after if after else float("inf"),
            "slowdown_p95": percentile(units_after, 95) / percentile(units_before, 95)
            if units_before and units_after else float("nan"),
            "n_before": n_before, "n_after": n_after}


def main(argv: list[str]) -> int:
    from sweep.procs import die_with_parent

    die_with_parent()
    threads, mib = int(argv[0]), int(argv[1])
    # One process per thread of work, as a build's compilers are: Python threads would share one
    # GIL, and one of them preempted while holding it stalls the rest, a slowdown no build has.
    children = []
    for index in range(threads):
        pid = os.fork()
        if pid == 0:
            try:
                die_with_parent()
                _loop(index, mib)
            finally:
                os._exit(0)
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)
    return 0


def _loop(index: int, mib: int) -> None:
    fd = sys.stdout.fileno()
    while True:
        t0 = time.monotonic()
        unit(mib)
        t1 = time.monotonic()
        # One write of a short line: atomic on a pipe, so the processes' lines never interleave.
        os.write(fd, f"{t0:.6f} {t1 - t0:.6f} {time.process_time():.4f} {index}\n".encode())


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except (BrokenPipeError, KeyboardInterrupt):
        os._exit(0)
