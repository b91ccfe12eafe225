"""The runner: one trial in a fresh worker process, measured from outside.

A failure is data: whatever the worker does (crash, hang, garbage, runaway
memory), ``run_trial`` returns an ``Outcome`` with a machine-readable reason and
the tail of the worker's output, and no process of the trial survives.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable

from sweep.correctness.prompts import prefix_probes, request_for, strategy_of
from sweep.correctness.tasks import INJECTION_GROUPS, Task, injection_pairs
from sweep.hostlock import measurement_lock
from sweep.measure.foreground import CpuLoad
from sweep.measure.metrics import provably_over
from sweep.measure.monitor import Monitor, Series, noise_guard
from sweep.measure.probe import Probe
from sweep.models.gguf import special_token_ids
from sweep.platforms import is_portable
from sweep.procs import kill_group, killer, owned_prefix, reap, stay_off, sweep_dead, tail
from sweep.records import Outcome, TrialConfig, TrialSettings
from sweep.trial.arrivals import QUEUE_CAP, schedule
from sweep.trial.cgroups import NORMAL_WEIGHT, TrialCgroup, limits_of
from sweep.trial.outcome import Observation, outcome_of
from sweep.trial.protocol import problem

WORKER_CMD = [sys.executable, "-m", "sweep.trial.worker"]
SERVER_WORKER_CMD = [sys.executable, "-m", "sweep.trial.server_worker"]  # the server backend (sweep.trial.server)
FAKE_WORKER_CMD = [sys.executable, "-m", "sweep.testing.worker"]  # SWEEP_TEST_WORKER=fake (sweep.testing)


class _Reader(threading.Thread):
    """Collects the worker's messages; anything that is not a valid message is a protocol error."""

    def __init__(self, fd: int, on_event: Callable[[dict[str, Any]], None] | None = None) -> None:
        super().__init__(name="sweep-reader", daemon=True)
        self.fd = fd
        self.messages: list[dict[str, Any]] = []
        self.protocol_errors: list[str] = []
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


def run_trial(config: TrialConfig, settings: TrialSettings, tasks: list[Task], *, latency_budget_s: float | None = None,
              on_event: Callable[[dict[str, Any]], None] | None = None, lock: bool = True,
              on_wait: Callable[[str], None] | None = None) -> Outcome:
    """Run one configuration in a fresh worker and measure it. Never raises for a worker fault.

    With ``latency_budget_s`` and ``settings.early_abort``, the trial stops as soon as
    its latency p95 is provably over that budget; the outcome is then complete, with
    the figures of the prompts answered so far (``early_abort`` = 1).

    One quiet-machine policy: a trial starts again, ``noise_wait_seconds`` later, when the machine
    was busier than ``noise_max_pct`` before it (the noise check, or the baseline window) or, with
    ``busy_trials: repeat``, while it answered (``machine_busy_active``); at most ``noise_retries``
    times in all, so a trial is measured at most ``noise_retries + 1`` times. The last measurement
    is kept, flagged if the machine was still busy; ``busy_repeats`` counts the new starts.

    The host's measurement lock is held from the noise guard until the worker is reaped
    (``lock=False`` measures without it); ``on_wait`` is told whom it waits for.
    """
    with measurement_lock(f"a trial of {config.model}:{config.quant}", on_wait=on_wait, enabled=lock):
        repeats = 0
        while True:
            retry = repeats < settings.noise_retries
            try:
                outcome: Outcome | None = outcome_of(
                    _Watch(config, settings, tasks, latency_budget_s, on_event).observe(retry), settings, tasks)
            except _Busy:  # busy before the worker started
                outcome = None
            if outcome is not None and not (retry and settings.busy_trials == "repeat"
                                            and outcome.figures.get("machine_busy_active")):
                outcome.figures["busy_repeats"] = float(repeats)
                return outcome
            repeats += 1
            time.sleep(settings.noise_wait_seconds)


class _Busy(Exception):
    """The noise check or the baseline window found the machine busy: wait, and start again."""


