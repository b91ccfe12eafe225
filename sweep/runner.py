"""The runner: one trial in a fresh worker process, measured from outside.

A failure is data: whatever the worker does (crash, hang, garbage, runaway
memory), ``run_trial`` returns an ``Outcome`` with a machine-readable reason and
the tail of the worker's output, and no process of the trial survives.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Iterator

from .metrics import figures as compute_figures
from .metrics import major_marks, probe_figures
from .hostlock import measurement_lock
from .monitor import Monitor, Series, machine_busy_pct
from .protocol import problem
from .records import Outcome, TrialConfig, TrialSettings
from .prompts import answer_text, request_for
from .tasks import Task, score

WORKER_CMD = [sys.executable, "-m", "sweep.worker"]
_TERM_GRACE_S = 2.0


@contextlib.contextmanager
def killer(proc: subprocess.Popen[bytes]) -> Iterator[None]:
    """Make sure no process of the worker's group outlives the block, whatever happens."""
    try:
        yield
    finally:
        kill_group(proc.pid)
        reap(proc.pid)


def reap(pid: int, timeout_s: float = 10.0) -> tuple[int, Any] | None:
    """Collect a killed child's status and rusage, waiting at most ``timeout_s``; None if it was
    already collected or would not go (a process stuck in the kernel: then it is left, not waited on
    forever). A thread-group leader reads as a zombie while its other threads still exit, so the
    group can look dead a moment before the child can be collected."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            pid_, status, rusage = os.wait4(pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if pid_:
            return status, rusage
        if time.monotonic() > deadline:
            return None
        time.sleep(0.01)


def group_alive(pgid: int) -> bool:
    """Whether the process group has a member that is not a zombie.

    ``killpg(pgid, 0)`` cannot tell: it succeeds while an unreaped zombie remains.
    """
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def kill_group(pgid: int) -> None:
    """SIGTERM the whole process group, then SIGKILL whatever is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + _TERM_GRACE_S
        while time.monotonic() < deadline:
            if not group_alive(pgid):
                return
            time.sleep(0.02)


class _Reader(threading.Thread):
    """Collects the worker's messages; anything that is not a valid message is a protocol error."""

    def __init__(self, fd: int, on_event: Callable[[dict[str, Any]], None] | None = None) -> None:
        super().__init__(name="sweep-reader", daemon=True)
        self.fd, self.messages, self.protocol_errors = fd, [], []
        self.on_event = on_event
        self.last_message_t = time.monotonic()

    def run(self) -> None:
        with os.fdopen(self.fd, "rb") as f:
            for raw in f:
                try:
                    msg = json.loads(raw)
                except ValueError as exc:
                    self.protocol_errors.append(f"{exc}: {raw[:120]!r}")
                    continue
                wrong = problem(msg)
                if wrong:
                    self.protocol_errors.append(f"{wrong}: {raw[:120]!r}")
                    continue
                self.messages.append(msg)
                self.last_message_t = time.monotonic()
                if self.on_event:
                    self.on_event(msg)


class _Probe:
    """The foreground-slowdown probe process and the latencies it reports."""

    def __init__(self, settings: TrialSettings) -> None:
        self.samples: list[tuple[float, float]] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sweep.probe", str(settings.probe_period_ms), str(settings.probe_work_ms)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        self._thread = threading.Thread(target=self._read, name="sweep-probe", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            t, lat = line.split()
            self.samples.append((float(t), float(lat)))

    def stop(self) -> list[tuple[float, float]]:
        kill_group(self.proc.pid)
        self.proc.wait()
        self._thread.join(timeout=5)
        return self.samples


@contextlib.contextmanager
def stay_off(cpus: tuple[int, ...] | None) -> Iterator[None]:
    """Keep this process's threads (and those they start) off the trial's CPUs, where others exist.

    The monitor, the pipe reader and the wait loop must not steal time from the
    worker they measure. Affinity is per thread on Linux, so every thread is moved.
    """
    allowed = os.sched_getaffinity(0)
    others = allowed - set(cpus) if cpus else set()
    if not others:
        yield
        return
    tids = [int(t) for t in os.listdir("/proc/self/task")]
    for tid in tids:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(tid, others)
    try:
        yield
    finally:
        for tid in (int(t) for t in os.listdir("/proc/self/task")):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, allowed)


def noise_guard(settings: TrialSettings) -> tuple[float, bool]:
    """Wait (bounded) for the machine to be quiet. Returns its busy % and whether it stayed busy."""
    for attempt in range(settings.noise_retries + 1):
        pct = machine_busy_pct(settings.noise_check_seconds)
        if pct <= settings.noise_max_pct:
            return pct, False
        if attempt < settings.noise_retries:
            time.sleep(settings.noise_wait_seconds)
    return pct, True


def provably_over(latencies: list[float], n_total: int, budget: float) -> bool:
    """Whether the p95 of all ``n_total`` latencies must exceed ``budget``, whatever the rest are.

    The p95 interpolates between the sorted values at ``floor(0.95 (n - 1))`` and
    the next one; once ``n - floor(0.95 (n - 1))`` values are over the budget,
    both of those are, so the p95 is too.
    """
    need = n_total - int(0.95 * (n_total - 1))
    return sum(lat > budget for lat in latencies) >= need


