"""Fault-injecting workers for failures the real worker's SWEEP_TEST_FAULT hook does not make.

``fake_worker.py MODE FD``: hang (ignoring the job), wrong_version, exit_nonzero.
"""

import json
import os
import sys
import time

mode, fd = sys.argv[1], int(sys.argv[2])
job = json.loads(sys.stdin.read())


def send(kind, **payload):
    os.write(fd, (json.dumps({"v": 1, "type": kind, **payload}) + "\n").encode())


send("phase", phase="load", t=time.monotonic())
if mode == "hang":
    time.sleep(3600)
elif mode == "wrong_version":
    os.write(fd, b'{"v": 99, "type": "result", "ok": true}\n')
    sys.exit(0)
elif mode == "exit_nonzero":
    sys.exit(7)
