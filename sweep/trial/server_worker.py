"""The server backend's worker: one trial of llama-server. ``python -m sweep.trial.server_worker FD``.

It speaks exactly ``sweep.trial.worker``'s protocol (the job as JSON on stdin; phases, answers, knobs
read back and the result as JSON lines on FD), so the runner, the monitor and the figures treat
both backends alike. The difference is the program that computes: this worker applies affinity,
nice, policy (and has the OpenMP variables in its environment) on itself, then starts the
``llama-server`` that ``sweep tools build`` made from the bindings' own llama.cpp. The server
inherits every knob and is the worker's child, so the monitor, which measures the worker's process
tree, counts it. Load is spawn until ``/health`` answers; each prompt is one streamed HTTP request
on loopback (TTFT at the first content chunk), cold under ``prefix_cache: off``
(``cache_prompt: false``).

With ``prefix_cache: shared``, as in ``sweep.trial.worker``, each kind's fixed prefix is prefilled once
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
import socket
import subprocess
import sys
import time
from typing import Any, Iterator

from sweep.correctness.guard import escapes
from sweep.procs import die_with_parent, signal_name
from sweep.trial.drive import BackendFailed, drive, shared_length
from sweep.trial.protocol import Channel, serve
from sweep.trial.server import completion_body, request_body, server_args

HOST = "127.0.0.1"
_HEALTH_POLL_S = 0.05
# A request that gets no byte for this long is a hung server (the runner's progress watchdog,
# progress_timeout_seconds, is the outer bound; this one lets the worker say so with the log's tail).
REQUEST_TIMEOUT_S = 600.0


def free_port() -> int:
    """A loopback port free now (the server binds it a moment later; another trial never runs at
    once on this host, as the measurement lock serialises them)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _log_tail(lines: int = 12) -> str:
    """The tail of this worker's output, where the server writes its log."""
    from sweep.procs import tail

    try:
        return tail(os.readlink("/proc/self/fd/1"), lines)
    except OSError:
        return ""