def _parse_cpu_list(text: str) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def verify_knobs(config: TrialConfig, threads: list[dict[str, Any]]) -> list[str]:
    """What did not hold, thread by thread, as read back from /proc by the worker."""
    problems = []
    want_cpus = set(config.cpus) if config.cpus is not None else None
    for t in threads:
        if want_cpus is not None and _parse_cpu_list(t["cpus"]) != want_cpus:
            problems.append(f"thread {t['tid']} may run on CPUs {t['cpus']}, not {sorted(want_cpus)}")
        if t["nice"] != config.nice:
            problems.append(f"thread {t['tid']} has nice {t['nice']}, not {config.nice}")
        if t["policy"] != config.sched_policy:
            problems.append(f"thread {t['tid']} has policy {t['policy']}, not {config.sched_policy}")
    return problems


def _tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _series_dict(series: Series, tags: list[str], events: list[dict[str, Any]]) -> dict[str, Any]:
    # The marks say when each major phase began, on the windows' clock. A phase shorter than a
    # window (SmolLM2 loads in ~0.1 s) has no window of its own, but always has its mark.
    return {
        "marks": {name: round(t, 4) for name, t in major_marks(events).items()},
        "window_s": series.window_s,
        "ncpu": series.ncpu,
        "t": [round(w.t1, 4) for w in series.windows],
        "dt": [round(w.t1 - w.t0, 4) for w in series.windows],
        "tree_core_pct": [round(w.core_pct, 2) for w in series.windows],
        "system_pct": [round(w.machine_pct, 2) for w in series.windows],
        "rss_anon_mb": [round(w.rss_anon_kb / 1024, 1) for w in series.windows],
        "phase": tags,
    }


def run_trial(config: TrialConfig, settings: TrialSettings, tasks: list[Task],
              worker_cmd: list[str] | None = None, latency_budget_s: float | None = None,
              on_event: Callable[[dict[str, Any]], None] | None = None, lock: bool = True,
              on_wait: Callable[[str], None] | None = None) -> Outcome:
    """Run one configuration in a fresh worker and measure it. Never raises for a worker fault.

    With ``latency_budget_s`` and ``settings.early_abort``, the trial stops as soon as
    its latency p95 is provably over that budget; the outcome is then complete, with
    the figures of the prompts answered so far (``early_abort`` = 1).

    The host's measurement lock is held from the noise guard until the worker is reaped
    (``lock=False`` measures without it); ``on_wait`` is told whom it waits for.
    """
    with measurement_lock(f"a trial of {config.model}:{config.quant}", on_wait=on_wait, enabled=lock):
        return _run_locked(config, settings, tasks, worker_cmd, latency_budget_s, on_event)


def _run_locked(config: TrialConfig, settings: TrialSettings, tasks: list[Task], worker_cmd: list[str] | None,
                latency_budget_s: float | None, on_event: Callable[[dict[str, Any]], None] | None) -> Outcome:
    started = time.monotonic()
    limit_kb = settings.memory_limit_gb * 1024**2 if settings.memory_limit_gb else None
    over_memory = threading.Event()

    def on_sample(w: Any) -> None:
        if limit_kb and w.rss_anon_kb + w.rss_file_kb > limit_kb:
            over_memory.set()

    noise_pct, busy = noise_guard(settings)
    probe = _Probe(settings) if settings.probe else None  # started first: it keeps the user's CPUs
    try:
        with stay_off(config.cpus):
            return _measure(config, settings, tasks, worker_cmd, latency_budget_s, on_event, started, noise_pct,
                            busy, probe, on_sample, over_memory)
    finally:
        if probe:
            probe.stop()  # already stopped on the normal path; this covers an interrupt in the baseline


