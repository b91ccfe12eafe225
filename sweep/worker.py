"""The worker: one trial in a fresh process. ``python -m sweep.worker FD``.

The trial's job comes as JSON on stdin. Everything it reports goes as JSON
lines over the inherited pipe FD, never stdout, where llama.cpp prints. The
worker never touches the study's storage.

Order matters: affinity, nice and scheduling policy are per thread on Linux and
inherited by new threads, so they are set on the main thread before
``llama_cpp`` is imported and before any compute thread exists.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from . import knobs
from .protocol import Channel, serve
from .records import TrialConfig


class Escape:
    """``input_guard: escape``: every message's content is tokenized with special-token parsing off,
    so no text in it can become a template token; the template's own markers are parsed as usual.

    llama-cpp-python renders the chat template to one string and tokenizes all of it with
    ``special=True``. Each content is therefore fenced with markers no input can hold (a random
    nonce between private-use characters), and the model's ``tokenize`` is wrapped to tokenize what
    lies between them as text, and the rest as before, piece by piece.
    """

    def __init__(self, llm: Any) -> None:
        import secrets

        nonce = secrets.token_hex(8)
        self.open, self.close = f"\ue000{nonce}\ue001", f"\ue002{nonce}\ue003"
        self._tokenize = llm.tokenize
        llm.tokenize = self.tokenize

    def messages(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        return [{**m, "content": f"{self.open}{m['content']}{self.close}"} for m in messages]

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        rest, out = text.decode("utf-8", errors="surrogatepass"), []
        while rest:
            head, found, tail = rest.partition(self.open)
            content, _, rest = tail.partition(self.close) if found else ("", "", "")
            for piece, parse in ((head, special), (content, False)):
                if piece:
                    out += self._tokenize(piece.encode("utf-8", errors="surrogatepass"),
                                          add_bos=add_bos and not out, special=parse)
        return out or self._tokenize(b"", add_bos=add_bos, special=special)


def _messages(messages: list[dict[str, str]], escape: Escape | None) -> list[dict[str, str]]:
    return escape.messages(messages) if escape else messages


def _prompt_tokens(llm: Any, messages: list[dict[str, str]]) -> list[int]:
    """The tokens llama-cpp-python's chat handler evaluates for ``messages`` (one token generated).
    Whatever prefix they share with the cache is reused, as in any request without reset()."""
    out = llm.create_chat_completion(messages=messages, max_tokens=1, temperature=0.0)
    return list(llm._input_ids[: out["usage"]["prompt_tokens"]])


def shared_length(a: list[int], b: list[int]) -> int:
    """How many leading tokens two probes' prompts share: the fixed prefix a cache may hold."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def shared_prefixes(llm: Any, probes: dict[str, list[list[dict[str, str]]]],
                    escape: Escape | None = None) -> dict[str, Any]:
    """For each kind, prefill its fixed prefix once and keep the state (``prefix_cache: shared``).

    The prefix is the tokens two requests of the kind share when only their item differs, so the
    item part of every real request is still prefilled fresh: never a cache hit on the item. The
    probes run back to back without reset(), so each prefills only what the cache lacks (the
    system prompt is shared by every kind); the cache is then cut back to the shared prefix, as
    llama-cpp-python itself does before a prefix hit.
    """
    states = {}
    llm.reset()
    for kind, (a, b) in probes.items():
        ta, tb = _prompt_tokens(llm, _messages(a, escape)), _prompt_tokens(llm, _messages(b, escape))
        n = shared_length(ta, tb)
        llm._ctx.kv_cache_seq_rm(-1, n, -1)
        llm.n_tokens = n
        states[kind] = llm.save_state()
    llm.reset()
    return states


def _prefill_count(llm: Any) -> int:
    import llama_cpp

    return int(llama_cpp.llama_perf_context(llm._ctx.ctx).n_p_eval)


def _run_prompt(llm: Any, request: dict[str, Any], grammar: Any, cfg: dict[str, Any], chan: Channel,
                index: int, prefix: Any = None, escape: Escape | None = None,
                tokens: bool = False) -> dict[str, Any]:
    # Without a shared prefix, reset so each latency is a full request, not a KV-cache prefix hit;
    # with one, start from the kind's prefilled prefix and nothing more.
    if prefix is None:
        llm.reset()
    else:
        llm.load_state(prefix)
    prefilled = _prefill_count(llm)
    chan.send("phase", phase="prefill", t=time.monotonic(), prompt=index)
    t0 = time.monotonic()
    t_first = t_last = None
    prompt_tokens = 0
    pieces: list[str] = []
    stream = llm.create_chat_completion(
        messages=_messages(request["messages"], escape), max_tokens=cfg["max_tokens"], temperature=cfg["temperature"], seed=cfg["seed"],
        stream=True, grammar=grammar, response_format=request.get("response_format"),
    )
    resumed = t0
    for chunk in stream:
        text = chunk["choices"][0]["delta"].get("content")
        if not text:
            continue
        now = time.monotonic()
        if t_first is None:
            t_first = now
            prompt_tokens = llm.n_tokens  # at the first token only the prompt has been evaluated
            prefilled = _prefill_count(llm) - prefilled  # what llama.cpp evaluated of it in this request
            chan.send("phase", phase="decode", t=now, prompt=index)
        t_last = now
        pieces.append(text)
        # Decode pacing: the generator computes the next token only when asked, so
        # sleeping here idles the compute threads between tokens.
        pause = 0.0
        if cfg.get("pace_duty"):
            pause = (now - resumed) * (1 - cfg["pace_duty"]) / cfg["pace_duty"]
        if cfg.get("pace_tps"):
            pause = max(pause, t_first + len(pieces) / cfg["pace_tps"] - now)
        if pause > 0:
            time.sleep(pause)
        resumed = time.monotonic()
    t_end = time.monotonic()
    chan.send("phase", phase="between", t=t_end, prompt=index)
    # The prompt's own tokens, where asked (injection): what reached the model, special tokens included.
    extra = {"tokens": [int(t) for t in llm._input_ids[:prompt_tokens]]} if tokens else {}
    return {
        **extra,
        "latency_s": t_end - t0,
        "ttft_s": (t_first - t0) if t_first else None,
        "prompt_tokens": prompt_tokens,
        "prefill_tokens": prefilled if t_first else None,
        "completion_chunks": len(pieces),
        "decode_s": (t_last - t_first) if t_first and t_last else 0.0,
        "answer": "".join(pieces),
    }


