"""The server backend's worker: one trial of llama-server. ``python -m sweep.server_worker FD``.

It speaks exactly ``sweep.worker``'s protocol (the job as JSON on stdin; phases, answers, knobs
read back and the result as JSON lines on FD), so the runner, the monitor and the figures treat
both backends alike. The difference is the program that computes: this worker applies affinity,
nice, policy (and has the OpenMP variables in its environment) on itself, then starts the
``llama-server`` that ``sweep tools build`` made from the bindings' own llama.cpp. The server
inherits every knob and is the worker's child, so the monitor, which measures the worker's process
tree, counts it. Load is spawn until ``/health`` answers; each prompt is one streamed HTTP request
on loopback (TTFT at the first content chunk), cold under ``prefix_cache: off``
(``cache_prompt: false``).

With ``prefix_cache: shared``, as in ``sweep.worker``, each kind's fixed prefix is prefilled once
after load (counted in load) and the slot saved (``--slot-save-path``); before each request the
kind's slot is restored, outside the timed span as the python backend's ``load_state``, and the
request reuses the cached prefix (``cache_prompt: true``). The slot files go in the worker's
working directory, the runner's per-trial directory, which goes whatever ends the trial.

The server never outlives the worker: it dies with it (``PR_SET_PDEATHSIG``), shares its process
group (the runner kills the group), and is killed (and reaped, unless stuck) before the worker
exits. Its output
goes to the worker's own output, so a failed trial's tail shows the server's log.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Iterator

from . import knobs
from .protocol import Channel, die_with_parent, serve
from .server import completion_body, request_body, server_args
from .worker import shared_length

HOST = "127.0.0.1"
_HEALTH_POLL_S = 0.05
# A request that gets no byte for this long is a hung server (the runner's progress watchdog,
# progress_timeout_seconds, is the outer bound; this one lets the worker say so with the log's tail).
REQUEST_TIMEOUT_S = 600.0


class ServerFailed(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def free_port() -> int:
    """A loopback port free now (the server binds it a moment later; another trial never runs at
    once on this host, as the measurement lock serialises them)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _log_tail(lines: int = 12) -> str:
    """The tail of this worker's output, where the server writes its log."""
    from .procs import tail

    try:
        return tail(os.readlink("/proc/self/fd/1"), lines)
    except OSError:
        return ""


