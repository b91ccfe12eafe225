"""A trial's outcome from what was seen of it: pure functions over a frozen ``Observation``.

The runner watches a worker and returns an ``Observation``: its messages, the monitor's series,
its exit, why it was killed, the foreground's samples, the cgroup's counters. Everything a trial
records is then computed here, without a process, a clock or a model:

- ``figures(obs, settings)``: every figure, and each window's phase;
- ``classify(obs, figures, settings, n_tasks)``: why the trial failed, or None;
- ``score(obs, tasks, figures)``: the answers scored, and the injected pairs compared;
- ``outcome_of(obs, settings, tasks)``: the three together, as the ``Outcome`` the study records.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from sweep.correctness.prompts import answer_text
from sweep.correctness.guard import ioc_evidence, judge, layers
from sweep.correctness.tasks import Task, injection_group, reported, score_answers
from sweep.measure.metrics import (
    contended_figures,
    cpu_load_figures,
    fg_unit_series,
    injection_figures,
    major_marks,
    probe_figures,
    score_interval,
    series_figures,
)
from sweep.measure.monitor import Series
from sweep.measure.open_load import open_figures
from sweep.procs import signal_name
from sweep.records import Outcome, TrialConfig, TrialSettings
from sweep.trial import knobs, server


@dataclass(frozen=True)
class Observation:
    """What was seen of one run of a worker, before any figure is computed."""

    config: TrialConfig
    messages: tuple[dict[str, Any], ...]  # the spawn mark first, then the worker's valid messages
    protocol_errors: tuple[str, ...]
    series: Series
    returncode: int
    maxrss_kb: int  # the kernel's high-water mark of the worker (rusage)
    stderr_tail: str
    started: float  # monotonic, when the trial's measurement began (the noise guard)
    ended: float  # monotonic, when the worker had been reaped
    noise: tuple[float, bool] = (0.0, False)  # the noise check's busy %, and whether it was over
    killed_for: str | None = None  # timeout, no_progress, memory_budget, contended_cut, early_abort
    killed_t: float | None = None
    probe_samples: tuple[tuple[float, float], ...] | None = None  # the interactive probe's
    probe_pct: float = 0.0  # the probe's known cost, % of the machine
    load_samples: tuple[tuple[float, float, float, int], ...] | None = None  # the CPU-bound foreground's
    cgroup: bool = False  # the trial ran in a cgroup of its own
    cgroup_figures: dict[str, float] = field(default_factory=dict)
    cgroup_problems: tuple[str, ...] = ()
    injection_tasks: tuple[Task, ...] = ()  # each clean item, then its injected variant
    special_tokens: frozenset[int] = frozenset()  # the model's special token ids (under injection items)
    open_events: tuple[tuple[float, int], ...] = ()  # the open-loop phase's schedule (sweep.trial.arrivals)
    topology: tuple[str, str] = ("shared", "")  # own or shared cgroups (trial.cgroup), and why shared if asked own

    @property
    def spawn_t(self) -> float:
        return float(self.messages[0]["t"])

    def events(self) -> list[dict[str, Any]]:
        """The messages, with the contended pass closed where it was cut."""
        out = list(self.messages)
        if self.killed_for == "contended_cut" and self.killed_t is not None:
            out.append({"type": "phase", "phase": "done", "t": self.killed_t})
        return out

    def prompts(self, passname: str | None = None) -> list[dict[str, Any]]:
        """The answers of one pass: the measured one (None), ``contended`` or ``injection``."""
        return [m for m in self.messages if m["type"] == "prompt" and m.get("pass") == passname]

    def knobs(self) -> dict[str, Any]:
        return next((m for m in self.messages if m["type"] == "knobs"), {})


def figures(obs: Observation, settings: TrialSettings) -> tuple[dict[str, float], list[str]]:
    """Every figure of the trial, and each window's phase tag."""
    s = settings
    events, prompts = obs.events(), obs.prompts()
    cut_t = obs.killed_t if obs.killed_for == "contended_cut" else None
    figs, tags = series_figures(obs.series, events, prompts, obs.maxrss_kb)
    if obs.probe_samples is not None:
        figs.update(probe_figures(list(obs.probe_samples), events))
    if obs.load_samples is not None:
        figs.update(cpu_load_figures(list(obs.load_samples), events, obs.series.ncpu))
        figs.update(contended_figures(obs.prompts("contended"), prompts, events, cut_t))
    figs["noise_check_pct"], figs["machine_busy"] = obs.noise[0], float(obs.noise[1])
    # What the trial costs before and around its answers (bench/trial_overhead.py).
    figs["pre_trial_s"] = obs.spawn_t - obs.started
    imported = next((m["t"] for m in events if m["type"] == "phase" and m["phase"] == "imported"), None)
    if imported is not None:
        figs["spawn_import_s"] = imported - obs.spawn_t
        ready = major_marks(events).get("idle")
        if ready is not None:
            figs["model_load_s"] = ready - imported
    figs.update(server.rate_figures(prompts))  # llama-server's own rates; none for the python backend
    # Others' load while the model answered: the whole machine, less the LLM, less the probe's
    # known cost (the CPU-bound foreground is paused in this pass).
    if "system_cpu_active_mean_pct" in figs and "cpu_active_mean_share_pct" in figs:
        other = figs["system_cpu_active_mean_pct"] - figs["cpu_active_mean_share_pct"] - obs.probe_pct
        figs["other_cpu_active_pct"] = max(other, 0.0)
        figs["machine_busy_active"] = float(other > s.noise_max_pct)
    if obs.load_samples is not None and "fg_cpu_share_pct" in figs:
        # Under the CPU-bound foreground: others' CPU is what the LLM and the foreground leave,
        # and a baseline in which the foreground did not have the machine is disturbed.
        ncpu = obs.series.ncpu
        windows = [w for w, t in zip(obs.series.windows, tags) if t == "contended"]
        if windows:
            llm = sum(w.core_pct for w in windows) / len(windows) / ncpu
            system = sum(w.machine_pct for w in windows) / len(windows)
            figs["other_cpu_contended_pct"] = max(system - llm - figs["fg_cpu_share_pct"], 0.0)
        disturbed = figs.get("other_cpu_contended_pct", 0.0) > s.noise_max_pct or \
            figs["fg_cpu_baseline_share_pct"] < 100 - s.noise_max_pct
        figs["machine_busy_active"] = max(figs.get("machine_busy_active", 0.0), float(disturbed))
    if obs.open_events:
        figs.update(_open(obs, settings, events, tags))
    if obs.cgroup:
        figs.update(obs.cgroup_figures)
    figs["cgroup_own"] = float(obs.topology[0] == "own")
    if obs.config.memory_max_gb is not None:
        figs["memory_limit_sampled"] = 0.0  # the kernel keeps the ceiling, and counts its kills
    elif s.memory_limit_gb:
        figs["memory_limit_sampled"] = 1.0  # no cgroup: the limit is enforced by sampling, then checked
    return figs, tags


