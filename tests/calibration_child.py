"""A load whose truth is known: busy for DUTY of each PERIOD on one pinned CPU.

``python calibration_child.py DUTY PERIOD_S CPU SECONDS``. The busy part spins
until the process has used DUTY*PERIOD of *CPU time* (not wall time), so
preemption by other load on a shared machine does not change what it consumes.
It sleeps a moment before exiting, so a monitor's last reading sees all of its work.
"""

import os
import sys
import time

duty, period, cpu, seconds = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
os.sched_setaffinity(0, {cpu})
start = time.monotonic()
next_t = start
while time.monotonic() - start < seconds:
    c0 = time.thread_time()
    while time.thread_time() - c0 < duty * period:
        pass
    next_t += period
    delay = next_t - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    else:
        next_t = time.monotonic()
time.sleep(0.3)
