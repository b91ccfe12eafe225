"""The worker: one trial in a fresh process. ``python -m sweep.worker FD``.

The trial's job comes as JSON on stdin. Everything it reports goes as JSON
lines over the inherited pipe FD, never stdout, where llama.cpp prints. The
worker never touches the study's storage.

Order matters: affinity, nice and scheduling policy are per thread on Linux and
inherited by new threads, so they are set on the main thread before
``llama_cpp`` is imported and before any compute thread exists.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from .protocol import Channel, die_with_parent

_POLICIES = {"normal": os.SCHED_OTHER, "batch": os.SCHED_BATCH, "idle": os.SCHED_IDLE}
POLICY_NAMES = {v: k for k, v in _POLICIES.items()}


def apply_knobs(cfg: dict[str, Any], skip: set[str]) -> None:
    """Set affinity, nice and policy on the calling (only) thread. ``skip`` is a test hook."""
    if cfg.get("cpus") is not None and "affinity" not in skip:
        os.sched_setaffinity(0, cfg["cpus"])
    if cfg.get("nice") and "nice" not in skip:
        os.setpriority(os.PRIO_PROCESS, 0, cfg["nice"])
    policy = cfg.get("sched_policy", "normal")
    if policy != "normal" and "sched_policy" not in skip:
        os.sched_setscheduler(0, _POLICIES[policy], os.sched_param(0))


def read_thread_knobs(pid: int | str = "self") -> list[dict[str, Any]]:
    """Affinity, policy and nice of every thread of ``pid``, as the kernel reports them."""
    threads = []
    base = f"/proc/{pid}/task"
    for tid in sorted(os.listdir(base), key=int):
        try:
            with open(f"{base}/{tid}/stat") as f:
                stat = f.read()
            with open(f"{base}/{tid}/status") as f:
                status = f.read()
        except FileNotFoundError:
            continue  # the thread exited between listing and reading
        rest = stat[stat.rindex(")") + 2 :].split()
        # Fields after the command name, 0-based: nice is field 19 of stat, policy field 41.
        nice, policy = int(rest[16]), int(rest[38])
        cpus = next(line.split(":", 1)[1].strip() for line in status.splitlines() if line.startswith("Cpus_allowed_list"))
        threads.append({"tid": int(tid), "nice": nice, "policy": POLICY_NAMES.get(policy, str(policy)), "cpus": cpus})
    return threads


def _run_prompt(llm: Any, request: dict[str, Any], grammar: Any, cfg: dict[str, Any], chan: Channel,
                index: int) -> dict[str, Any]:
    # Reset so each latency is a full request, not a KV-cache prefix hit.
    llm.reset()
    chan.send("phase", phase="prefill", t=time.monotonic(), prompt=index)
    t0 = time.monotonic()
    t_first = t_last = None
    prompt_tokens = 0
    pieces: list[str] = []
    stream = llm.create_chat_completion(
        messages=request["messages"], max_tokens=cfg["max_tokens"], temperature=cfg["temperature"], seed=cfg["seed"],
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
    return {
        "latency_s": t_end - t0,
        "ttft_s": (t_first - t0) if t_first else None,
        "prompt_tokens": prompt_tokens,
        "completion_chunks": len(pieces),
        "decode_s": (t_last - t_first) if t_first and t_last else 0.0,
        "answer": "".join(pieces),
    }


def run(job: dict[str, Any], chan: Channel) -> int:
    cfg = job["config"]
    skip = set(filter(None, os.environ.get("SWEEP_TEST_SKIP_KNOBS", "").split(",")))
    apply_knobs(cfg, skip)
    chan.send("phase", phase="load", t=time.monotonic())
    import llama_cpp  # only the worker imports llama_cpp, and only after the knobs are set

    kwargs = dict(
        model_path=cfg["model_path"], n_threads=cfg["n_threads"], n_threads_batch=cfg["n_threads_batch"],
        n_batch=cfg["n_batch"], n_ubatch=cfg["n_ubatch"], n_ctx=cfg["n_ctx"], n_gpu_layers=0,
        seed=cfg["seed"], verbose=False,
    )
    if cfg.get("chat_format"):
        kwargs["chat_format"] = cfg["chat_format"]
    try:
        llm = llama_cpp.Llama(**kwargs)
    except Exception as exc:  # llama-cpp-python raises ValueError for any load failure
        chan.send("error", reason="model_load_failed", detail=f"{type(exc).__name__}: {exc}")
        return 3
    chan.send("phase", phase="idle", t=time.monotonic())
    time.sleep(job["idle_seconds"])
    chan.send("phase", phase="active", t=time.monotonic())
    for i, request in enumerate(job["prompts"]):
        # llama.cpp parses the grammar for each request, as a deployment would: that cost is in the latency.
        grammar = llama_cpp.LlamaGrammar.from_string(request["grammar"], verbose=False) if request.get("grammar") else None
        chan.send("prompt", index=i, **_run_prompt(llm, request, grammar, cfg, chan, i))
    chan.send("phase", phase="done", t=time.monotonic())
    # Read back after inference: compute threads are created lazily, on first use.
    chan.send("knobs", threads=read_thread_knobs())
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


def main(argv: list[str]) -> int:
    die_with_parent()
    chan = Channel(int(argv[0]))
    job = json.loads(sys.stdin.read())
    _injected_fault(chan)
    try:
        return run(job, chan)
    except Exception as exc:
        chan.send("error", reason="crashed", detail=f"{type(exc).__name__}: {exc}")
        raise


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