def _open(obs: Observation, settings: TrialSettings, events: list[dict[str, Any]], tags: list[str]) -> dict[str, float]:
    """The open-loop phase's figures (``sweep.measure.open_load``), where the phase began."""
    marks = major_marks(events)
    if "open" not in marks:
        return {}
    end = min((t for t in marks.values() if t > marks["open"]), default=obs.ended)
    windows = [w for w, t in zip(obs.series.windows, tags) if t == "open"]
    probe = list(obs.probe_samples or [])
    base = [lat for t, lat in probe if t + lat < marks.get("start", marks.get("load", -math.inf))]
    return open_figures(list(obs.open_events), obs.prompts("open"), marks["open"], end, settings.arrival_seconds,
                        windows, obs.series.ncpu, probe, base)


def classify(obs: Observation, figs: dict[str, float], settings: TrialSettings,
             n_tasks: int) -> tuple[str, str] | None:
    """Why the trial failed, as (reason, detail), or None. An early abort or a cut contended pass is
    not a failure."""
    s = settings
    killed_for, rc = obs.killed_for, obs.returncode
    if killed_for == "timeout":
        return "timeout", f"no result within {s.timeout_seconds:g} s"
    if killed_for == "no_progress":
        return "timeout", f"no progress for {s.progress_timeout_seconds:g} s"
    if figs.get("cg_oom_kills"):
        return "memory_budget", (f"the cgroup's OOM killer ended {figs['cg_oom_kills']:g} process(es) of the trial "
                                 f"at memory_max_gb {obs.config.memory_max_gb:g} (the kernel's count)")
    if killed_for == "memory_budget":
        return "memory_budget", f"RSS went over {s.memory_limit_gb:g} GB"
    if s.memory_limit_gb and figs.get("rss_peak_gb", 0.0) > s.memory_limit_gb:
        # The live limit is sampled once a window; the kernel's high-water mark sees what fell between.
        return "memory_budget", (f"peak RSS {figs['rss_peak_gb']:.2f} GB (the kernel's high-water mark) went over "
                                 f"{s.memory_limit_gb:g} GB between two samples")
    errors = [m for m in obs.messages if m["type"] == "error"]
    if errors:
        return errors[0]["reason"], errors[0].get("detail", "")
    aborted = killed_for == "early_abort"
    cut = killed_for == "contended_cut"  # the first pass is whole; the second was cut at its deadline
    if rc < 0 and not (aborted or cut):
        return "crashed", f"worker killed by {signal_name(-rc)}"
    if rc > 0 and not aborted:
        return "crashed", f"worker exited with status {rc}"
    prompts = obs.prompts()
    if not aborted and (not (cut or any(m["type"] == "result" for m in obs.messages)) or len(prompts) != n_tasks):
        return "protocol", "; ".join(obs.protocol_errors[:3]) or f"result missing ({len(prompts)}/{n_tasks} answers)"
    knob_msg = obs.knobs()
    check = server.check_applied if obs.config.backend == "server" else knobs.check_applied
    problems = check(obs.config.to_dict(), knob_msg.get("threads", []), knob_msg.get("autogroup"))
    problems += list(obs.cgroup_problems)  # an aborted worker read none back
    if obs.cgroup and not knob_msg and not aborted:
        problems.append("the cgroup was never read back (the worker sent no knobs)")
    if problems:
        return "knob_not_applied", "; ".join(problems[:4])
    if obs.injection_tasks and len(obs.prompts("injection")) != len(obs.injection_tasks):
        return "protocol", f"injection answers missing ({len(obs.prompts('injection'))}/{len(obs.injection_tasks)})"
    return None


