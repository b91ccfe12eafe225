"""The monitor against loads whose truth is known: ``python bench/calibration.py [SECONDS] [--platforms linux,portable]``.

A child pinned to one CPU is busy for d% of each 20 ms period (by its own CPU
time, so other load cannot change what it uses). Prints what the monitor reads
at W = 100 ms, in percent of one core: mean, p99 and peak over the windows, on
each measurement path (``sweep.platforms``) in turn, duty by duty.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from sweep.measure.host import allowed_cpus
from sweep.measure.metrics import percentile
from sweep.measure.monitor import Monitor

import _harness

CHILD = Path(__file__).resolve().parent.parent / "tests" / "calibration_child.py"


def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    seconds = args.seconds
    cpu = allowed_cpus()[-1]
    print(f"W = 100 ms, child pinned to CPU {cpu}, {seconds:g} s per row "
          "(first 5 and last 5 windows dropped: start-up and the sleep before exit)")
    print("path      d (%)  mean   p99    peak   N   monitor CPU (% of one core)")
    rows = []
    for duty, path in ((d, p) for d in (0.0, 0.25, 0.5, 0.75, 1.0) for p in args.platforms.split(",")):
        os.environ["SWEEP_PLATFORM"] = path
        monitor = Monitor(0.1).start()
        child = subprocess.Popen([sys.executable, str(CHILD), str(duty), "0.02", str(cpu), str(seconds)])
        monitor.attach(child.pid)
        child.wait()
        s = monitor.stop()
        xs = [w.core_pct for w in s.windows][5:-5]
        rows.append({"platform": path, "duty": duty, "mean": statistics.mean(xs), "p99": percentile(xs, 99), "peak": max(xs),
                     "n": len(xs), "monitor_cpu_pct": 100 * s.monitor_cpu_s / s.monitor_wall_s})
        r = rows[-1]
        print(f"{path:8s}  {100 * duty:5.0f}  {r['mean']:5.1f}  {r['p99']:5.1f}  {r['peak']:5.1f}  "
              f"{r['n']:2d}  {r['monitor_cpu_pct']:.2f}")
    return rows


if __name__ == "__main__":
    ap = _harness.options(__doc__)
    ap.add_argument("seconds", nargs="?", type=float, default=4.0, help="seconds per row [4]")
    ap.add_argument("--platforms", default="linux", help="measurement paths, in turn: linux,portable [linux]")
    _harness.run(main, ap)
