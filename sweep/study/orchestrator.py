"""The orchestrator: asks the study for configurations, measures them one at a time, records them.

Several orchestrators may share a study, on one host or on many (PostgreSQL). Each
step takes the host's measurement lock, fails trials whose orchestrator is lost,
counts, asks and measures; recording follows once the worker is reaped.

Counting rule: ``n_trials`` is the number of *finished* trials (complete or failed)
the study should hold when the sweep ends. Trials in flight elsewhere count towards
it, so several orchestrators together stop at exactly that number. Running the same
command again after an interruption carries on to it.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator

from sweep import _optuna
from sweep.correctness.tasks import TASK_SET_VERSION, Task, stratified_subset
from sweep.errors import WorkFailed
from sweep.hostlock import LockWaitStopped, measurement_lock
from sweep.measure.metrics import METRICS
from sweep.records import Outcome, Progress, StudyMeta
from sweep.study import promotion
from sweep.study.fleet import DatabaseWatch, Heartbeat, Owner, others_running, reap_lost
from sweep.study.space import Space
from sweep.study.spool import replay, with_retries
from sweep.study.storage import SeriesStore, study_lock
from sweep.study.writer import finished_count, make_sampler, measured_before, open_or_create, record, reuse
from sweep.trial.runner import run_trial

_WAIT_S = 1.0  # how often a waiting orchestrator looks again at trials in flight elsewhere


def _test_barrier() -> None:
    """A test hook: ``SWEEP_TEST_BARRIER=PATH`` holds each orchestrator here, its trial asked and its
    configuration drawn, until PATH exists, so that two look at each other at the same moment."""
    path = os.environ.get("SWEEP_TEST_BARRIER")
    while path and not os.path.exists(path):
        time.sleep(0.05)


class StopOnInterrupt:
    """First Ctrl-C or SIGTERM: finish the trial in flight, record it, stop. A second signal, or
    SIGHUP (the terminal is gone): abort the trial, which is recorded as ``interrupted``.

    Inside ``shield()`` (while a trial is being recorded) an abort waits until the block ends,
    so a trial is never left half-recorded.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}
        self._shielded = 0
        self._pending = False

    def __enter__(self) -> StopOnInterrupt:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested or signum == signal.SIGHUP:
            self.requested = True
            if self._shielded:
                self._pending = True
                return
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping after the trial in flight (Ctrl-C again to abort it)", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def shield(self) -> Iterator[None]:
        self._shielded += 1
        try:
            yield
        finally:
            self._shielded -= 1
        if self._pending and not self._shielded:
            self._pending = False
            raise KeyboardInterrupt

    def __exit__(self, *exc: Any) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


@dataclass
class SweepResult:
    study: Any
    stopped_by_user: bool
    measured: int = 0  # trials this run measured (not reused)
    failed: list[str] | None = None  # the failure reason of each of them that failed

    def check(self) -> None:
        """Raises WorkFailed when every trial this run measured failed (exit 3), naming the reasons."""
        if self.measured and len(self.failed or []) == self.measured:
            from collections import Counter

            reasons = ", ".join(f"{r} x{n}" for r, n in Counter(self.failed).most_common())
            raise WorkFailed(f"every trial this run measured failed ({reasons}); `sweep show N --study "
                             f"{self.study.study_name}` says why")


@dataclass(frozen=True)
class RunOptions:
    """One ``sweep run``: where the study is, how many trials it should hold, for how long, on what."""

    storage_url: str
    study: str
    n_trials: int  # finished trials (complete or failed) the study should hold at the end
    tasks: list[Task]
    task_set: str = TASK_SET_VERSION  # the name the tasks are recorded under
    timeout_s: float | None = None  # checked between trials: the trial in flight always finishes
    lock: bool = True  # take the host's measurement lock (False: ``--no-lock``; each trial says so)
    hardware_class: str | None = None  # join a study of another hardware class under this, its name