def _measure(config: TrialConfig, settings: TrialSettings, tasks: list[Task], worker_cmd: list[str] | None,
             latency_budget_s: float | None, on_event: Callable[[dict[str, Any]], None] | None, started: float,
             noise_pct: float, busy: bool, probe: _Probe | None, on_sample: Callable[[Any], None],
             over_memory: threading.Event) -> Outcome:
    job = {"config": config.to_dict(), "idle_seconds": settings.idle_seconds,
           "prompts": [request_for(t, config.shots, config.output) for t in tasks]}
    monitor = Monitor(settings.window_ms / 1000, on_sample).start()
    try:  # an interrupt anywhere below must not leave the sampler running
        time.sleep(settings.baseline_seconds)
        env = {**os.environ, **config.environment()}
        with tempfile.TemporaryDirectory(prefix="sweep-trial-") as tmp:
            log_path = os.path.join(tmp, "worker.log")
            r, w = os.pipe()
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(
                    (worker_cmd or WORKER_CMD) + [str(w)], stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                    pass_fds=(w,), start_new_session=True, env=env, cwd=tmp,
                )
            # The baseline ends here: interpreter start-up and imports are the trial's own work.
            spawn_mark = {"type": "phase", "phase": "start", "t": time.monotonic()}
            os.close(w)
            monitor.attach(proc.pid)
            reader = _Reader(r, on_event)
            reader.start()
            killed_for = None
            rusage = None
            status = 0
            with killer(proc), contextlib.ExitStack() as stack:
                if probe:
                    stack.callback(probe.stop)
                try:
                    assert proc.stdin is not None
                    proc.stdin.write(json.dumps(job).encode())
                    proc.stdin.close()
                except BrokenPipeError:
                    pass  # the worker died at once; its status says why
                spawned = time.monotonic()
                deadline = spawned + settings.timeout_seconds  # from spawn, not from the noise guard
                while True:
                    pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
                    if pid:
                        break
                    now = time.monotonic()
                    if over_memory.is_set():
                        killed_for = "memory_budget"
                    elif now > deadline:
                        killed_for = "timeout"
                    elif now - max(reader.last_message_t, spawned) > settings.progress_timeout_seconds:
                        killed_for = "no_progress"
                    elif latency_budget_s and settings.early_abort and provably_over(
                            [m["latency_s"] for m in list(reader.messages) if m["type"] == "prompt"], len(tasks),
                            latency_budget_s):
                        killed_for = "early_abort"
                    if killed_for:
                        kill_group(proc.pid)
                        status, rusage = reap(proc.pid) or (int(signal.SIGKILL), None)  # a raw wait status
                        break
                    time.sleep(0.02)
                proc.returncode = os.waitstatus_to_exitcode(status)
            reader.join(timeout=5)
            series = monitor.stop()
            stderr_tail = _tail(log_path)
    finally:
        monitor.stop()

    messages = [spawn_mark, *reader.messages]
    prompts = [m for m in messages if m["type"] == "prompt"]
    errors = [m for m in messages if m["type"] == "error"]
    knobs = next((m["threads"] for m in messages if m["type"] == "knobs"), [])
    figs, tags = compute_figures(series, messages, prompts, rusage.ru_maxrss if rusage else 0)
    if probe:
        figs.update(probe_figures(probe.samples, messages))
    figs["noise_check_pct"], figs["machine_busy"] = noise_pct, float(busy)
    if settings.memory_limit_gb:
        figs["memory_limit_sampled"] = 1.0  # no cgroup: the limit is enforced by sampling, then checked
    common = dict(stderr_tail=stderr_tail, series=_series_dict(series, tags, messages), knobs={"threads": knobs},
                  wall_seconds=time.monotonic() - started)
    rc = proc.returncode

    def failed(reason: str, detail: str) -> Outcome:
        return Outcome(ok=False, reason=reason, detail=detail, figures=figs, **common)

    if killed_for == "timeout":
        return failed("timeout", f"no result within {settings.timeout_seconds:g} s")
    if killed_for == "no_progress":
        return failed("timeout", f"no progress for {settings.progress_timeout_seconds:g} s")
    if killed_for == "memory_budget":
        return failed("memory_budget", f"RSS went over {settings.memory_limit_gb:g} GB")
    if settings.memory_limit_gb and figs.get("rss_peak_gb", 0.0) > settings.memory_limit_gb:
        # The live limit is sampled once a window; the kernel's high-water mark sees what fell between.
        return failed("memory_budget", f"peak RSS {figs['rss_peak_gb']:.2f} GB (the kernel's high-water mark) went "
                                       f"over {settings.memory_limit_gb:g} GB between two samples")
    if errors:
        return failed(errors[0]["reason"], errors[0].get("detail", ""))
    aborted = killed_for == "early_abort"
    if rc < 0 and not aborted:
        return failed("crashed", f"worker killed by {signal.Signals(-rc).name}")
    if rc > 0 and not aborted:
        return failed("crashed", f"worker exited with status {rc}")
    if not aborted and (not any(m["type"] == "result" for m in messages) or len(prompts) != len(tasks)):
        detail = "; ".join(reader.protocol_errors[:3]) or f"result missing ({len(prompts)}/{len(tasks)} answers)"
        return failed("protocol", detail)
    problems = verify_knobs(config, knobs)  # an aborted worker read none back: nothing to check
    if problems:
        return failed("knob_not_applied", "; ".join(problems[:4]))
    if aborted:
        figs["early_abort"] = 1.0
        figs["n_answered"] = len(prompts)
        tasks = tasks[: len(prompts)]

    scores = [score(t, answer_text(p["answer"], config.output)) for t, p in zip(tasks, prompts)]
    by_kind: dict[str, list[float]] = {}
    for t, s in zip(tasks, scores):
        by_kind.setdefault(t.kind, []).append(s.value)
    figs["correctness"] = sum(s.value for s in scores) / len(scores) if scores else 0.0
    figs["parse_failures"] = sum(not s.parsed for s in scores)
    answers = [{"id": t.id, "kind": t.kind, "answer": p["answer"], "score": s.value, "parsed": s.parsed,
                "latency_s": round(p["latency_s"], 4)} for t, p, s in zip(tasks, prompts, scores)]
    return Outcome(ok=True, figures=figs, by_kind={k: sum(v) / len(v) for k, v in by_kind.items()},
                   answers=answers, **common)
