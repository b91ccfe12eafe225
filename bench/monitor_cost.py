"""The monitor's own CPU cost: ``python bench/monitor_cost.py [SECONDS] [--platforms linux,portable]``.

Samples a running child with several threads (as a worker has) for SECONDS at
each window length, on each measurement path (``sweep.platforms``), and prints the sampler thread's CPU time (CLOCK_THREAD_CPUTIME_ID)
as a percent of one core. Target at W = 100 ms: at most 1%.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from typing import Any

from sweep.measure.monitor import Monitor

import _harness

CHILD = """
import threading, time
def spin():
    while True:
        time.sleep(0.001)
for _ in range(4):
    threading.Thread(target=spin, daemon=True).start()
time.sleep(3600)
"""


def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    seconds = args.seconds
    child = subprocess.Popen([sys.executable, "-c", CHILD])
    rows = []
    try:
        print(f"monitor cost, sampling a 5-thread child for {seconds:g} s per row")
        print("path      W (ms)  windows  monitor CPU (% of one core)")
        for window_ms, path in ((w, p) for w in (100, 50, 20) for p in args.platforms.split(",")):
            os.environ["SWEEP_PLATFORM"] = path
            monitor = Monitor(window_ms / 1000).start()
            monitor.attach(child.pid)
            time.sleep(seconds)
            s = monitor.stop()
            rows.append({"platform": path, "window_ms": window_ms, "windows": len(s.windows),
                         "monitor_cpu_pct": 100 * s.monitor_cpu_s / s.monitor_wall_s})
            print(f"{path:8s}  {window_ms:6d}  {len(s.windows):7d}  {rows[-1]['monitor_cpu_pct']:.2f}")
    finally:
        child.kill()
        child.wait()
    return rows


if __name__ == "__main__":
    ap = _harness.options(__doc__)
    ap.add_argument("seconds", nargs="?", type=float, default=20.0, help="seconds per row [20]")
    ap.add_argument("--platforms", default="linux", help="measurement paths, in turn: linux,portable [linux]")
    _harness.run(main, ap)