def _answer_all(llm: Any, prompts: list[dict[str, Any]], cfg: dict[str, Any], chan: Channel,
                prefixes: dict[str, Any], passname: str | None = None, escape: Escape | None = None) -> None:
    import llama_cpp

    extra = {"pass": passname} if passname else {}
    for i, request in enumerate(prompts):
        # llama.cpp parses the grammar for each request, as a deployment would: that cost is in the latency.
        grammar = llama_cpp.LlamaGrammar.from_string(request["grammar"], verbose=False) if request.get("grammar") else None
        chan.send("prompt", index=i, **extra, **_run_prompt(llm, request, grammar, cfg, chan, i,
                                                           prefixes.get(request["kind"]), escape,
                                                           tokens=passname == "injection"))


def run(job: dict[str, Any], chan: Channel) -> int:
    cfg = job["config"]
    knobs.apply(cfg)
    chan.send("phase", phase="load", t=time.monotonic())
    import llama_cpp  # only the worker imports llama_cpp, and only after the knobs are set

    chan.send("phase", phase="imported", t=time.monotonic())

    try:
        # The same keyword arguments an export hands to a deployment: one source for both.
        llm = llama_cpp.Llama(**TrialConfig.from_dict(cfg).llama_kwargs())
    except Exception as exc:  # llama-cpp-python raises ValueError for any load failure
        chan.send("error", reason="model_load_failed", detail=f"{type(exc).__name__}: {exc}")
        return 3
    escape = Escape(llm) if cfg.get("input_guard") == "escape" else None
    # Preparing the shared prefixes is part of getting ready: it counts in the load phase.
    prefixes = shared_prefixes(llm, job["prefixes"], escape) if job.get("prefixes") else {}
    chan.send("phase", phase="idle", t=time.monotonic())
    time.sleep(job["idle_seconds"])
    chan.send("phase", phase="active", t=time.monotonic())
    _answer_all(llm, job["prompts"], cfg, chan, prefixes, escape=escape)
    # Read back after inference: compute threads are created lazily, on first use.
    chan.send("knobs", threads=knobs.read_threads(), autogroup=knobs.read_autogroup())
    if job.get("injection"):  # attacker-written items and their clean originals, out of the figures above
        chan.send("phase", phase="injection", t=time.monotonic())
        _answer_all(llm, job["injection"], cfg, chan, prefixes, passname="injection", escape=escape)
    if job.get("contended"):
        # The same prompts again, under the user's CPU-bound foreground: the runner resumes it on
        # this mark and says "go" on stdin once it runs.
        chan.send("phase", phase="contended", t=time.monotonic())
        sys.stdin.readline()
        _answer_all(llm, job["prompts"], cfg, chan, prefixes, passname="contended", escape=escape)
    chan.send("phase", phase="done", t=time.monotonic())
    chan.send("result", ok=True)
    return 0


def _injected_fault(chan: Channel) -> None:
    """Test hook: ``SWEEP_TEST_FAULT=MODE:FLAGFILE`` faults the first worker that finds no FLAGFILE.

    Lets the fault-injection suite run whole sweeps in which one trial faults and
    the next runs for real. MODE is segfault, abort, hang, garbage, memory (a steady climb) or
    memory_spike (1.5 GB touched and freed at once).
    """
    spec = os.environ.get("SWEEP_TEST_FAULT")
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
    elif mode == "hang":
        time.sleep(3600)
    elif mode == "garbage":
        os.write(chan.fd, b"garbage instead of a result\n")
        os._exit(0)
    elif mode == "memory":
        hog = []
        while True:
            hog.append(bytearray(32 * 1024 * 1024))
            time.sleep(0.01)
    elif mode == "memory_spike":
        # Touch 1.5 GB at once and free it within a few tens of ms, between two of the monitor's
        # samples, then carry on as a normal trial: only the kernel's high-water mark sees it.
        spike = bytearray(b"\x01") * (1536 * 1024 * 1024)
        del spike
        return


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1:], run, before=_injected_fault))
