"""Fault-injecting workers for failures the real worker's SWEEP_TEST_FAULT hook does not make.

``fake_worker.py MODE FD``: hang (ignoring the job), wrong_version, exit_nonzero, not_an_object,
missing_field (a prompt message without its latency), rt_signal (killed by SIGRTMIN+3), never_read
(never reads its job).
"""

import json
import os
import sys
import time

mode, fd = sys.argv[1], int(sys.argv[2])
if mode == "never_read":  # never reads its job: a job larger than the pipe's buffer blocks its writer
    time.sleep(3600)
job = json.loads(sys.stdin.read())


def send(kind, **payload):
    os.write(fd, (json.dumps({"v": 1, "type": kind, **payload}) + "\n").encode())


send("phase", phase="load", t=time.monotonic())
if mode == "hang":
    time.sleep(3600)
elif mode == "wrong_version":
    os.write(fd, b'{"v": 99, "type": "result", "ok": true}\n')
    sys.exit(0)
elif mode == "rt_signal":  # killed by a real-time signal, which signal.Signals has no name for
    import signal

    os.kill(os.getpid(), signal.SIGRTMIN + 3)
    time.sleep(5)
elif mode == "exit_nonzero":
    sys.exit(7)
elif mode == "not_an_object":
    os.write(fd, b'[1, 2, 3]\n')
    sys.exit(0)
elif mode == "missing_field":
    send("prompt", index=0, answer="benign", decode_s=0.1, completion_chunks=2)
    sys.exit(0)