class Server:
    """A running llama-server, its port and its exit."""

    def __init__(self, argv: list[str], port: int) -> None:
        sys.stdout.flush()
        self.port = port
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sys.stdout.fileno(),
                                     stderr=subprocess.STDOUT, preexec_fn=die_with_parent)  # runs between fork and exec

    def died(self) -> str | None:
        """How the server ended, or None while it runs."""
        rc = self.proc.poll()
        if rc is None:
            return None
        return f"llama-server killed by {signal.Signals(-rc).name}" if rc < 0 else f"llama-server exited with status {rc}"

    def wait_healthy(self) -> None:
        """Until ``/health`` answers 200 (503 while the model loads)."""
        while True:
            gone = self.died()
            if gone:
                raise ServerFailed("model_load_failed", f"{gone} before it answered /health: {_log_tail()}")
            try:
                conn = http.client.HTTPConnection(HOST, self.port, timeout=2)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            finally:
                conn.close()
            time.sleep(_HEALTH_POLL_S)

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """One JSON request that is not timed (tokenising, slot save and restore)."""
        conn = http.client.HTTPConnection(HOST, self.port, timeout=REQUEST_TIMEOUT_S)
        try:
            conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200:
                raise ServerFailed("protocol", f"llama-server answered {path} with HTTP {resp.status}: {data[:300]!r}")
            return json.loads(data)
        finally:
            conn.close()

    def prompt_tokens(self, messages: list[dict[str, str]]) -> list[int]:
        """The tokens the server prefills for a chat request of ``messages``: its own template, then
        its tokenizer with special tokens, as its chat endpoint does."""
        text = self.post("/apply-template", {"messages": messages})["prompt"]
        return self.post("/tokenize", {"content": text, "add_special": True, "parse_special": True})["tokens"]

    def escaped_tokens(self, messages: list[dict[str, str]]) -> list[int]:
        """``input_guard: escape``: the prompt's tokens with every message's content tokenized as text
        (special-token parsing off) and the server's template markers parsed as usual. The contents
        are fenced with markers no input can hold before the template is applied, then each piece is
        tokenized on its own."""
        import secrets

        nonce = secrets.token_hex(8)
        fence_open, fence_close = f"\ue000{nonce}\ue001", f"\ue002{nonce}\ue003"
        fenced = [{**m, "content": f"{fence_open}{m['content']}{fence_close}"} for m in messages]
        rest = self.post("/apply-template", {"messages": fenced})["prompt"]
        tokens: list[int] = []
        while rest:
            head, found, tail = rest.partition(fence_open)
            content, _, rest = tail.partition(fence_close) if found else ("", "", "")
            for piece, parse in ((head, True), (content, False)):
                if piece:
                    tokens += self.post("/tokenize", {"content": piece, "add_special": not tokens,
                                                      "parse_special": parse})["tokens"]
        return tokens

    def stream(self, body: dict[str, Any], path: str = "/v1/chat/completions") -> Iterator[dict[str, Any]]:
        """The server-sent events of one completion (the chat endpoint's, or ``/completion``'s), decoded."""
        conn = http.client.HTTPConnection(HOST, self.port, timeout=REQUEST_TIMEOUT_S)
        try:
            conn.request("POST", path, body=json.dumps(body),
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            if resp.status != 200:
                raise ServerFailed("crashed", f"llama-server answered HTTP {resp.status}: {resp.read(300)!r}")
            for raw in resp:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    return
                yield json.loads(data)
        finally:
            conn.close()

    def stop(self) -> None:
        """Kill and reap the server, whatever state it is in. A server stuck in the kernel even
        after SIGKILL is left to the runner, which kills the worker's whole group."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def shared_prefixes(server: Server, probes: dict[str, list[list[dict[str, str]]]],
                    escape: bool = False) -> dict[str, int]:
    """For each kind, prefill its fixed prefix once and save the slot as ``KIND.bin``; the tokens
    the slot holds, by kind.

    The prefix is the tokens two requests of the kind share when only their item differs, as in
    ``sweep.worker.shared_prefixes``. The slot is filled by a one-token completion of all but the
    prefix's last token, so even a server that kept the token it sampled would hold prefix tokens
    only: a request can then match the prefix, never its item.
    """
    held = {}
    for kind, (a, b) in probes.items():
        tokens = server.escaped_tokens if escape else server.prompt_tokens
        ta = tokens(a)
        n = shared_length(ta, tokens(b))
        if n < 2:
            raise ServerFailed("protocol", f"the {kind} requests share {n} tokens: no prefix to cache")
        server.post("/completion", {"prompt": ta[: n - 1], "n_predict": 1, "temperature": 0.0, "cache_prompt": True})
        held[kind] = server.post("/slots/0?action=save", {"filename": f"{kind}.bin"})["n_saved"]
    return held


def _run_prompt(server: Server, request: dict[str, Any], cfg: dict[str, Any], chan: Channel,
                index: int, held: int | None = None, tokens: bool = False) -> dict[str, Any]:
    if held is not None:  # start from the kind's prefix and nothing more, untimed
        server.post("/slots/0?action=restore", {"filename": f"{request['kind']}.bin"})
    # Under escape the prompt goes as tokens to /completion, built before the request is timed.
    escaped = server.escaped_tokens(request["messages"]) if cfg.get("input_guard") == "escape" else None
    body, path = request_body(request, cfg), "/v1/chat/completions"
    if escaped is not None:
        body, path = completion_body(escaped, request, cfg), "/completion"
    chan.send("phase", phase="prefill", t=time.monotonic(), prompt=index)
    t0 = time.monotonic()
    t_first = t_last = None
    pieces: list[str] = []
    timings: dict[str, Any] = {}
    for event in server.stream(body, path):
        if event.get("timings"):
            timings = event["timings"]
        choices = event.get("choices") or [{}]
        text = (choices[0].get("delta") or {}).get("content") or event.get("content")
        if not text:
            continue
        now = time.monotonic()
        if t_first is None:
            t_first = now
            chan.send("phase", phase="decode", t=now, prompt=index)
        t_last = now
        pieces.append(text)
    t_end = time.monotonic()
    chan.send("phase", phase="between", t=t_end, prompt=index)
    prompt_n = timings.get("prompt_n")
    # The prompt's own tokens, where asked (injection): what reached the model, special tokens
    # included; for the chat endpoint, from its own template and tokenizer (untimed, after the answer).
    extra = {"tokens": escaped if escaped is not None else server.prompt_tokens(request["messages"])} if tokens else {}
    return {
        **extra,
        "latency_s": t_end - t0,
        "ttft_s": (t_first - t0) if t_first else None,
        # llama.cpp's own counts: the whole prompt (what it prefilled and what it took from cache).
        "prompt_tokens": (prompt_n or 0) + (timings.get("cache_n") or 0) if prompt_n is not None else 0,
        "prefill_tokens": prompt_n,
        "completion_chunks": len(pieces),
        "decode_s": (t_last - t_first) if t_first and t_last else 0.0,
        "answer": "".join(pieces),
        "server": {**{k: timings.get(k) for k in ("prompt_n", "prompt_ms", "prompt_per_second", "predicted_n",
                                                  "predicted_ms", "predicted_per_second", "cache_n")},
                   "slot_tokens": held},  # what the restored slot held: cache_n can be no more
    }


def _answer_all(server: Server, prompts: list[dict[str, Any]], cfg: dict[str, Any], chan: Channel,
                held: dict[str, int], passname: str | None = None) -> None:
    extra = {"pass": passname} if passname else {}
    for i, request in enumerate(prompts):
        chan.send("prompt", index=i, **extra, **_run_prompt(server, request, cfg, chan, i, held.get(request["kind"]),
                                                           tokens=passname == "injection"))


def run(job: dict[str, Any], chan: Channel) -> int:
    from .tools import ToolsError, binary

    cfg = job["config"]
    knobs.apply(cfg)  # on this, the only thread: llama-server inherits it
    chan.send("phase", phase="load", t=time.monotonic())
    try:
        program = str(binary("llama-server"))
    except ToolsError as exc:
        chan.send("error", reason="model_load_failed", detail=str(exc))
        return 3
    port = free_port()
    # The runner's per-trial directory is the working directory, and goes however the trial ends.
    slot_dir = os.path.abspath("slots") if job.get("prefixes") else None
    if slot_dir:
        os.makedirs(slot_dir, exist_ok=True)
    server = Server(server_args(cfg, program, HOST, port, slot_dir), port)
    chan.send("server", pid=server.proc.pid, port=port)
    try:
        try:
            server.wait_healthy()
            # Preparing the shared prefixes is part of getting ready: it counts in load.
            held = shared_prefixes(server, job["prefixes"], cfg.get("input_guard") == "escape") if slot_dir else {}
            chan.send("phase", phase="idle", t=time.monotonic())
            time.sleep(job["idle_seconds"])
            chan.send("phase", phase="active", t=time.monotonic())
            _answer_all(server, job["prompts"], cfg, chan, held)
            gone = server.died()
            if gone:
                raise ServerFailed("crashed", gone)
            # Read back from the server's own threads, after inference (compute threads start lazily).
            chan.send("knobs", threads=knobs.read_threads(server.proc.pid),
                      autogroup=knobs.read_autogroup(server.proc.pid))
            if job.get("injection"):  # as sweep.worker: attacker-written items and their clean originals
                chan.send("phase", phase="injection", t=time.monotonic())
                _answer_all(server, job["injection"], cfg, chan, held, passname="injection")
            if job.get("contended"):  # as sweep.worker: the same prompts under the CPU-bound foreground
                chan.send("phase", phase="contended", t=time.monotonic())
                sys.stdin.readline()
                _answer_all(server, job["prompts"], cfg, chan, held, passname="contended")
            chan.send("phase", phase="done", t=time.monotonic())
        except (OSError, http.client.HTTPException, ValueError) as exc:
            time.sleep(0.2)  # a server that died mid-answer: let its exit be seen
            gone = server.died()
            raise ServerFailed("crashed" if gone else "protocol",
                               f"{gone or 'llama-server broke a request'} ({type(exc).__name__}: {exc}): "
                               f"{_log_tail()}") from None
    except ServerFailed as exc:
        chan.send("error", reason=exc.reason, detail=exc.detail)
        return 3
    finally:
        server.stop()
    chan.send("result", ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1:], run))