def score(obs: Observation, tasks: list[Task], figs: dict[str, float]) -> tuple[list[dict[str, Any]],
                                                                               dict[str, float],
                                                                               list[dict[str, Any]]]:
    """The answers scored (adds ``correctness``, ``parse_failures`` and the injection figures to
    ``figs``): (answers, correctness by kind, injection records)."""
    prompts = obs.prompts()
    if obs.killed_for == "early_abort":
        figs["early_abort"] = 1.0
        figs["n_answered"] = len(prompts)
        tasks = tasks[: len(prompts)]
    raw = [p["answer"] for p in prompts]
    judged = [guarded(task, p, obs.config) for task, p in zip(tasks, prompts)]
    answers, by_kind, correctness = score_answers(tasks, raw, [text for text, _ in judged],
                                                  [p["latency_s"] for p in prompts])
    for a, (_, evidence) in zip(answers, judged):  # what each layer outside the model said
        if evidence:
            a["guard"] = evidence
    for a, p in zip(answers, prompts):  # llama.cpp's own counts: the whole prompt, and what it prefilled of it
        a["prompt_tokens"], a["prefill_tokens"] = p.get("prompt_tokens"), p.get("prefill_tokens")
        if p.get("server"):
            a["server_timings"] = p["server"]
    for p in obs.prompts("contended"):
        if p["index"] < len(answers):
            answers[p["index"]]["latency_contended_s"] = p["latency_s"]
    figs["correctness"] = correctness
    figs["correctness_n"] = float(len(answers))
    figs["correctness_ci_low"], figs["correctness_ci_high"] = score_interval([float(a["score"]) for a in answers])  # type: ignore[arg-type]
    figs["parse_failures"] = sum(not a["parsed"] for a in answers)
    records = injection_records(obs) if obs.injection_tasks else []
    if records:
        figs.update(injection_figures(records))
    return answers, by_kind, records


def guarded(task: Task, prompt: dict[str, Any], config: TrialConfig) -> tuple[str | None, dict[str, Any]]:
    """The answer the scorers read, after the guard's layers outside the model (``sweep.correctness.guard``),
    and what each layer said; the readable answer unchanged under a guard without layers."""
    text = answer_text(prompt["answer"], config.output)
    view = prompt.get("view_answer")
    return judge(task.kind, task.input, text, None if view is None else answer_text(view, config.output),
                 config.input_guard, ioc_evidence(task.input))


