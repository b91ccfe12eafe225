"""The CPU-bound foreground workload: ``python -m sweep.foreground THREADS UNIT_MIB``.

Stands in for a user's build. Each of THREADS threads hashes the same fixed
UNIT_MIB mebibytes (SHA-256, which releases the GIL, so the threads run in
parallel) over and over, as fast as the CPU lets it, and prints
``<start monotonic> <seconds> <process CPU seconds>`` per unit. Nothing in it depends on the
LLM, and the unit is fixed work, not calibrated: when the LLM takes CPU from it, a unit takes
longer, and the ratio of the median unit while the model answers to the median before the
worker started is the slowdown the user feels (``fg_cpu_slowdown``).

The parent pauses it (SIGSTOP) while the trial's uncontended figures are measured and resumes
it (SIGCONT) for the contended pass; units cut by a pause are left out by their times.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time

CHUNK = bytes(1 << 20)


def unit(mib: int) -> None:
    h = hashlib.sha256()
    for _ in range(mib):
        h.update(CHUNK)


class CpuLoad:
    """The parent's side: the workload process at normal priority on every CPU, unpinned, as a
    user's program would run, and the units it reports."""

    def __init__(self, threads: int, unit_mib: int) -> None:
        self.samples: list[tuple[float, float, float, int]] = []
        self.proc = subprocess.Popen([sys.executable, "-m", "sweep.foreground", str(threads), str(unit_mib)],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
        self._thread = threading.Thread(target=self._read, name="sweep-foreground", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            t, dt, cpu, thread = line.split()
            self.samples.append((float(t), float(dt), float(cpu), int(thread)))

    def pause(self) -> None:
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.proc.pid, signal.SIGCONT)

    def stop(self) -> list[tuple[float, float, float, int]]:
        from .procs import kill_group

        if self.proc.poll() is None:
            kill_group(self.proc.pid)  # SIGKILL ends a stopped process too
            self.proc.wait()
        self._thread.join(timeout=5)
        return self.samples


def calibrate(competitor: list[str] | None, baseline_s: float = 1.5, seconds: float = 3.0, threads: int | None = None,
              unit_mib: int = 16) -> dict[str, float]:
    """The workload's slowdown when ``competitor`` (a command, or None for nothing) starts after a
    baseline: what ``fg_cpu_slowdown`` reads against a load whose cost is known."""
    from .metrics import percentile, work_rate
    from .procs import kill_group

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
    before, n_before = work_rate(samples, -float("inf"), split)
    after, n_after = work_rate(samples, split + 0.2, end)  # the competitor's start-up settles
    p95 = [dt for t, dt, *_ in samples if t + dt < split], [dt for t, dt, *_ in samples if split + 0.2 <= t < end]
    return {"slowdown": before / after if after else float("inf"),
            "slowdown_p95": percentile(p95[1], 95) / percentile(p95[0], 95) if all(p95) else float("nan"),
            "n_before": n_before, "n_after": n_after}


def main(argv: list[str]) -> int:
    from .protocol import die_with_parent

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
