"""Calibration of the CPU-bound foreground workload (``probe: cpu``) against loads whose cost is known.

Usage: .venv/bin/python bench/fg_calibration.py [ROUNDS]

The workload runs one thread per CPU, unpinned, at normal priority. After a 1.5 s baseline a
competitor starts, and ``fg_cpu_slowdown`` (the workload's rate before / after) is printed beside
what arithmetic predicts for n CPUs:
- nothing: 1.00;
- one busy loop pinned to CPU 0 at normal priority: between n / (n - 1/2) (the loop's CPU shared
  half and half with one workload thread) and (n + 1) / n (every runnable thread an equal share);
- the same loop under SCHED_IDLE: 1.00 (it runs only on CPU time nobody else wants);
- n unpinned busy loops at normal priority: 2.00 (2n equal threads on n CPUs).
"""

from __future__ import annotations

import os
import statistics
import sys

from sweep.foreground import calibrate
from sweep.hostlock import measurement_lock


def busy(cpu: int | None, idle: bool = False) -> list[str]:
    code = ("import os\n"
            + (f"os.sched_setaffinity(0, {{{cpu}}})\n" if cpu is not None else "")
            + ("os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\n" if idle else "")
            + "while True: pass\n")
    return [sys.executable, "-c", code]


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    n = os.cpu_count() or 1
    cpu0 = sorted(os.sched_getaffinity(0))[0]
    cases = [
        ("nothing", None, "1.00"),
        ("1 busy loop pinned to CPU 0, normal priority", [busy(cpu0)], f"{n / (n - 0.5):.2f}–{(n + 1) / n:.2f}"),
        ("1 busy loop pinned to CPU 0, SCHED_IDLE", [busy(cpu0, idle=True)], "1.00"),
        (f"{n} busy loops, unpinned, normal priority", [busy(None)] * n, "2.00"),
    ]
    print(f"{n} CPUs; workload: {n} threads x SHA-256 over 16 MiB per unit; baseline 1.5 s, then 3 s with the "
          f"competitor; {rounds} rounds, interleaved")
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in cases}
    with measurement_lock("bench/fg_calibration.py"):
        for _ in range(rounds):
            for name, cmds, _ in cases:
                results[name].append(calibrate(_many(cmds) if cmds else None))
    print("| competitor | predicted | fg_cpu_slowdown (each round) | median | p95 unit ratio (median) |")
    print("|---|---|---|---|---|")
    for name, _, predicted in cases:
        rs = results[name]
        each = ", ".join(f"{r['slowdown']:.2f}" for r in rs)
        print(f"| {name} | {predicted} | {each} | {statistics.median(r['slowdown'] for r in rs):.2f} | "
              f"{statistics.median(r['slowdown_p95'] for r in rs):.2f} |")


def _many(cmds: list[list[str]]) -> list[str]:
    """One command that runs all of ``cmds`` as its children (killed with its process group)."""
    if len(cmds) == 1:
        return cmds[0]
    import shlex

    return ["sh", "-c", " & ".join(shlex.join(c) for c in cmds) + " & wait"]


if __name__ == "__main__":
    main()