class Server:
    """A running llama-server, its port and its exit."""

    def __init__(self, argv: list[str], port: int) -> None:
        sys.stdout.flush()
        self.port = port
        worker = os.getpid()  # the server's parent, whatever SWEEP_PARENT_PID (this worker's) says
        # preexec_fn runs between fork and exec.
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sys.stdout.fileno(),
                                     stderr=subprocess.STDOUT, preexec_fn=lambda: die_with_parent(worker))

    def died(self) -> str | None:
        """How the server ended, or None while it runs."""
        rc = self.proc.poll()
        if rc is None:
            return None
        return f"llama-server killed by {signal_name(-rc)}" if rc < 0 else f"llama-server exited with status {rc}"

    def wait_healthy(self) -> None:
        """Until ``/health`` answers 200 (503 while the model loads)."""
        while True:
            gone = self.died()
            if gone:
                raise BackendFailed("model_load_failed", f"{gone} before it answered /health: {_log_tail()}")
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
                raise BackendFailed("protocol", f"llama-server answered {path} with HTTP {resp.status}: {data[:300]!r}")
            answer: dict[str, Any] = json.loads(data)
            return answer
        finally:
            conn.close()

    def prompt_tokens(self, messages: list[dict[str, str]]) -> list[int]:
        """The tokens the server prefills for a chat request of ``messages``: its own template, then
        its tokenizer with special tokens, as its chat endpoint does."""
        text = self.post("/apply-template", {"messages": messages})["prompt"]
        return [int(t) for t in self.post("/tokenize", {"content": text, "add_special": True,
                                                        "parse_special": True})["tokens"]]

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
                raise BackendFailed("crashed", f"llama-server answered HTTP {resp.status}: {resp.read(300)!r}")
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
    ``sweep.trial.worker.shared_prefixes``. The slot is filled by a one-token completion of all but the
    prefix's last token, so even a server that kept the token it sampled would hold prefix tokens
    only: a request can then match the prefix, never its item.
    """
    held = {}
    for kind, (a, b) in probes.items():
        tokens = server.escaped_tokens if escape else server.prompt_tokens
        ta = tokens(a)
        n = shared_length(ta, tokens(b))
        if n < 2:
            raise BackendFailed("protocol", f"the {kind} requests share {n} tokens: no prefix to cache")
        server.post("/completion", {"prompt": ta[: n - 1], "n_predict": 1, "temperature": 0.0, "cache_prompt": True})
        held[kind] = server.post("/slots/0?action=save", {"filename": f"{kind}.bin"})["n_saved"]
    return held


class _Answering:
    """One streamed request to llama-server (``sweep.trial.drive.Answering``). The kind's prefix slot is
    restored and an escaped prompt tokenized before the timing starts."""

    def __init__(self, server: Server, request: dict[str, Any], cfg: dict[str, Any], held: int | None,
                 tokens: bool) -> None:
        if held is not None:  # start from the kind's prefix and nothing more, untimed
            server.post("/slots/0?action=restore", {"filename": f"{request['kind']}.bin"})
        # Under escape the prompt goes as tokens to /completion, built before the request is timed.
        self.escaped = server.escaped_tokens(request["messages"]) if escapes(cfg.get("input_guard", "none")) else None
        self.body, self.path = request_body(request, cfg), "/v1/chat/completions"
        if self.escaped is not None:
            self.body, self.path = completion_body(self.escaped, request, cfg), "/completion"
        self.server, self.request, self.held, self.tokens = server, request, held, tokens
        self.timings: dict[str, Any] = {}

    def pieces(self) -> Iterator[str]:
        for event in self.server.stream(self.body, self.path):
            if event.get("timings"):
                self.timings = event["timings"]
            choices = event.get("choices") or [{}]
            yield (choices[0].get("delta") or {}).get("content") or event.get("content") or ""

    def first(self) -> None:
        return None

    def done(self, answered: bool) -> dict[str, Any]:
        timings, prompt_n = self.timings, self.timings.get("prompt_n")
        return {
            # llama.cpp's own counts: the whole prompt (what it prefilled and what it took from cache).
            "prompt_tokens": (prompt_n or 0) + (timings.get("cache_n") or 0) if prompt_n is not None else 0,
            "prefill_tokens": prompt_n,
            "server": {**{k: timings.get(k) for k in ("prompt_n", "prompt_ms", "prompt_per_second", "predicted_n",
                                                      "predicted_ms", "predicted_per_second", "cache_n")},
                       "slot_tokens": self.held},  # what the restored slot held: cache_n can be no more
            # The prompt's own tokens, where asked (injection): what reached the model, special tokens
            # included; for the chat endpoint, from its own template and tokenizer (untimed, after the answer).
            "tokens": (self.escaped if self.escaped is not None else self.server.prompt_tokens(self.request["messages"]))
            if self.tokens else None}


class ServerBackend:
    """The llama-server ``sweep tools build`` made, started by this worker (``sweep.trial.drive.Backend``).
    It inherits every knob this worker set on itself."""

    def __init__(self) -> None:
        self.server: Server | None = None
        self.cfg: dict[str, Any] = {}
        self.held: dict[str, int] = {}
        self.slot_dir: str | None = None

    def load(self, config: dict[str, Any], chan: Channel) -> None:
        from sweep.models.tools import ToolsError, binary

        self.cfg = config
        try:
            program = str(binary("llama-server"))
        except ToolsError as exc:
            raise BackendFailed("model_load_failed", str(exc)) from None
        port = free_port()
        # The runner's per-trial directory is the working directory, and goes however the trial ends.
        if config.get("prefix_cache") == "shared":
            self.slot_dir = os.path.abspath("slots")
            os.makedirs(self.slot_dir, exist_ok=True)
        self.server = Server(server_args(config, program, HOST, port, self.slot_dir), port)
        chan.send("server", pid=self.server.proc.pid, port=port)
        self.server.wait_healthy()

    def prepare(self, probes: dict[str, list[list[dict[str, str]]]]) -> None:
        assert self.server is not None
        self.held = shared_prefixes(self.server, probes, escapes(self.cfg.get("input_guard", "none")))

    def request(self, request: dict[str, Any], tokens: bool) -> _Answering:
        assert self.server is not None
        return _Answering(self.server, request, self.cfg, self.held.get(request["kind"]), tokens)

    def knob_pid(self) -> int | str:
        assert self.server is not None
        return self.server.proc.pid  # the server's own threads

    def check(self) -> None:
        gone = self.server.died() if self.server else None
        if gone:
            raise BackendFailed("crashed", gone)

    def failure(self, exc: Exception) -> BackendFailed | None:
        if not isinstance(exc, (OSError, http.client.HTTPException, ValueError)):
            return None
        time.sleep(0.2)  # a server that died mid-answer: let its exit be seen
        gone = self.server.died() if self.server else None
        return BackendFailed("crashed" if gone else "protocol",
                             f"{gone or 'llama-server broke a request'} ({type(exc).__name__}: {exc}): {_log_tail()}")

    def close(self) -> None:
        if self.server:
            self.server.stop()


def run(job: dict[str, Any], chan: Channel) -> int:
    return drive(job, chan, ServerBackend())


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1:], run))
