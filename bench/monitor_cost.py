"""The monitor's own CPU cost: ``python bench/monitor_cost.py [SECONDS]``.

Samples a running child with several threads (as a worker has) for SECONDS at
each window length and prints the sampler thread's CPU time (CLOCK_THREAD_CPUTIME_ID)
as a percent of one core. Target at W = 100 ms: at most 1%.
"""

from __future__ import annotations

import subprocess
import sys

from sweep.measure.monitor import Monitor

CHILD = """
import threading, time
def spin():
    while True:
        time.sleep(0.001)
for _ in range(4):
    threading.Thread(target=spin, daemon=True).start()
time.sleep(3600)
"""


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 20.0
    child = subprocess.Popen([sys.executable, "-c", CHILD])
    try:
        print(f"monitor cost, sampling a 5-thread child for {seconds:g} s per row")
        print("W (ms)  windows  monitor CPU (% of one core)")
        for window_ms in (100, 50, 20):
            monitor = Monitor(window_ms / 1000).start()
            monitor.attach(child.pid)
            import time

            time.sleep(seconds)
            s = monitor.stop()
            print(f"{window_ms:6d}  {len(s.windows):7d}  {100 * s.monitor_cpu_s / s.monitor_wall_s:.2f}")
    finally:
        child.kill()
        child.wait()


if __name__ == "__main__":
    from sweep.hostlock import measurement_lock

    with measurement_lock("bench/monitor_cost.py", on_wait=print):  # never beside another measurement
        main()