def run_study(space: Space, opts: RunOptions, on_progress: Callable[[Progress], None] | None = None) -> SweepResult:
    """Run trials until the study holds ``opts.n_trials`` finished trials or ``opts.timeout_s`` passes.

    A first Ctrl-C or SIGTERM stops after the trial in flight; a second (or SIGHUP) aborts it,
    records it as failed with reason ``interrupted`` and raises KeyboardInterrupt.

    Raises:
        StudyError: the study cannot be continued by this space or on this host.
    """
    study = None

    def say(line: str) -> None:
        if on_progress:
            on_progress(Progress(0, opts.n_trials, None, None, None, False, 0.0, study=study, waiting=line))

    # A server down or restarting at the start is waited out like one that goes away later.
    study, series, index = with_retries(
        lambda: open_or_create(space, opts.storage_url, opts.study, opts.task_set, opts.hardware_class),
        lambda s: f"database unreachable since {s:.0f} s, retrying (nothing has been measured yet)", say)
    # What an earlier run measured but could not record (the database was away, or it was killed).
    replay(study, series, on_wait=say)
    study.sampler = make_sampler(space, offset=len(study.get_trials(deepcopy=False)), orchestrator=index)
    run = _Run(study, space, series, opts, stratified_subset(opts.tasks, space.settings.prompts), on_progress)
    # The watch lets this orchestrator tell an outage of the database from a lost owner (fleet.reap_lost).
    with StopOnInterrupt() as run.stop, DatabaseWatch(study):
        while not run.stop.requested:
            if opts.timeout_s is not None and time.monotonic() - run.started >= opts.timeout_s:
                break
            # Between measurements (reaping, counting, asking) an unreachable database is waited for;
            # a measurement has its own wait, with its copy in the spool (study.record).
            if not with_retries(run.step, lambda s: f"database unreachable since {s:.0f} s, retrying "
                                                     "(no measurement is waiting on it)", say):
                break
    return SweepResult(study, run.stop.requested, run.measured, run.failed)


