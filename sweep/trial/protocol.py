"""The worker -> runner message format: one JSON object per line on a dedicated pipe.

Every message carries ``v``; the runner refuses a message of another version.
Timestamps are ``time.monotonic()``, which on Linux is one clock for every
process, so the worker's phase marks line up with the monitor's windows.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from dataclasses import MISSING, asdict, dataclass, fields, replace
from typing import Any, Callable

from sweep.procs import die_with_parent

PROTOCOL_VERSION = 1


_NUMBER = (int, float)


@dataclass(frozen=True)
class PromptResult:
    """One answered prompt, as either backend reports it (a ``prompt`` message, with its index)."""

    answer: str
    latency_s: float
    decode_s: float
    completion_chunks: int
    ttft_s: float | None = None  # None: no token came
    prompt_tokens: int = 0  # the whole prompt, cached part included
    prefill_tokens: int | None = None  # what llama.cpp evaluated of it in this request
    tokens: list[int] | None = None  # the prompt's own tokens, where asked (the injection pass)
    server: dict[str, Any] | None = None  # llama-server's own timings (server backend)
    view_answer: str | None = None  # the differential check's answer on the input's view

    def then(self, view: PromptResult) -> PromptResult:
        """This answer followed by the differential check's second call: one answer whose time
        and chunks are both calls', as a deployment pays them."""
        return replace(self, latency_s=self.latency_s + view.latency_s, decode_s=self.decode_s + view.decode_s,
                       completion_chunks=self.completion_chunks + view.completion_chunks, view_answer=view.answer)

    def to_message(self) -> dict[str, Any]:
        out = asdict(self)
        return {k: v for k, v in out.items() if not (k in ("tokens", "server", "view_answer") and v is None)}


# What a prompt message must carry: PromptResult's fields without a default, so the two cannot drift.
_PROMPT_TYPES = {"answer": str, "latency_s": _NUMBER, "decode_s": _NUMBER, "completion_chunks": int}
assert set(_PROMPT_TYPES) == {f.name for f in fields(PromptResult) if f.default is MISSING}
# The fields each message type must carry, with their types; anything else is a protocol error.
REQUIRED: dict[str, dict[str, Any]] = {
    "phase": {"phase": str, "t": _NUMBER},
    "prompt": {"index": int, **_PROMPT_TYPES},
    "error": {"reason": str},
    "knobs": {"threads": list},
    "server": {"pid": int, "port": int},  # the server backend's llama-server, once started
    "result": {},
    "tick": {"t": _NUMBER},  # the open-loop phase idles until an event arrives: alive, nothing to report
}


def problem(msg: Any) -> str | None:
    """What is wrong with a decoded message, or None for a valid one."""
    if not isinstance(msg, dict):
        return f"a message must be a JSON object, got {type(msg).__name__}"
    if msg.get("v") != PROTOCOL_VERSION:
        return f"protocol version {msg.get('v')!r}, expected {PROTOCOL_VERSION}"
    fields = REQUIRED.get(msg.get("type"))  # type: ignore[arg-type]
    if fields is None:
        return f"unknown message type {msg.get('type')!r}"
    for name, kind in fields.items():
        value = msg.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"{msg['type']} message without a valid {name!r}"
    return None


def serve(argv: list[str], run: Callable[[dict[str, Any], Channel], int]) -> int:
    """A worker program's main (``sweep.trial.worker``, ``sweep.trial.server_worker``): die with the parent, fault where the fault suite asks (``sweep.trial.faults``), take
    the job (one line on stdin; a contended trial's "go" follows it), run it, and report an
    exception as a ``crashed`` error before it propagates."""
    from sweep.trial.faults import inject

    die_with_parent()
    chan = Channel(int(argv[0]))
    inject(chan.fd)  # the fault suite's hook (SWEEP_TEST_FAULT); nothing when unset
    job = json.loads(sys.stdin.readline())
    try:
        return run(job, chan)
    except Exception as exc:
        chan.send("error", reason="crashed", detail=f"{type(exc).__name__}: {exc}")
        raise


def encode(kind: str, **payload: Any) -> bytes:
    return (json.dumps({"v": PROTOCOL_VERSION, "type": kind, **payload}) + "\n").encode()


class Channel:
    """The worker's end of the result pipe."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._lock = threading.Lock()  # the open-loop phase answers from several threads at once

    def send(self, kind: str, **payload: Any) -> None:
        data = encode(kind, **payload)
        with self._lock:  # a message longer than the pipe's atomic write must not interleave with another
            while data:
                data = data[os.write(self.fd, data):]
