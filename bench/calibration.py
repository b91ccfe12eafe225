"""The monitor against loads whose truth is known: ``python bench/calibration.py [SECONDS]``.

A child pinned to one CPU is busy for d% of each 20 ms period (by its own CPU
time, so other load cannot change what it uses). Prints what the monitor reads
at W = 100 ms, in percent of one core: mean, p99 and peak over the windows.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path

from sweep.measure.host import allowed_cpus
from sweep.measure.metrics import percentile
from sweep.measure.monitor import Monitor

CHILD = Path(__file__).resolve().parent.parent / "tests" / "calibration_child.py"


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 4.0
    cpu = allowed_cpus()[-1]
    print(f"W = 100 ms, child pinned to CPU {cpu}, {seconds:g} s per row "
          "(first 5 and last 5 windows dropped: start-up and the sleep before exit)")
    print("d (%)  mean   p99    peak   N   monitor CPU (% of one core)")
    for duty in (0.0, 0.25, 0.5, 0.75, 1.0):
        monitor = Monitor(0.1).start()
        child = subprocess.Popen([sys.executable, str(CHILD), str(duty), "0.02", str(cpu), str(seconds)])
        monitor.attach(child.pid)
        child.wait()
        s = monitor.stop()
        xs = [w.core_pct for w in s.windows][5:-5]
        print(f"{100 * duty:5.0f}  {statistics.mean(xs):5.1f}  {percentile(xs, 99):5.1f}  {max(xs):5.1f}  "
              f"{len(xs):2d}  {100 * s.monitor_cpu_s / s.monitor_wall_s:.2f}")


if __name__ == "__main__":
    from sweep.hostlock import measurement_lock

    with measurement_lock("bench/calibration.py", on_wait=print):  # never beside another measurement
        main()