class _Run:
    """One orchestrator's pass over a study."""

    def __init__(self, study: Any, space: Space, series: SeriesStore, opts: RunOptions, subset: list[Task],
                 on_progress: Callable[[Progress], None] | None) -> None:
        self.study, self.space, self.series, self.url, self.subset = study, space, series, opts.storage_url, subset
        self.n_trials, self.on_progress, self.lock = opts.n_trials, on_progress, opts.lock
        self.tasks = opts.tasks
        promote = space.spec.promote
        self.rungs = promotion.rungs(promote.prompts, len(opts.tasks)) if promote else []
        meta = StudyMeta.of(study)
        self.budgets = meta.budgets
        self.me = Owner.me()
        self.hardware = (meta.hardware_class or {}).get("hash")
        self.started = time.monotonic()
        self.first = self.done = finished_count(study)  # done: as last counted, for progress lines
        self.stop = StopOnInterrupt()
        self._said = ""
        self.measured = 0
        self.failed: list[str] = []
        self.abandoned: list[Any] = []  # trials a failed step left RUNNING while the database was away

    def _report(self, trial: Any = None, config: Any = None, outcome: Outcome | None = None, feasible: bool = False,
                phase: str | None = None, reused_from: int | None = None, waiting: str | None = None) -> None:
        if not self.on_progress:
            return
        if waiting is not None:
            if waiting == self._said:
                return
            self._said = waiting
        if outcome is not None:  # count again only when a trial ends: phase events come mid-measurement
            self.done = finished_count(self.study)
        done = self.done
        a = trial.user_attrs if trial is not None else {}
        promotes = (a["promotes"], a["items"]) if "promotes" in a else None
        self.on_progress(Progress(done, self.n_trials, trial.number if trial else None, config, outcome, feasible,
                                  time.monotonic() - self.started, reused_from, phase, done - self.first,
                                  self.study, waiting, promotes))

    def step(self) -> bool:
        """Measure one trial, or wait for trials in flight elsewhere. False: nothing is left to do."""
        try:
            with measurement_lock(f"study {self.study.study_name}", on_wait=lambda w: self._report(waiting=w),
                                  should_stop=lambda: self.stop.requested, enabled=self.lock) as waited:
                t0 = time.monotonic()
                self.abandoned = [t for t in self.abandoned if not self._abandon(t)]
                reap_lost(self.study, self.me)
                with study_lock(self.url, _optuna.study_id(self.study)):
                    done = finished_count(self.study)
                    elsewhere = sum(not promotion.is_promotion(t) for t in others_running(self.study, self.me))
                    self.done = done
                    # A promotion due goes first; when the run has its trials, promotions alone are left.
                    trial = self._promotion(finishing=done >= self.n_trials)
                    if trial is None and done >= self.n_trials:
                        return False
                    if trial is None:
                        trial = self.study.ask() if done + elsewhere < self.n_trials else None
                if trial is not None:
                    heartbeat = None
                    try:
                        heartbeat = Heartbeat(self.study, trial)
                        trial.set_user_attr("owner", self.me.to_dict())
                        return self._measure(trial, waited, time.monotonic() - t0)
                    except KeyboardInterrupt:
                        self._interrupted(trial)
                        raise
                    except Exception:
                        if not self._abandon(trial):
                            self.abandoned.append(trial)
                        raise
                    finally:
                        if heartbeat is not None:
                            heartbeat.stop()
        except LockWaitStopped:
            return False
        self._report(waiting=f"waiting for {elsewhere} trial(s) in flight on other orchestrators")
        time.sleep(_WAIT_S)
        return True

    def _promotion(self, finishing: bool) -> Any:
        """The promotion trial due now, created and so claimed (under the study's lock), or None."""
        promote = self.space.spec.promote
        if promote is None or len(self.rungs) < 2:
            return None
        due = promotion.due(self.study, self.rungs, promote.keep, finishing)
        if due is None:
            return None
        original, rung = due
        return promotion.start(self.study, original, rung, self.rungs[rung])

    def _interrupted(self, trial: Any) -> None:
        """Record an aborted trial as failed (``interrupted``), unless it was already recorded; a run
        trial's worker group has already been ended by ``run_trial``."""
        with self.stop.shield():
            _optuna.fail_if_running(self.study, _optuna.trial_id(trial), {"fail_reason": "interrupted"})

    def _abandon(self, trial: Any) -> bool:
        """A step that failed (the database went away, say) leaves no trial RUNNING behind it where
        it can help it: the trial is failed as ``storage_error``, which does not count towards
        ``--trials``, and its parameters are queued again. A measurement is in the spool.

        Returns False while the database is still away: the next step tries again, for no reaper on
        this host fails a live orchestrator's trial (another host's does, once its heartbeat is stale).
        """
        try:
            if _optuna.fail_if_running(self.study, _optuna.trial_id(trial), {"fail_reason": "storage_error"}) \
                    and trial.params and "promotes" not in trial.user_attrs:
                self.study.enqueue_trial(trial.params, user_attrs={"requeued_from": trial.number})
            return True
        except Exception:  # noqa: BLE001 - the database is still away
            return False

    def _measure(self, trial: Any, waited: float, asked_s: float) -> bool:
        config = self.space.sample(trial)
        promotes = trial.user_attrs.get("promotes")
        self._report(trial, config, phase="starting")
        _test_barrier()
        # A promotion measures a configuration again on purpose: it is neither reused nor waited for.
        original = self._settled_original(trial) if promotes is None else None
        if original is not None:
            if self.space.settings.duplicates == "reuse":
                with self.stop.shield():
                    feasible = reuse(self.study, self.series, trial, original)
                self._report(trial, config, Outcome(ok=True, figures={k: v for k, v in original.user_attrs.items()
                                                                      if k in METRICS}), feasible,
                             reused_from=original.number)
                return True
            trial.set_user_attr("repeat_of", original.number)  # a deliberate repeat, to estimate noise

        def on_event(msg: dict[str, Any]) -> None:
            if msg.get("type") == "phase":
                self._report(trial, config, phase=msg["phase"] + (f" (prompt {msg['prompt'] + 1})"
                                                                  if "prompt" in msg else ""))

        latency_budget = self.budgets.get("latency_p95_s", {}).get("max")
        settings, subset = self.space.settings, self.subset
        if promotes is not None:
            # As sweep verify measures: every item answered, the timeout sized for the items.
            items = trial.user_attrs["items"]
            subset = stratified_subset(self.tasks, items)
            settings = replace(settings, prompts=items, early_abort=False,
                               timeout_seconds=settings.timeout_seconds * math.ceil(items / max(settings.prompts, 1)))
        start = time.time()
        outcome = run_trial(config, settings, subset,
                            latency_budget_s=latency_budget, on_event=on_event if self.on_progress else None)
        extra = {"measured_at": [round(start, 3), round(time.time(), 3)], "hardware_class": self.hardware,
                 "lock_wait_s": round(waited, 3)}
        if not self.lock:
            extra["measured_without_lock"] = True
        with self.stop.shield():
            feasible = record(self.study, trial, outcome, self.series, self.budgets, self.space.spec.objectives,
                              {**extra, "storage_s": round(asked_s, 3)},
                              on_wait=lambda line: self._report(waiting=line))
        self.measured += 1
        if not outcome.ok:
            self.failed.append(outcome.reason or "?")
        self._report(trial, config, outcome, feasible)
        return True

    def _settled_original(self, trial: Any) -> Any:
        """The complete trial that measured this configuration, after waiting for any orchestrator
        that measures it right now: two never measure one configuration at once."""
        config = trial.user_attrs["config"]
        while True:
            # The tie is broken by number: of two trials that asked for it at once, the lower one
            # measures and the higher one waits (and one already measuring is always waited for).
            # The look and the claim are one step under the study's lock: two orchestrators that
            # look at once would each find the other not yet measuring, and both measure.
            with study_lock(self.url, _optuna.study_id(self.study)):
                busy = [t for t in others_running(self.study, self.me) if t.user_attrs.get("config") == config
                        and (t.number < trial.number or t.user_attrs.get("measuring"))]
                if not busy:
                    original = measured_before(self.study, config)
                    if original is None or self.space.settings.duplicates == "repeat":
                        trial.set_user_attr("measuring", True)  # from here on, another asking for it waits
                    return original
            if self.stop.requested:  # nothing measures here yet: stop now, the trial failed as interrupted
                raise KeyboardInterrupt
            self._report(trial, waiting=f"trial {busy[0].number} measures this configuration now; waiting for it")
            time.sleep(_WAIT_S)
            reap_lost(self.study, self.me)
