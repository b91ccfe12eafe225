"""The worker: one trial in a fresh process. ``python -m sweep.trial.worker FD``.

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
from typing import Any, Iterator

from sweep.correctness.escape import Escape
from sweep.correctness.guard import escapes
from sweep.records import TrialConfig
from sweep.trial.drive import BackendFailed, drive, shared_length
from sweep.trial.protocol import Channel, serve


def _messages(messages: list[dict[str, str]], escape: Escape | None) -> list[dict[str, str]]:
    return escape.messages(messages) if escape else messages


def _prompt_tokens(llm: Any, messages: list[dict[str, str]]) -> list[int]:
    """The tokens llama-cpp-python's chat handler evaluates for ``messages`` (one token generated).
    Whatever prefix they share with the cache is reused, as in any request without reset()."""
    out = llm.create_chat_completion(messages=messages, max_tokens=1, temperature=0.0)
    return list(llm._input_ids[: out["usage"]["prompt_tokens"]])


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


class _Answering:
    """One request to llama-cpp-python (``sweep.trial.drive.Answering``). Without a shared prefix the
    cache is reset, so each latency is a full request, not a KV-cache prefix hit; with one, the
    request starts from the kind's prefilled prefix and nothing more. Both before the timing starts."""

    def __init__(self, llm: Any, request: dict[str, Any], grammar: Any, cfg: dict[str, Any], prefix: Any,
                 escape: Escape | None, tokens: bool) -> None:
        if prefix is None:
            llm.reset()
        else:
            llm.load_state(prefix)
        self.llm, self.request, self.grammar, self.cfg = llm, request, grammar, cfg
        self.escape, self.tokens = escape, tokens
        self.prefilled = _prefill_count(llm)
        self.prompt_tokens = 0

    def pieces(self) -> Iterator[str]:
        # A generator computes the next token only when asked: decode pacing idles between asks.
        stream = self.llm.create_chat_completion(
            messages=_messages(self.request["messages"], self.escape), max_tokens=self.cfg["max_tokens"],
            temperature=self.cfg["temperature"], seed=self.cfg["seed"], stream=True, grammar=self.grammar,
            response_format=self.request.get("response_format"))
        for chunk in stream:
            yield chunk["choices"][0]["delta"].get("content") or ""

    def first(self) -> None:
        self.prompt_tokens = self.llm.n_tokens  # at the first token only the prompt has been evaluated
        self.prefilled = _prefill_count(self.llm) - self.prefilled  # what llama.cpp evaluated of it here

    def done(self, answered: bool) -> dict[str, Any]:
        return {"prompt_tokens": self.prompt_tokens, "prefill_tokens": self.prefilled if answered else None,
                # The prompt's own tokens, where asked (injection): what reached the model, special tokens included.
                "tokens": [int(t) for t in self.llm._input_ids[:self.prompt_tokens]] if self.tokens else None}


class PythonBackend:
    """llama-cpp-python in this process (``sweep.trial.drive.Backend``)."""

    def __init__(self) -> None:
        self.llm: Any = None
        self.cfg: dict[str, Any] = {}
        self.escape: Escape | None = None
        self.prefixes: dict[str, Any] = {}

    def load(self, config: dict[str, Any], chan: Channel) -> None:
        import llama_cpp  # only the worker imports llama_cpp, and only after the knobs are set

        chan.send("phase", phase="imported", t=time.monotonic())
        self.cfg = config
        try:
            # The same keyword arguments an export hands to a deployment: one source for both.
            self.llm = llama_cpp.Llama(**TrialConfig.from_dict(config).llama_kwargs())
        except Exception as exc:  # llama-cpp-python raises ValueError for any load failure
            raise BackendFailed("model_load_failed", f"{type(exc).__name__}: {exc}") from None
        self.escape = Escape(self.llm) if escapes(config.get("input_guard", "none")) else None

    def prepare(self, probes: dict[str, list[list[dict[str, str]]]]) -> None:
        self.prefixes = shared_prefixes(self.llm, probes, self.escape)

    def request(self, request: dict[str, Any], tokens: bool) -> _Answering:
        from llama_cpp.llama_grammar import LlamaGrammar

        # llama.cpp parses the grammar for each request, as a deployment would.
        grammar = LlamaGrammar.from_string(request["grammar"], verbose=False) if request.get("grammar") else None
        return _Answering(self.llm, request, grammar, self.cfg, self.prefixes.get(request["kind"]), self.escape, tokens)

    def knob_pid(self) -> int | str:
        return "self"

    def check(self) -> None:
        return None

    def failure(self, exc: Exception) -> BackendFailed | None:
        return None  # an exception here is a crash: sweep.trial.protocol.serve reports it

    def close(self) -> None:
        return None


def run(job: dict[str, Any], chan: Channel) -> int:
    return drive(job, chan, PythonBackend())


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1:], run))
