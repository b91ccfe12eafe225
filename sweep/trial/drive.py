"""One trial's sequence, the same for every backend: the knobs, load, idle, the answers, the knob
check, the injection pass, the open-loop phase, the contended pass, done.

A backend (``sweep.trial.worker.PythonBackend``, ``sweep.trial.server_worker.ServerBackend``) supplies only what
differs: how the model is loaded, how each kind's shared prefix is prepared, how one request is set
up and streams its text, and which process's threads carry the knobs. The driver times every
request with one loop (``timed``), so latency, TTFT, prefill and decode mean the same on both.
Everything goes through the channel as ``sweep.trial.protocol`` messages, and each answer is a
``PromptResult``.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, Iterator, Protocol

from sweep.trial import knobs
from sweep.trial.protocol import Channel, PromptResult


class BackendFailed(Exception):
    """The backend cannot go on: a recorded failure with its reason (``model_load_failed``,
    ``crashed``, ``protocol``), not a crash of the worker."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


class Answering(Protocol):
    """One request on its way, as a backend starts it (``Backend.request``). The driver times it."""

    def pieces(self) -> Iterator[str]:
        """The answer's text as it streams; computing starts at the first ``next``."""

    def first(self) -> None:
        """Called at the first piece: what the backend reads once the prompt is evaluated."""

    def done(self, answered: bool) -> dict[str, Any]:
        """After the last piece: ``PromptResult``'s other fields (``prompt_tokens``, ``prefill_tokens``,
        ``server``, ``tokens``); ``answered`` is whether any piece came."""


class Backend(Protocol):
    def load(self, config: dict[str, Any], chan: Channel) -> None:
        """Load the model (raise ``BackendFailed`` when it cannot be)."""

    def prepare(self, probes: dict[str, list[list[dict[str, str]]]]) -> None:
        """Prefill each kind's fixed prefix once (``prefix_cache: shared``); counted in load."""

    def request(self, request: dict[str, Any], tokens: bool) -> Answering:
        """Set one request up, untimed (a restored prefix, an escaped prompt, a grammar); with
        ``tokens``, its ``done`` carries the prompt's tokens."""

    def knob_pid(self) -> int | str:
        """The process whose threads carry the knobs (``self`` or the server's pid)."""

    def check(self) -> None:
        """Raise ``BackendFailed`` if the program that computes has died."""

    def failure(self, exc: Exception) -> BackendFailed | None:
        """What an exception from the backend means as a recorded failure, or None to let it crash."""

    def close(self) -> None:
        """Stop whatever the backend started, whatever state it is in."""


