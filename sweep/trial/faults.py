"""Fault injection for the fault suite: a test hook in every worker program (the real two and the fake).

``SWEEP_TEST_FAULT=MODE:FLAGFILE`` makes the first worker that finds no FLAGFILE fault (it makes
the file), before it reads its job, so that a whole sweep can run with one faulty trial and the
next one real. Unset, it costs one environment lookup. The modes:

- crashes: ``segfault``, ``abort``, ``exit_nonzero`` (status 7), ``rt_signal`` (SIGRTMIN+3, which
  ``signal.Signals`` has no name for);
- hangs: ``hang`` (never answers), ``never_read`` (never reads a job, however large);
- the protocol: ``garbage`` (a line that is not JSON), ``wrong_version``, ``not_an_object``,
  ``missing_field`` (a prompt message without its latency);
- memory: ``memory`` (a steady climb), ``memory_spike`` (1.5 GB touched and freed at once, between
  two of the monitor's samples; the trial then carries on as a normal one).
"""

from __future__ import annotations

import os
import time

ENV = "SWEEP_TEST_FAULT"
_BAD_LINES = {
    "garbage": b"garbage instead of a result",
    "wrong_version": b'{"v": 99, "type": "result", "ok": true}',
    "not_an_object": b"[1, 2, 3]",
    "missing_field": b'{"v": 1, "type": "prompt", "index": 0, "answer": "benign", "decode_s": 0.1, "completion_chunks": 2}',
}


def inject(fd: int) -> None:
    """Fault as ``SWEEP_TEST_FAULT`` says, once per flag file; ``fd`` is the worker's result pipe."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    mode, flag = spec.split(":", 1)
    try:
        os.close(os.open(flag, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return
    import ctypes
    import signal

    if mode == "segfault":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif mode == "abort":
        ctypes.CDLL(None).abort()
    elif mode == "rt_signal":
        os.kill(os.getpid(), signal.SIGRTMIN + 3)
        time.sleep(5)
    elif mode == "exit_nonzero":
        os._exit(7)
    elif mode in ("hang", "never_read"):
        time.sleep(3600)
    elif mode in _BAD_LINES:  # one bad line on the result pipe, then a clean exit
        os.write(fd, _BAD_LINES[mode] + b"\n")
        os._exit(0)
    elif mode == "memory":
        hog = []
        while True:
            hog.append(bytearray(32 * 1024 * 1024))
            time.sleep(0.01)
    elif mode == "memory_spike":
        spike = bytearray(b"\x01") * (1536 * 1024 * 1024)
        del spike
    else:
        raise SystemExit(f"{ENV}: unknown fault mode {mode!r}")
