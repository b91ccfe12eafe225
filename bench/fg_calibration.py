"""Calibration of the CPU-bound foreground workload (``probe: cpu``) against loads whose cost is known.

Usage: .venv/bin/python bench/fg_calibration.py [--rounds N]

The workload runs one process per CPU, unpinned, at normal priority, in a session of its own.
After a 1.5 s baseline a competitor starts, in a session of its own too (as a service or another
terminal's program would), and ``fg_cpu_slowdown`` (the workload's rate before / after) is
printed beside what arithmetic predicts for n CPUs.

Where the kernel groups by session (``/proc/sys/kernel/sched_autogroup_enabled`` = 1), CFS first
shares the machine equally between the busy sessions, each up to what it can use:
- nothing: 1.00;
- one busy loop pinned to CPU 0 at normal priority: the loop's session takes one CPU, its equal
  share: n / (n - 1) (2.00 on 2 CPUs);
- the same loop under SCHED_IDLE: 1.00 if the policy held across sessions; it does not wholly
  (its session's weight is a normal one), so this row is read, not predicted;
- n unpinned busy loops at normal priority: 2.00 (two busy sessions).
Without autogroup every runnable thread gets an equal share: the pinned loop's row becomes
(n + 1) / n, and the others stay.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from typing import Any

from sweep.measure.foreground import calibrate

import _harness


def busy(cpu: int | None, idle: bool = False) -> list[str]:
    code = ("import os\n"
            + (f"os.sched_setaffinity(0, {{{cpu}}})\n" if cpu is not None else "")
            + ("os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\n" if idle else "")
            + "while True: pass\n")
    return [sys.executable, "-c", code]


def main(args: argparse.Namespace) -> dict[str, Any]:
    rounds = args.rounds
    n = os.cpu_count() or 1
    cpu0 = sorted(os.sched_getaffinity(0))[0]
    autogroup = _autogroup()
    pinned = f"{n / (n - 1):.2f}" if autogroup and n > 1 else f"{(n + 1) / n:.2f}"
    cases = [
        ("nothing", None, "1.00"),
        ("1 busy loop pinned to CPU 0, normal priority", [busy(cpu0)], pinned),
        ("1 busy loop pinned to CPU 0, SCHED_IDLE", [busy(cpu0, idle=True)], "1.00 if SCHED_IDLE held"),
        (f"{n} busy loops, unpinned, normal priority", [busy(None)] * n, "2.00"),
    ]
    print(f"{n} CPUs, autogroup {'on' if autogroup else 'off'}; workload: {n} processes x SHA-256 over 16 MiB per "
          f"unit; baseline 1.5 s, then 3 s with the competitor; {rounds} rounds, interleaved")
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in cases}
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
    return {"cpus": n, "autogroup": autogroup, "cases": [{"competitor": name, "predicted": predicted,
                                                         "rounds": results[name]} for name, _, predicted in cases]}


def _autogroup() -> bool:
    try:
        with open("/proc/sys/kernel/sched_autogroup_enabled") as f:
            return f.read().strip() == "1"
    except OSError:
        return False


def _many(cmds: list[list[str]]) -> list[str]:
    """One command that runs all of ``cmds`` as its children (killed with its process group)."""
    if len(cmds) == 1:
        return cmds[0]
    import shlex

    return ["sh", "-c", " & ".join(shlex.join(c) for c in cmds) + " & wait"]


if __name__ == "__main__":
    _harness.run(main, _harness.options(__doc__, rounds=3))