def shared_length(a: list[int], b: list[int]) -> int:
    """How many leading tokens two probes' prompts share: the fixed prefix a cache may hold."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _pause(cfg: dict[str, Any], now: float, resumed: float, t_first: float, n: int) -> float:
    """Decode pacing: how long to idle before asking for the next piece. A backend computes the
    next token only when asked (the python backend's generator), so idling here idles its threads."""
    pause = 0.0
    if cfg.get("pace_duty"):
        pause = (now - resumed) * (1 - cfg["pace_duty"]) / cfg["pace_duty"]
    if cfg.get("pace_tps"):
        pause = max(pause, t_first + n / cfg["pace_tps"] - now)
    return pause


def timed(backend: Backend, request: dict[str, Any], index: int, chan: Channel, cfg: dict[str, Any],
          tokens: bool = False) -> PromptResult:
    """One request, timed the same way for every backend: its latency from the prefill mark to the
    last piece, TTFT at the first piece, decode from the first piece to the last; the prefill,
    decode and between marks sent as they happen."""
    answering = backend.request(request, tokens)
    chan.send("phase", phase="prefill", t=time.monotonic(), prompt=index)
    t0 = resumed = time.monotonic()
    t_first = t_last = None
    pieces: list[str] = []
    for text in answering.pieces():
        if not text:
            continue
        now = time.monotonic()
        if t_first is None:
            t_first = now
            answering.first()
            chan.send("phase", phase="decode", t=now, prompt=index)
        t_last = now
        pieces.append(text)
        pause = _pause(cfg, now, resumed, t_first, len(pieces))
        if pause > 0:
            time.sleep(pause)
        resumed = time.monotonic()
    t_end = time.monotonic()
    chan.send("phase", phase="between", t=t_end, prompt=index)
    return PromptResult(latency_s=t_end - t0, ttft_s=(t_first - t0) if t_first else None,
                        completion_chunks=len(pieces), decode_s=(t_last - t_first) if t_first and t_last else 0.0,
                        answer="".join(pieces), **answering.done(t_first is not None))


def _answer(backend: Backend, request: dict[str, Any], i: int, chan: Channel, cfg: dict[str, Any],
            tokens: bool = False) -> PromptResult:
    result = timed(backend, request, i, chan, cfg, tokens)
    if request.get("view"):  # the differential check reads the input's view too, as part of this answer
        result = result.then(timed(backend, request["view"], i, chan, cfg))
    return result


def _answer_all(backend: Backend, prompts: list[dict[str, Any]], chan: Channel, cfg: dict[str, Any],
                passname: str | None = None) -> None:
    extra = {"pass": passname} if passname else {}
    for i, request in enumerate(prompts):
        result = _answer(backend, request, i, chan, cfg, tokens=passname == "injection")
        chan.send("prompt", index=i, **extra, **result.to_message())


def _answer_open(backend: Backend, prompts: list[dict[str, Any]], plan: dict[str, Any], chan: Channel,
                 cfg: dict[str, Any]) -> None:
    """The open-loop phase (``sweep.trial.arrivals``): events taken in arrival order by ``parallel``
    servers (llama-server's slots; one otherwise), each answered once it has arrived and a server is
    free; until ``seconds`` have passed, or ``cap`` events wait (the arrivals outrun the answers).
    Each answer carries its arrival and its start."""
    t0 = time.monotonic()
    events = plan["events"]
    lock = threading.Lock()
    state: dict[str, Any] = {"next": 0, "stop": False, "error": None}

    def serve() -> None:
        try:
            while True:
                with lock:
                    if state["stop"] or state["error"] or state["next"] >= len(events):
                        return
                    k = state["next"]
                    state["next"] += 1
                t, i = events[k]
                arrival = t0 + t
                while (now := time.monotonic()) < arrival:  # idle until it arrives, saying so now and then
                    time.sleep(min(arrival - now, 5.0))
                    chan.send("tick", t=time.monotonic())
                start = time.monotonic()
                result = _answer(backend, prompts[i], i, chan, cfg)
                chan.send("prompt", index=i, **{"pass": "open"}, event=k, arrival=arrival, start=start,
                          **result.to_message())
                now = time.monotonic()
                with lock:
                    waiting = sum(t0 + tt <= now for tt, _ in events[state["next"]:])
                    if now >= t0 + plan["seconds"] or waiting >= plan["cap"]:
                        state["stop"] = True
        except BaseException as exc:  # noqa: BLE001 - the phase's thread hands its failure to the driver
            with lock:
                state["error"] = state["error"] or exc

    servers = [threading.Thread(target=serve, name=f"sweep-open-{n}") for n in range(plan.get("parallel", 1) - 1)]
    for thread in servers:
        thread.start()
    serve()
    for thread in servers:
        thread.join()
    if state["error"] is not None:
        raise state["error"]
    # Every event answered early: the phase still lasts its length, idle, so that its CPU is a duty
    # cycle over the whole of it. Cut by the queue (saturated), it ends here.
    while not state["stop"] and (now := time.monotonic()) < t0 + plan["seconds"]:
        time.sleep(min(t0 + plan["seconds"] - now, 5.0))
        chan.send("tick", t=time.monotonic())


def drive(job: dict[str, Any], chan: Channel, backend: Backend) -> int:
    """Run the job's trial on ``backend``; the worker's exit status (3: a recorded failure)."""
    cfg = job["config"]
    # Per thread on Linux and inherited by every thread created later: set on this, the only
    # thread, before the backend loads anything (or starts a server, which inherits them too).
    knobs.apply(cfg)
    chan.send("phase", phase="load", t=time.monotonic())
    try:
        try:
            backend.load(cfg, chan)
            if job.get("prefixes"):
                backend.prepare(job["prefixes"])
            chan.send("phase", phase="idle", t=time.monotonic())
            time.sleep(job["idle_seconds"])
            chan.send("phase", phase="active", t=time.monotonic())
            _answer_all(backend, job["prompts"], chan, cfg)
            backend.check()
            # Read back after inference: compute threads are created lazily, on first use.
            pid = backend.knob_pid()
            chan.send("knobs", threads=knobs.read_threads(pid), autogroup=knobs.read_autogroup(pid))
            if job.get("injection"):  # attacker-written items and their clean originals, out of the figures above
                chan.send("phase", phase="injection", t=time.monotonic())
                _answer_all(backend, job["injection"], chan, cfg, passname="injection")
            if job.get("open"):  # events at a rate, waiting behind each other: out of the figures above
                chan.send("phase", phase="open", t=time.monotonic())
                _answer_open(backend, job["prompts"], job["open"], chan, cfg)
            if job.get("contended"):
                # The same prompts again, under the user's CPU-bound foreground: the runner resumes it
                # on this mark and says "go" on stdin once it runs.
                chan.send("phase", phase="contended", t=time.monotonic())
                sys.stdin.readline()
                _answer_all(backend, job["prompts"], chan, cfg, passname="contended")
            chan.send("phase", phase="done", t=time.monotonic())
        except BackendFailed:
            raise
        except Exception as exc:
            failed = backend.failure(exc)
            if failed is None:
                raise
            raise failed from None
    except BackendFailed as exc:
        chan.send("error", reason=exc.reason, detail=exc.detail)
        return 3
    finally:
        backend.close()
    chan.send("result", ok=True)
    return 0
