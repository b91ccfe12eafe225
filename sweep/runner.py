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

from .cgroups import TrialCgroup, limits_of
from .hostlock import measurement_lock
from .knobs import verify as verify_knobs
from .foreground import CpuLoad
from .gguf import special_token_ids
from .metrics import contended_figures, cpu_load_figures, fg_unit_series, injection_figures, major_marks
from .metrics import probe_figures, provably_over
from .metrics import figures as compute_figures
from .monitor import Monitor, Series, noise_guard
from .probe import Probe
from .procs import kill_group, killer, owned_prefix, reap, signal_name, stay_off, sweep_dead, tail
from .prompts import answer_text, prefix_probes, request_for, strategy_of
from .protocol import problem
from .server import figures as server_figures
from .server import verify as verify_server_knobs
from .records import Outcome, TrialConfig, TrialSettings
from .tasks import Task, injection_pairs, score_answers

WORKER_CMD = [sys.executable, "-m", "sweep.worker"]
SERVER_WORKER_CMD = [sys.executable, "-m", "sweep.server_worker"]  # the server backend (sweep.server)


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


def _series_dict(series: Series, tags: list[str], events: list[dict[str, Any]],
                 fg: tuple[str, list[tuple[float, ...]]] | None = None) -> dict[str, Any]:
    # The marks say when each major phase began, on the windows' clock. A phase shorter than a
    # window (SmolLM2 loads in ~0.1 s) has no window of its own, but always has its mark.
    out = {
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
    if fg and series.windows:  # the foreground's time per unit, window by window
        out["fg_kind"] = fg[0]
        out["fg_unit_ms"] = fg_unit_series(fg[1], [w.t1 for w in series.windows], series.windows[0].t0)
    return out


def run_trial(config: TrialConfig, settings: TrialSettings, tasks: list[Task],
              worker_cmd: list[str] | None = None, latency_budget_s: float | None = None,
              on_event: Callable[[dict[str, Any]], None] | None = None, lock: bool = True,
              on_wait: Callable[[str], None] | None = None) -> Outcome:
    """Run one configuration in a fresh worker and measure it. Never raises for a worker fault.

    With ``latency_budget_s`` and ``settings.early_abort``, the trial stops as soon as
    its latency p95 is provably over that budget; the outcome is then complete, with
    the figures of the prompts answered so far (``early_abort`` = 1).

    A trial during whose answers other programs kept the machine busier than the noise
    guard allows is flagged (``machine_busy_active``); with ``busy_trials: repeat`` it is
    measured again, up to ``noise_retries`` times, and the last measurement is kept.

    The host's measurement lock is held from the noise guard until the worker is reaped
    (``lock=False`` measures without it); ``on_wait`` is told whom it waits for.
    """
    with measurement_lock(f"a trial of {config.model}:{config.quant}", on_wait=on_wait, enabled=lock):
        for attempt in range(settings.noise_retries + 1):
            outcome = _Measurement(config, settings, tasks, worker_cmd, latency_budget_s, on_event).run()
            if not (settings.busy_trials == "repeat" and outcome.figures.get("machine_busy_active")):
                break
            if attempt < settings.noise_retries:
                time.sleep(settings.noise_wait_seconds)
        outcome.figures["busy_repeats"] = float(attempt)
        return outcome


class _Busy(Exception):
    """The baseline window found the machine busy: wait, and measure again."""


class _Measurement:
    """One measured run of a worker: the noise guard, the probe, the monitor, the worker's life
    under its deadlines, and the outcome read from what was seen."""

    def __init__(self, config: TrialConfig, settings: TrialSettings, tasks: list[Task],
                 worker_cmd: list[str] | None, latency_budget_s: float | None,
                 on_event: Callable[[dict[str, Any]], None] | None) -> None:
        self.config, self.settings, self.tasks = config, settings, tasks
        self.worker_cmd = worker_cmd or (SERVER_WORKER_CMD if config.backend == "server" else WORKER_CMD)
        self.latency_budget_s, self.on_event = latency_budget_s, on_event
        self.started = time.monotonic()
        self.over_memory = threading.Event()
        self.killed_for: str | None = None
        self.killed_t: float | None = None
        self.contended_t: float | None = None  # when the worker began its contended pass
        self.probe: Probe | None = None
        self.load: CpuLoad | None = None
        self.stdin: Any = None
        self.cgroup: TrialCgroup | None = None
        self.cgroup_problems: list[str] = []
        self.cgroup_figures: dict[str, float] = {}
        self.pid: int | None = None
        self.server_pid: int | None = None
        self.noise: tuple[float, bool] = (0.0, False)
        self.injection_tasks = [t for pair in injection_pairs(settings.injection_items) for t in pair] \
            if settings.injection_items else []

    def _on_sample(self, w: Any) -> None:
        limit = self.settings.memory_limit_gb
        if limit and w.rss_anon_kb + w.rss_file_kb > limit * 1024**2:
            self.over_memory.set()

    def run(self) -> Outcome:
        s = self.settings
        # One quiet window before the worker serves as the noise check and as the baseline, except
        # under the CPU-bound foreground, whose baseline has the machine busy by design: the noise
        # check then comes first, on its own.
        if s.probe == "cpu":
            self.noise = noise_guard(s)
        for attempt in range(s.noise_retries + 1):
            # The foreground starts first: it runs as the user's program would, on any CPU.
            if s.probe == "interactive":
                self.probe = Probe(s)
            elif s.probe == "cpu":
                self.load = CpuLoad(s.fg_threads or os.cpu_count() or 1, s.fg_unit_mib)
            try:
                with stay_off(self.config.cpus):
                    self._watch(retry_if_busy=attempt < s.noise_retries)
                break
            except _Busy:
                time.sleep(s.noise_wait_seconds)
            finally:
                self._stop_foreground()
        return self._outcome(self._figures())

    def _probe_pct(self, ncpu: int) -> float:
        """The light probe's known cost, as % of the machine: its work over its period, on one CPU."""
        s = self.settings
        return 100 * s.probe_work_ms / s.probe_period_ms / ncpu if self.probe else 0.0

    def _judge_baseline(self, series: Series, retry_if_busy: bool) -> None:
        """The noise check on the baseline's windows: the whole machine, less the probe's known cost."""
        windows = list(series.windows)
        pct = sum(w.machine_pct for w in windows) / len(windows) - self._probe_pct(series.ncpu) if windows else 0.0
        self.noise = (max(pct, 0.0), pct > self.settings.noise_max_pct)
        if self.noise[1] and retry_if_busy:
            raise _Busy

    def _watch(self, retry_if_busy: bool) -> None:
        """Spawn the worker and see it through to its end (or kill it), with the monitor running."""
        s = self.settings
        c = self.config
        job: dict[str, Any] = {"config": c.to_dict(), "idle_seconds": s.idle_seconds,
                               "prompts": [request_for(t, **strategy_of(c)) for t in self.tasks]}
        kinds = {t.kind for t in self.tasks}
        if s.injection_items:  # each clean item, then its injected variant
            job["injection"] = [request_for(t, **strategy_of(c)) for t in self.injection_tasks]
            kinds |= {t.kind for t in self.injection_tasks}
        if c.prefix_cache == "shared":
            job["prefixes"] = {k: prefix_probes(k, **strategy_of(c)) for k in sorted(kinds)}
        if self.load:
            job["contended"] = True
        monitor = Monitor(s.window_ms / 1000, self._on_sample).start()
        try:  # an interrupt anywhere below must not leave the sampler running
            time.sleep(s.baseline_seconds)
            if not self.load:
                self._judge_baseline(monitor.series, retry_if_busy)
            limits = limits_of(c.to_dict())
            if limits:  # made before the spawn: the worker starts inside it (TrialCgroup.join)
                try:
                    self.cgroup = TrialCgroup.create(limits)
                except OSError as exc:
                    self.cgroup_problems = [f"its cgroup could not be made ({exc.strerror or exc})"]
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
                self.spawn_mark = {"type": "phase", "phase": "start", "t": time.monotonic()}
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
                    status, self.rusage = self._wait(proc)
                    self._stop_foreground()
                    self._close_stdin()
                self.returncode = os.waitstatus_to_exitcode(status)
                self.reader.join(timeout=5)
                self.series = monitor.stop()
                self.stderr_tail = tail(log_path)
                if self.cgroup:
                    self.cgroup_figures = self.cgroup.figures()
        finally:
            monitor.stop()
            if self.cgroup:
                self.cgroup.remove()

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
            self.cgroup_problems = self.cgroup.verify(self.pid, self.server_pid)
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
        spawned = time.monotonic()
        deadline = spawned + s.timeout_seconds  # from spawn, not from the noise guard
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

    def _figures(self) -> dict[str, float]:
        s = self.settings
        self.messages = [self.spawn_mark, *self.reader.messages]
        cut_t = self.killed_t if self.killed_for == "contended_cut" else None
        if cut_t is not None:  # the pass ends where it was cut
            self.messages.append({"type": "phase", "phase": "done", "t": cut_t})
        self.prompts = [m for m in self.messages if m["type"] == "prompt" and not m.get("pass")]
        self.contended = [m for m in self.messages if m["type"] == "prompt" and m.get("pass") == "contended"]
        self.injected = [m for m in self.messages if m["type"] == "prompt" and m.get("pass") == "injection"]
        figs, self.tags = compute_figures(self.series, self.messages, self.prompts,
                                          self.rusage.ru_maxrss if self.rusage else 0)
        if self.probe:
            figs.update(probe_figures(self.probe.samples, self.messages))
        if self.load:
            figs.update(cpu_load_figures(self.load.samples, self.messages, self.series.ncpu))
            figs.update(contended_figures(self.contended, self.prompts, self.messages, cut_t))
        figs["noise_check_pct"], figs["machine_busy"] = self.noise[0], float(self.noise[1])
        # What the trial costs before and around its answers (bench/trial_overhead.py).
        figs["pre_trial_s"] = self.spawn_mark["t"] - self.started
        imported = next((m["t"] for m in self.messages if m["type"] == "phase" and m["phase"] == "imported"), None)
        if imported is not None:
            figs["spawn_import_s"] = imported - self.spawn_mark["t"]
            ready = major_marks(self.messages).get("idle")
            if ready is not None:
                figs["model_load_s"] = ready - imported
        figs.update(server_figures(self.prompts))  # llama-server's own rates; none for the python backend
        # Others' load while the model answered: the whole machine, less the LLM, less the probe's
        # known cost (the CPU-bound foreground is paused in this pass).
        if "system_cpu_active_mean_pct" in figs and "cpu_active_mean_share_pct" in figs:
            other = figs["system_cpu_active_mean_pct"] - figs["cpu_active_mean_share_pct"] - self._probe_pct(self.series.ncpu)
            figs["other_cpu_active_pct"] = max(other, 0.0)
            figs["machine_busy_active"] = float(other > s.noise_max_pct)
        if self.load and "fg_cpu_share_pct" in figs:
            # Under the CPU-bound foreground: others' CPU is what the LLM and the foreground leave,
            # and a baseline in which the foreground did not have the machine is disturbed.
            ncpu = self.series.ncpu
            windows = [w for w, t in zip(self.series.windows, self.tags) if t == "contended"]
            if windows:
                llm = sum(w.core_pct for w in windows) / len(windows) / ncpu
                system = sum(w.machine_pct for w in windows) / len(windows)
                figs["other_cpu_contended_pct"] = max(system - llm - figs["fg_cpu_share_pct"], 0.0)
            disturbed = figs.get("other_cpu_contended_pct", 0.0) > s.noise_max_pct or \
                figs["fg_cpu_baseline_share_pct"] < 100 - s.noise_max_pct
            figs["machine_busy_active"] = max(figs.get("machine_busy_active", 0.0), float(disturbed))
        if self.cgroup:
            figs.update(self.cgroup_figures)
        if self.config.memory_max_gb is not None:
            figs["memory_limit_sampled"] = 0.0  # the kernel keeps the ceiling, and counts its kills
        elif s.memory_limit_gb:
            figs["memory_limit_sampled"] = 1.0  # no cgroup: the limit is enforced by sampling, then checked
        return figs

    def _outcome(self, figs: dict[str, float]) -> Outcome:
        s, tasks, prompts = self.settings, self.tasks, self.prompts
        knob_msg = next((m for m in self.messages if m["type"] == "knobs"), {})
        knobs = knob_msg.get("threads", [])
        fg = ("interactive", self.probe.samples) if self.probe else ("cpu", self.load.samples) if self.load else None
        common = dict(stderr_tail=self.stderr_tail, series=_series_dict(self.series, self.tags, self.messages, fg),
                      knobs={"threads": knobs, "autogroup": knob_msg.get("autogroup")}, wall_seconds=time.monotonic() - self.started)

        def failed(reason: str, detail: str) -> Outcome:
            return Outcome(ok=False, reason=reason, detail=detail, figures=figs, **common)

        errors = [m for m in self.messages if m["type"] == "error"]
        rc, killed_for = self.returncode, self.killed_for
        if killed_for == "timeout":
            return failed("timeout", f"no result within {s.timeout_seconds:g} s")
        if killed_for == "no_progress":
            return failed("timeout", f"no progress for {s.progress_timeout_seconds:g} s")
        if figs.get("cg_oom_kills"):
            return failed("memory_budget", f"the cgroup's OOM killer ended {figs['cg_oom_kills']:g} process(es) of "
                                           f"the trial at memory_max_gb {self.config.memory_max_gb:g} (the kernel's count)")
        if killed_for == "memory_budget":
            return failed("memory_budget", f"RSS went over {s.memory_limit_gb:g} GB")
        if s.memory_limit_gb and figs.get("rss_peak_gb", 0.0) > s.memory_limit_gb:
            # The live limit is sampled once a window; the kernel's high-water mark sees what fell between.
            return failed("memory_budget", f"peak RSS {figs['rss_peak_gb']:.2f} GB (the kernel's high-water mark) "
                                           f"went over {s.memory_limit_gb:g} GB between two samples")
        if errors:
            return failed(errors[0]["reason"], errors[0].get("detail", ""))
        aborted = killed_for == "early_abort"
        cut = killed_for == "contended_cut"  # the first pass is whole; the second was cut at its deadline
        if rc < 0 and not (aborted or cut):
            return failed("crashed", f"worker killed by {signal_name(-rc)}")
        if rc > 0 and not aborted:
            return failed("crashed", f"worker exited with status {rc}")
        if not aborted and (not (cut or any(m["type"] == "result" for m in self.messages)) or len(prompts) != len(tasks)):
            detail = "; ".join(self.reader.protocol_errors[:3]) or f"result missing ({len(prompts)}/{len(tasks)} answers)"
            return failed("protocol", detail)
        check = verify_server_knobs if self.config.backend == "server" else verify_knobs
        problems = check(self.config.to_dict(), knobs, knob_msg.get("autogroup"))  # an aborted worker read none back
        problems += self.cgroup_problems
        if self.cgroup and not knob_msg and not aborted:
            problems.append("the cgroup was never read back (the worker sent no knobs)")
        if problems:
            return failed("knob_not_applied", "; ".join(problems[:4]))
        if aborted:
            figs["early_abort"] = 1.0
            figs["n_answered"] = len(prompts)
            tasks = tasks[: len(prompts)]
        raw = [p["answer"] for p in prompts]
        answers, by_kind, correctness = score_answers(tasks, raw, [answer_text(a, self.config.output) for a in raw],
                                                      [p["latency_s"] for p in prompts])
        for a, p in zip(answers, prompts):  # llama.cpp's own counts: the whole prompt, and what it prefilled of it
            a["prompt_tokens"], a["prefill_tokens"] = p.get("prompt_tokens"), p.get("prefill_tokens")
            if p.get("server"):
                a["server_timings"] = p["server"]
        for p in self.contended:
            if p["index"] < len(answers):
                answers[p["index"]]["latency_contended_s"] = p["latency_s"]
        figs["correctness"] = correctness
        figs["parse_failures"] = sum(not a["parsed"] for a in answers)
        if self.injection_tasks:
            if len(self.injected) != len(self.injection_tasks):
                return failed("protocol", f"injection answers missing ({len(self.injected)}/{len(self.injection_tasks)})")
            records = self._injection_records()
            figs.update(injection_figures([(r["clean"], r["injected"]) for r in records]))
            common["series"]["injection"] = records
        return Outcome(ok=True, figures=figs, by_kind=by_kind, answers=answers, **common)

    def _injection_records(self) -> list[dict[str, Any]]:
        """Each injected item beside its clean original: the readable answers, and how many special
        tokens each prompt held (counted with the model's own token types)."""
        special = special_token_ids(self.config.model_path)
        out = []
        for k in range(0, len(self.injected), 2):
            pair = []
            for task, p in zip(self.injection_tasks[k:k + 2], self.injected[k:k + 2]):
                pair.append({"id": task.id, "answer": answer_text(p["answer"], self.config.output) or "",
                             "special_tokens": sum(t in special for t in p.get("tokens", []))})
            out.append({"attack": self.injection_tasks[k + 1].attack, "clean": pair[0], "injected": pair[1]})
        return out
