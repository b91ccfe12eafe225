"""The ``server`` backend's one source of truth: the llama-server command line a trial runs and an
export deploys, the knobs llama.cpp sets itself (``--prio``, ``--poll``, ``--cpu-strict``), how
their effect is read back, and the server's own timings as figures.

Nothing here imports ``llama_cpp``; the worker that runs the server is ``sweep.trial.server_worker``.
"""

from __future__ import annotations

from typing import Any

from sweep.params import PARAMS, SERVER_ONLY, idle_knobs

# llama-cpp-python chat_format -> llama.cpp built-in template, where the two agree.
SERVER_TEMPLATES = {"chatml": "chatml", "gemma": "gemma", "llama-2": "llama2", "llama-3": "llama3",
                    "mistral-instruct": "mistral-v1", "vicuna": "vicuna", "zephyr": "zephyr", "phi3": "phi3"}
# llama.cpp's --prio levels. Only low (-1) and normal (0) are offered: medium and up are SCHED_FIFO,
# real-time, which is never polite and can starve a small machine.
PRIO_LOW = -1


def cpu_mask(cpus: tuple[int, ...] | list[int]) -> str:
    return f"{sum(1 << c for c in cpus):x}"


def server_args(c: dict[str, Any], binary: str = "llama-server", host: str | None = None,
                port: int | None = None, slot_dir: str | None = None) -> list[str]:
    """The llama-server argv for a configuration (a ``TrialConfig.to_dict()``): what a server trial
    runs and what the exports deploy. Both thread counts are always explicit; llama.cpp's prefill
    (batch) threads do not inherit --cpu-mask, --prio or --poll when --threads-batch is given, so
    each is passed for both. One slot (``--parallel 1``) unless ``parallel`` asks for more (then a
    unified KV pool of ``n_ctx`` per slot), and no RAM prompt cache (``--cache-ram 0``), as a trial
    asks one question at a time, cold unless the request says otherwise. ``slot_dir``
    is where ``prefix_cache: shared`` keeps each kind's prefilled prefix (``--slot-save-path``)."""
    slots = c.get("parallel") or 1
    args = [binary, "-m", c["model_path"], "--threads", str(c["n_threads"]),
            "--threads-batch", str(c["n_threads_batch"]), "--batch-size", str(c["n_batch"]),
            "--ubatch-size", str(c["n_ubatch"]), "--ctx-size", str(c["n_ctx"] * slots), "--n-gpu-layers", "0",
            "--parallel", str(slots), "--cache-ram", "0", "--no-webui"]
    if slots > 1:  # one KV pool of n_ctx per slot, shared: each request may use a whole n_ctx, as with one slot
        args.append("--kv-unified")
    if host is not None:
        args += ["--host", host]
    if port is not None:
        args += ["--port", str(port)]
    if c.get("cpus"):
        strict = str(c.get("cpu_strict") or 0)
        args += ["--cpu-mask", cpu_mask(c["cpus"]), "--cpu-strict", strict,
                 "--cpu-mask-batch", cpu_mask(c["cpus"]), "--cpu-strict-batch", strict]
    if c.get("prio") is not None:
        args += ["--prio", str(c["prio"])]
    if c.get("prio_batch") is not None:
        args += ["--prio-batch", str(c["prio_batch"])]
    if c.get("poll") is not None:
        args += ["--poll", str(c["poll"])]
    poll_batch = c.get("poll_batch", c.get("poll"))
    if poll_batch is not None:
        args += ["--poll-batch", str(poll_batch)]
    if slot_dir is not None:
        args += ["--slot-save-path", slot_dir]
    if c.get("chat_format") in SERVER_TEMPLATES:
        args += ["--chat-template", SERVER_TEMPLATES[c["chat_format"]]]
    return args


# Why prefix_cache: shared and several slots do not go together.
PARALLEL_PREFIX = ("prefix_cache: shared restores each kind's prefix into slot 0 only, and with parallel above 1 "
                   "an event may land in another slot (use prefix_cache: off)")


def config_problem(c: dict[str, Any]) -> str | None:
    """Why a configuration cannot run as given (``config.KEY: why``), or None."""
    idle = idle_knobs(c)
    if idle:
        name = next(iter(idle))
        return f"config.{name}: {idle[name]}"
    if c.get("backend", "python") != "server":
        return None
    wrong = next((f"config.{k}: {p}" for k in SERVER_ONLY if (p := PARAMS[k].problem(c.get(k)))), None)
    if wrong:
        return wrong
    if (c.get("parallel") or 1) > 1 and c.get("prefix_cache") == "shared":
        return f"config.parallel: {PARALLEL_PREFIX}"
    missing = tools_problem()
    return f"config.backend: server: {missing}" if missing else None