class _Watch:
    """One run of a worker, watched: the noise check, the foreground, the monitor, the worker's
    life under its deadlines. ``observe`` returns what was seen, as data."""

    def __init__(self, config: TrialConfig, settings: TrialSettings, tasks: list[Task], latency_budget_s: float | None,
                 on_event: Callable[[dict[str, Any]], None] | None) -> None:
        self.config, self.settings, self.tasks = config, settings, tasks
        self.worker_cmd = SERVER_WORKER_CMD if config.backend == "server" else WORKER_CMD
        if os.environ.get("SWEEP_TEST_WORKER") == "fake":  # a test hook: no model (sweep.testing)
            self.worker_cmd = FAKE_WORKER_CMD
        self.latency_budget_s, self.on_event = latency_budget_s, on_event
        self.started = time.monotonic()
        self.over_memory = threading.Event()
        self.killed_for: str | None = None
        self.killed_t: float | None = None
        self.contended_t: float | None = None  # when the worker began its contended pass
        self.probe: Probe | None = None
        self.load: CpuLoad | None = None
        self.stdin: Any = None
        self.reader: _Reader | None = None
        self.cgroup: TrialCgroup | None = None
        self.fg_cgroup: TrialCgroup | None = None  # trial.cgroup own: the foreground's, beside the model's
        self.topology: tuple[str, str] = ("shared", "")
        self.cgroup_problems: list[str] = []
        self.pid: int | None = None
        self.server_pid: int | None = None
        asked = zip(INJECTION_GROUPS, (settings.injection_items, settings.held_out_items, settings.benign_items))
        self.injection_tasks = [t for group, n in asked if n for pair in injection_pairs(n, group) for t in pair]
        # The open-loop phase's events (seconds from its start, item index); none under arrival: closed.
        self.open_events = schedule(settings, [t.id for t in tasks]) if settings.arrival != "closed" else []

    def _on_sample(self, w: Any) -> None:
        limit = self.settings.memory_limit_gb
        if limit and w.rss_anon_kb + (w.rss_file_kb or 0) > limit * 1024**2:  # None: the whole RSS is in anon
            self.over_memory.set()

    def observe(self, retry_if_busy: bool) -> Observation:
        """Raises ``_Busy`` when the machine was busy before the worker and ``retry_if_busy``."""
        s = self.settings
        noise = (0.0, False)
        # One quiet window before the worker serves as the noise check and as the baseline, except
        # under the CPU-bound foreground, whose baseline has the machine busy by design: the noise
        # check then comes first, on its own.
        if s.probe == "cpu":
            noise = noise_guard(s)
            if noise[1] and retry_if_busy:
                raise _Busy
        # Every cgroup of the trial is made before any of its processes starts: on cgroup v2 a cgroup
        # that holds a process cannot hand controllers to its children, so this process first moves
        # into a leaf of its own (cgroups._enable), which a foreground already started beside it in
        # its cgroup would forbid (EBUSY).
        self._make_cgroups()
        try:
            # The foreground starts first: it runs as the user's program would, on any CPU, and under
            # trial.cgroup own in a cgroup of its own at normal weight, as a user's session is.
            wrap = self.fg_cgroup.join if self.fg_cgroup else None
            if s.probe == "interactive":
                self.probe = Probe(s, wrap)
            elif s.probe == "cpu":
                self.load = CpuLoad(s.fg_threads or os.cpu_count() or 1, s.fg_unit_mib, wrap)
            with stay_off(self.config.cpus):
                return self._watch(noise, retry_if_busy)
        finally:
            self._stop_foreground()
            for cgroup in (self.fg_cgroup, self.cgroup):
                if cgroup:
                    cgroup.remove()

    def _make_cgroups(self) -> None:
        """The foreground's cgroup (trial.cgroup own) and the model's (own, or a kernel limit), and
        the topology: own, or shared with the reason where trial.cgroup asked for own."""
        self.cgroup = self.fg_cgroup = None  # a busy machine's retry starts again: the last ones are removed
        why = self._foreground_cgroup()
        limits = limits_of(self.config.to_dict())
        if limits or (self.settings.cgroup == "own" and not why):  # the worker starts in it (TrialCgroup.join)
            try:
                self.cgroup = TrialCgroup.create(limits or NORMAL_WEIGHT)
            except OSError as exc:
                if limits:
                    self.cgroup_problems = [f"its cgroup could not be made ({exc.strerror or exc})"]
                why = f"no cgroup could be made for the model ({exc.strerror or exc})"
        # Own when the model runs in a cgroup of its own; why not, where trial.cgroup asked for it.
        self.topology = ("own", "") if self.cgroup else ("shared", why)

    def _foreground_cgroup(self) -> str:
        """Under trial.cgroup own, make the foreground's cgroup; the reason the trial cannot be
        measured in its own cgroup here, or "" when it can."""
        if self.settings.cgroup != "own":
            return ""
        if is_portable():
            return "the portable measurement path makes no cgroups"
        if self.settings.probe in ("interactive", "cpu"):
            try:
                self.fg_cgroup = TrialCgroup.create(NORMAL_WEIGHT, kind="fg")
            except OSError as exc:
                return f"no cgroup could be made for the foreground ({exc.strerror or exc})"
        return ""

    def _probe_pct(self, ncpu: int) -> float:
        """The light probe's known cost, as % of the machine: its work over its period, on one CPU."""
        s = self.settings
        return 100 * s.probe_work_ms / s.probe_period_ms / ncpu if self.probe else 0.0

    def _judge_baseline(self, series: Series, retry_if_busy: bool) -> tuple[float, bool]:
        """The noise check on the baseline's windows: the whole machine, less the probe's known cost."""
        windows = list(series.windows)
        pct = sum(w.machine_pct for w in windows) / len(windows) - self._probe_pct(series.ncpu) if windows else 0.0
        noise = (max(pct, 0.0), pct > self.settings.noise_max_pct)
        if noise[1] and retry_if_busy:
            raise _Busy
        return noise

    def _job(self) -> dict[str, Any]:
        c = self.config
        job: dict[str, Any] = {"config": c.to_dict(), "idle_seconds": self.settings.idle_seconds,
                               "prompts": [request_for(t, **strategy_of(c)) for t in self.tasks]}
        kinds = {t.kind for t in self.tasks}
        if self.injection_tasks:  # each clean item, then its injected variant
            job["injection"] = [request_for(t, **strategy_of(c)) for t in self.injection_tasks]
            kinds |= {t.kind for t in self.injection_tasks}
        if c.prefix_cache == "shared":
            job["prefixes"] = {k: prefix_probes(k, **strategy_of(c)) for k in sorted(kinds)}
        if self.load:
            job["contended"] = True
        if self.open_events:
            job["open"] = {"events": self.open_events, "seconds": self.settings.arrival_seconds, "cap": QUEUE_CAP,
                           "parallel": self.config.parallel or 1}
        return job

    def _watch(self, noise: tuple[float, bool], retry_if_busy: bool) -> Observation:
        """Spawn the worker and see it through to its end (or kill it), with the monitor running."""
        s = self.settings
        job = self._job()
        monitor = Monitor(s.window_ms / 1000, self._on_sample).start()
        try:  # an interrupt anywhere below must not leave the sampler running
            time.sleep(s.baseline_seconds)
            if not self.load:
                noise = self._judge_baseline(monitor.series, retry_if_busy)
            sweep_dead(tempfile.gettempdir(), "sweep-trial-")  # what killed trials left behind
            with tempfile.TemporaryDirectory(prefix=owned_prefix("sweep-trial-")) as tmp:
                log_path = os.path.join(tmp, "worker.log")
                r, w = os.pipe()
                if self.load:  # the uncontended pass is measured without it; the baseline ends here
                    self.load.pause()
                argv = self.worker_cmd + [str(w)]
                if self.cgroup:
                    argv = self.cgroup.join(argv)
                with open(log_path, "wb") as log:
                    proc = subprocess.Popen(
                        argv, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                        pass_fds=(w,), start_new_session=True,
                        env={**os.environ, **self.config.environment(), "SWEEP_PARENT_PID": str(os.getpid())},
                        cwd=tmp)
                # The baseline ends here: interpreter start-up and imports are the trial's own work.
                spawn_mark = {"type": "phase", "phase": "start", "t": time.monotonic()}
                os.close(w)
                self.pid = proc.pid
                monitor.attach(proc.pid)
                self.stdin = proc.stdin
                self.reader = _Reader(r, self._event)
                self.reader.start()
                with killer(proc):
                    # Written beside the watchdog, not before it: a worker that never reads would
                    # block a job larger than the pipe's buffer, and the orchestrator with it.
                    writer = threading.Thread(target=self._send_job, args=(proc, job), name="sweep-job", daemon=True)
                    writer.start()
                    status, rusage = self._wait(proc)
                    self._stop_foreground()
                    self._close_stdin()
                self.reader.join(timeout=5)
                series = monitor.stop()
                stderr_tail = tail(log_path)
                cgroup_figures = self.cgroup.figures() if self.cgroup else {}
        finally:
            monitor.stop()
        return Observation(
            config=self.config, messages=(spawn_mark, *self.reader.messages),
            protocol_errors=tuple(self.reader.protocol_errors), series=series,
            returncode=os.waitstatus_to_exitcode(status), maxrss_kb=rusage.ru_maxrss if rusage else 0,
            stderr_tail=stderr_tail, started=self.started, ended=time.monotonic(), noise=noise,
            killed_for=self.killed_for, killed_t=self.killed_t,
            probe_samples=tuple(self.probe.samples) if self.probe else None, probe_pct=self._probe_pct(series.ncpu),
            load_samples=tuple(self.load.samples) if self.load else None, cgroup=self.cgroup is not None,
            cgroup_figures=cgroup_figures, cgroup_problems=tuple(self.cgroup_problems),
            injection_tasks=tuple(self.injection_tasks), topology=self.topology, open_events=tuple(self.open_events),
            special_tokens=frozenset(special_token_ids(self.config.model_path)) if self.injection_tasks else frozenset())

    def _send_job(self, proc: subprocess.Popen[bytes], job: dict[str, Any]) -> None:
        try:
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(job).encode() + b"\n")
            proc.stdin.flush()
            if not self.load:
                proc.stdin.close()
        except (BrokenPipeError, ValueError, OSError):
            pass  # the worker died (or was killed) first; its status says why

    def _event(self, msg: dict[str, Any]) -> None:
        if msg["type"] == "server":  # llama-server, the worker's child: inside the trial's cgroup too
            self.server_pid = msg.get("pid")
        if self.cgroup and msg["type"] == "knobs":  # read back while the worker is loaded and inside
            self.cgroup_problems = self.cgroup.check_applied(self.pid, self.server_pid)
        if self.load and msg["type"] == "phase" and msg["phase"] == "contended":
            # The worker waits for "go": resume the user's program, let the units cut by the pause
            # drain, then the contended pass starts with the foreground running.
            self.contended_t = msg["t"]
            self.load.resume()
            time.sleep(0.2)
            self._close_stdin(b"go\n")
        if self.on_event:
            self.on_event(msg)

    def _close_stdin(self, last: bytes = b"") -> None:
        try:
            if self.stdin and not self.stdin.closed:
                self.stdin.write(last)
                self.stdin.close()
        except (BrokenPipeError, ValueError):
            pass  # the worker is gone; its status says why

    def _stop_foreground(self) -> None:
        if self.probe:
            self.probe.stop()
        if self.load:
            self.load.stop()

    def _wait(self, proc: subprocess.Popen[bytes]) -> tuple[int, Any]:
        """The worker's raw wait status and rusage, killing it when a limit says so."""
        s = self.settings
        assert self.reader is not None
        spawned = time.monotonic()
        # From spawn, not from the noise guard; an open-loop phase adds its own length.
        deadline = spawned + s.timeout_seconds + (s.arrival_seconds if self.open_events else 0.0)
        while True:
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                return status, rusage
            now = time.monotonic()
            if self.over_memory.is_set():
                self.killed_for = "memory_budget"
            elif now > deadline:
                self.killed_for = "timeout"
            elif now - max(self.reader.last_message_t, spawned) > s.progress_timeout_seconds:
                self.killed_for = "no_progress"
            elif self.contended_t is not None and now - self.contended_t > s.contended_timeout_seconds:
                self.killed_for = "contended_cut"
            elif self.latency_budget_s and s.early_abort and provably_over(
                    [m["latency_s"] for m in list(self.reader.messages) if m["type"] == "prompt" and not m.get("pass")],
                    len(self.tasks),
                    self.latency_budget_s):
                self.killed_for = "early_abort"
            if self.killed_for:
                self.killed_t = now
                kill_group(proc.pid)
                return reap(proc.pid) or (int(signal.SIGKILL), None)  # a raw wait status
            time.sleep(0.02)
