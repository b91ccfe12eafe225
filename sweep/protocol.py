"""The worker -> runner message format: one JSON object per line on a dedicated pipe.

Every message carries ``v``; the runner refuses a message of another version.
Timestamps are ``time.monotonic()``, which on Linux is one clock for every
process, so the worker's phase marks line up with the monitor's windows.
"""

from __future__ import annotations

import json
import os
from typing import Any

PROTOCOL_VERSION = 1


def encode(kind: str, **payload: Any) -> bytes:
    return (json.dumps({"v": PROTOCOL_VERSION, "type": kind, **payload}) + "\n").encode()


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux PR_SET_PDEATHSIG).

    A worker or probe runs in its own session, so without this an orchestrator
    killed with SIGKILL would leave it running, unsupervised.
    """
    import ctypes
    import signal

    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


class Channel:
    """The worker's end of the result pipe."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, kind: str, **payload: Any) -> None:
        data = encode(kind, **payload)
        while data:
            data = data[os.write(self.fd, data):]