def injection_records(obs: Observation) -> list[dict[str, Any]]:
    """Each injected item beside its clean original: the readable answers, and how many special
    tokens each prompt held (counted with the model's own token types)."""
    special = obs.special_tokens
    injected, tasks = obs.prompts("injection"), obs.injection_tasks
    out = []
    for k in range(0, len(injected), 2):
        pair = []
        hidden = tasks[k + 1].hides
        for task, p in zip(tasks[k:k + 2], injected[k:k + 2]):
            text, evidence = guarded(task, p, obs.config)
            one: dict[str, Any] = {"id": task.id, "answer": text or "",
                                   "special_tokens": sum(t in special for t in p.get("tokens", []))}
            if hidden is not None:  # an IOC item: does the answer still name what the attacker hid?
                one["reports_hidden"] = reported(task, text, hidden)
            if evidence:
                one["guard"] = evidence
            if "detect" in layers(obs.config.input_guard):
                one["detected"] = bool(evidence.get("injection"))
            pair.append(one)
        out.append({"attack": tasks[k + 1].attack, "group": injection_group(tasks[k + 1].attack),
                    "kind": tasks[k + 1].kind, "hides": hidden, "clean": pair[0], "injected": pair[1]})
    return out


def series_record(obs: Observation, tags: list[str]) -> dict[str, Any]:
    """The stored series: the monitor's windows with their phase, the major marks and, under a
    foreground, its time per unit window by window."""
    # The marks say when each major phase began, on the windows' clock. A phase shorter than a
    # window (SmolLM2 loads in ~0.1 s) has no window of its own, but always has its mark.
    series = obs.series
    out: dict[str, Any] = {
        "marks": {name: round(t, 4) for name, t in major_marks(obs.events()).items()},
        "window_s": series.window_s,
        "ncpu": series.ncpu,
        "platform": series.platform,
        "t": [round(w.t1, 4) for w in series.windows],
        "dt": [round(w.t1 - w.t0, 4) for w in series.windows],
        "tree_core_pct": [round(w.core_pct, 2) for w in series.windows],
        "system_pct": [round(w.machine_pct, 2) for w in series.windows],
        "rss_anon_mb": [round(w.rss_anon_kb / 1024, 1) for w in series.windows],
        "phase": tags,
        "cgroup": {"topology": obs.topology[0], **({"why": obs.topology[1]} if obs.topology[1] else {})},
    }
    if obs.open_events and series.windows:  # each event of the open-loop phase, on the windows' clock
        marks = major_marks(obs.events())
        done = {p["event"]: p for p in obs.prompts("open")}
        out["open"] = [{"arrival": round(marks.get("open", 0.0) + t, 4), "item": i,
                        **({"start": round(done[k]["start"], 4), "end": round(done[k]["start"] + done[k]["latency_s"], 4)}
                           if k in done else {})}
                       for k, (t, i) in enumerate(obs.open_events) if "open" in marks]
    fg = ("interactive", obs.probe_samples) if obs.probe_samples is not None else \
        ("cpu", obs.load_samples) if obs.load_samples is not None else None
    if fg and series.windows:  # the foreground's time per unit, window by window
        out["fg_kind"] = fg[0]
        out["fg_unit_ms"] = fg_unit_series(list(fg[1]), [w.t1 for w in series.windows], series.windows[0].t0)
    return out


def outcome_of(obs: Observation, settings: TrialSettings, tasks: list[Task]) -> Outcome:
    """The trial's ``Outcome``: its figures, and its failure or its scored answers."""
    figs, tags = figures(obs, settings)
    knob_msg = obs.knobs()
    common: dict[str, Any] = dict(
        stderr_tail=obs.stderr_tail, series=series_record(obs, tags),
        knobs={"threads": knob_msg.get("threads", []), "autogroup": knob_msg.get("autogroup")},
        wall_seconds=obs.ended - obs.started)
    failure = classify(obs, figs, settings, len(tasks))
    if failure:
        return Outcome(ok=False, reason=failure[0], detail=failure[1], figures=figs, **common)
    answers, by_kind, records = score(obs, tasks, figs)
    if records:
        common["series"]["injection"] = records
    return Outcome(ok=True, figures=figs, by_kind=by_kind, answers=answers, **common)