def tools_problem() -> str | None:
    """Why the server backend cannot run here (llama-server not built, and how to build it), or None."""
    from sweep.models.tools import ToolsError, binary

    try:
        binary("llama-server")
    except ToolsError as exc:
        return str(exc)
    return None


def request_body(request: dict[str, Any], c: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI-style chat request for llama-server, with the trial's strategy: the grammar and
    JSON schema through the server's own fields. Cold (no prompt cache, as the python backend's
    ``reset()`` makes it), except under ``prefix_cache: shared``, where the slot holds only the
    kind's prefix when the request comes (``sweep.trial.server_worker``), so the cache can reuse that and
    nothing of the item."""
    body: dict[str, Any] = {"messages": request["messages"], "max_tokens": c["max_tokens"],
                            "temperature": c["temperature"], "seed": c["seed"], "stream": True,
                            "cache_prompt": c.get("prefix_cache") == "shared", "n_cache_reuse": 0}
    if request.get("grammar"):
        body["grammar"] = request["grammar"]
    if request.get("response_format"):
        body["response_format"] = request["response_format"]
    return body


def completion_body(tokens: list[int], request: dict[str, Any], c: dict[str, Any]) -> dict[str, Any]:
    """The same request for llama-server's ``/completion``, with the prompt given as tokens
    (``input_guard: escape``): the grammar, or the JSON schema, as the chat endpoint would apply it."""
    body: dict[str, Any] = {"prompt": tokens, "n_predict": c["max_tokens"], "temperature": c["temperature"],
                            "seed": c["seed"], "stream": True, "cache_prompt": c.get("prefix_cache") == "shared",
                            "n_cache_reuse": 0}
    if request.get("grammar"):
        body["grammar"] = request["grammar"]
    if request.get("response_format"):
        body["json_schema"] = request["response_format"]["schema"]
    return body


def check_priority(c: dict[str, Any], threads: list[dict[str, Any]]) -> list[str]:
    """What did not hold of ``--prio``, and of nice and policy as --prio may change them.

    On Linux llama.cpp's low priority (-1) sets nice 5 on the thread that loads the model
    (``setpriority``) and SCHED_BATCH on compute threads it places. So with ``prio: -1`` a thread
    may show SCHED_BATCH where the trial asked for normal, and a higher nice than asked; a thread
    with a *lower* nice than asked (llama.cpp's 5 over the trial's 19) or that lost SCHED_IDLE
    broke a knob. If no thread shows any effect, --prio was ignored.
    """
    if c.get("prio") != PRIO_LOW:
        return []
    problems = []
    want_nice, want_policy = c.get("nice", 0), c.get("sched_policy", "normal")
    seen = False
    for t in threads:
        if t["nice"] < want_nice:
            problems.append(f"thread {t['tid']} has nice {t['nice']}, not {want_nice}: --prio -1 raised it")
        if t["policy"] not in (want_policy, "batch") or (want_policy == "idle" and t["policy"] != "idle"):
            problems.append(f"thread {t['tid']} has policy {t['policy']}, not {want_policy}")
        seen = seen or t["nice"] != want_nice or (t["policy"] == "batch" and want_policy == "normal")
    if not seen and want_policy == "normal":
        problems.append("--prio -1 took effect on no thread of llama-server (no SCHED_BATCH, no nice changed)")
    return problems


def check_applied(c: dict[str, Any], threads: list[dict[str, Any]], autogroup: int | None = None) -> list[str]:
    """The server backend's knob check: affinity and the autogroup's nice as for the python backend,
    the threads' nice and policy as --prio leaves them (see ``check_priority``)."""
    from sweep.trial import knobs

    if c.get("prio") != PRIO_LOW:
        return knobs.check_applied(c, threads, autogroup)
    return knobs.check_applied(c, threads, autogroup, nice_and_policy=False) + check_priority(c, threads)


def rate_figures(prompts: list[dict[str, Any]]) -> dict[str, float]:
    """llama-server's own rates, summed over the answers, beside sweep's external ones."""
    timed = [p["server"] for p in prompts if p.get("server")]
    out: dict[str, float] = {}
    prompt_ms = sum(t.get("prompt_ms") or 0 for t in timed)
    if prompt_ms > 0:
        out["server_prefill_tps"] = sum(t.get("prompt_n") or 0 for t in timed) / (prompt_ms / 1000)
    predicted_ms = sum(t.get("predicted_ms") or 0 for t in timed)
    if predicted_ms > 0:
        out["server_decode_tps"] = sum(t.get("predicted_n") or 0 for t in timed) / (predicted_ms / 1000)
    return out
