"""The study: an Optuna multi-objective study driven by ask/tell, one worker trial at a time.

Counting rule: ``n_trials`` is the number of *finished* trials (complete or
failed) the study should hold when the sweep ends. Running the same command
again after an interruption carries on to that number; a study that already has
it runs nothing more.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from .errors import StudyError
from .host import host_info
from .metrics import METRICS
from .records import Outcome, TrialConfig
from .results import constraint_values, verifications
from .runner import run_trial
from .space import Space
from .storage import SeriesStore, open_optuna_storage
from .tasks import TASK_SET_VERSION, Task, stratified_subset

SWEEP_VERSION = "0.1.0"
def make_sampler(space: Space, offset: int) -> Any:
    """The space's sampler. The seed is offset by the trials already in the study, so a
    continued study does not replay the proposals of its first session."""
    import optuna

    cfg = space.spec.sampler
    seed = None if cfg.seed is None else cfg.seed + offset
    if cfg.name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=cfg.population_size)
    if cfg.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=cfg.n_startup_trials)


@dataclass
class Progress:
    """What a display needs after each trial."""

    done: int
    target: int
    trial_number: int
    config: TrialConfig | None
    outcome: Outcome | None
    feasible: bool
    elapsed_s: float
    reused_from: int | None = None
    phase: str | None = None  # the trial in flight's phase, as the worker reports it
    done_this_run: int = 0  # trials finished by this run (for the ETA)
    study: Any = None


class _StopOnInterrupt:
    """First Ctrl-C: finish the trial in flight, record it, stop. Second: abort the trial."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> _StopOnInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping after the trial in flight (Ctrl-C again to abort it)", file=sys.stderr, flush=True)

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


@dataclass
class SweepResult:
    study: Any
    stopped_by_user: bool


def load_study(storage_url: str, name: str) -> Any:
    import optuna

    _quiet_optuna()
    try:
        return optuna.load_study(study_name=name, storage=open_optuna_storage(storage_url))
    except KeyError:
        raise StudyError(f"no study named {name!r} in {storage_url}") from None


def _quiet_optuna() -> None:
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def _open_or_create(space: Space, storage_url: str, name: str, task_set: str) -> Any:
    import optuna

    _quiet_optuna()
    storage = open_optuna_storage(storage_url)
    directions = [METRICS[m].direction for m in space.spec.objectives]
    existing = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    if name in existing:
        study = optuna.load_study(study_name=name, storage=storage)
        theirs = study.user_attrs.get("space_fingerprint")
        if theirs != space.fingerprint():
            raise StudyError(f"study {name!r} was made from another search space "
                             f"({study.user_attrs.get('space_file', '?')}); use a new --study name")
        return study
    study = optuna.create_study(study_name=name, storage=storage, directions=directions)
    study.set_metric_names(list(space.spec.objectives))
    budgets = {k: v.model_dump(exclude_none=True) for k, v in space.spec.constraints.items()}
    for key, value in {
        "space_file": str(space.path), "space_fingerprint": space.fingerprint(), "objectives": space.spec.objectives,
        "budgets": budgets, "settings": space.settings.to_dict(), "host": host_info(),
        "task_set": task_set, "sweep_version": SWEEP_VERSION,
        "models": {f"{n}:{q}": str(space.registry.resolve(n, q).path) for n, qs in space.spec.models.items() for q in qs},
    }.items():
        study.set_user_attr(key, value)
    save_dashboard_note(study)
    return study


def save_dashboard_note(study: Any) -> None:
    """A note on the study for optuna-dashboard: where and against what it was measured."""
    from optuna_dashboard import save_note

    a = study.user_attrs
    host = a["host"]
    lines = [f"# {study.study_name}", "",
             f"Measured on **{host['hostname']}**: {host['cpu_model']}, {host['logical_cpus']} logical CPUs "
             f"(allowed: {host['allowed_cpus']}), {host['mem_total_gb']} GB, kernel {host['kernel']}.", "",
             f"Search space `{a['space_file']}`; task set `{a['task_set']}`; sweep {a['sweep_version']}.", "",
             "## Models", ""]
    lines += [f"- `{name}`: `{path}`" for name, path in a["models"].items()]
    lines += ["", "## Budgets (constraints, in this order)", ""]
    for name, bound in a["budgets"].items():
        lines.append(f"- `{name}` {'<=' if 'max' in bound else '>='} {bound.get('max', bound.get('min'))}")
    lines += ["", "CPU figures ending in `_share_pct` are the LLM's share of the whole machine; `_core_pct` is "
              "percent of one core. Each trial stores the window W (`window_ms`) and counts N beside them."]
    checked = verifications(study)
    if checked:
        lines += ["", "## Verified on the whole task set (`sweep verify`)", ""]
        for n, v in sorted(checked.items()):
            if v["failed"]:
                lines.append(f"- trial {n}: verification FAILED ({v['failed']}): {v['detail']}")
                continue
            f, (lo, hi) = v["figures"], v["correctness_ci"]
            lines.append(f"- trial {n}: {v['n_items']} tasks x {v['repeats']} runs: correctness {f['correctness']:.3f} "
                         f"(95% CI {lo:.2f}-{hi:.2f}), active p99 CPU {f.get('cpu_active_p99_share_pct', math.nan):.1f}% "
                         f"of the machine, latency p95 {f.get('latency_p95_s', math.nan):.2f} s")
    save_note(study, "\n".join(lines))


def _finished(study: Any) -> int:
    from optuna.trial import TrialState

    return sum(t.state in (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED) for t in study.get_trials(deepcopy=False))


def _recover_orphans(study: Any) -> int:
    """Trials left RUNNING by a killed orchestrator: mark failed, re-queue their parameters once."""
    from optuna.trial import TrialState

    orphans = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    for t in orphans:
        study._storage.set_trial_user_attr(t._trial_id, "fail_reason", "orchestrator_lost")
        study.tell(t.number, state=TrialState.FAIL)
        if not t.user_attrs.get("requeued_from") and t.params:
            study.enqueue_trial(t.params, user_attrs={"requeued_from": t.number})
    return len(orphans)


def _measured_before(study: Any, config: dict[str, Any]) -> Any:
    """The first complete trial that measured exactly this effective configuration."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.user_attrs.get("config") == config and "reused_from" not in t.user_attrs:
            return t
    return None


def _reuse(study: Any, trial: Any, original: Any) -> bool:
    """Tell the trial the original's measurement, marked as reused (never as a new measurement)."""
    for key, value in original.user_attrs.items():
        if key in METRICS or key == "by_kind":
            trial.set_user_attr(key, value)
    trial.set_user_attr("reused_from", original.number)
    return _tell_complete(study, trial, list(original.values), original.user_attrs.get("constraint_values", []),
                          list(study.user_attrs["budgets"]))


def _tell_complete(study: Any, trial: Any, values: list[float], cv: list[float], budget_names: list[str]) -> bool:
    """Record the constraint values, tell Optuna the objectives, return whether every budget was met."""
    # Optuna 5 reads constraints from the list attribute "constraints" as well as from
    # Trial.set_constraint's named keys, but optuna-dashboard reads only the list; the
    # names are the study's "budgets" attribute, in this order.
    study._storage.set_trial_system_attr(trial._trial_id, "constraints", cv)
    trial.set_user_attr("constraint_values", cv)
    trial.set_user_attr("violations", [name for name, c in zip(budget_names, cv) if c > 0])
    study.tell(trial, values)
    return all(c <= 0 for c in cv)


def record(study: Any, trial: Any, outcome: Outcome, series: SeriesStore, budgets: dict[str, dict[str, float]],
           objectives: list[str]) -> bool:
    """Store everything measured on the trial and tell Optuna. Returns whether budgets were met."""
    from optuna.trial import TrialState

    for key, value in outcome.figures.items():
        trial.set_user_attr(key, value)
    trial.set_user_attr("wall_seconds", round(outcome.wall_seconds, 3))
    trial.set_user_attr("knobs", outcome.knobs)
    series.put(study.study_name, trial.number, {"series": outcome.series, "answers": outcome.answers})
    values = [outcome.figures.get(m, math.nan) for m in objectives]
    if not outcome.ok or any(math.isnan(v) for v in values):
        trial.set_user_attr("fail_reason", outcome.reason or "no_measurement")
        trial.set_user_attr("fail_detail", outcome.detail[:2000])
        trial.set_user_attr("stderr_tail", outcome.stderr_tail[-4000:])
        study.tell(trial, state=TrialState.FAIL)
        return False
    trial.set_user_attr("by_kind", outcome.by_kind)
    return _tell_complete(study, trial, values, constraint_values(outcome.figures, budgets), list(budgets))


def run_study(space: Space, storage_url: str, name: str, n_trials: int, tasks: list[Task],
              timeout_s: float | None = None, on_progress: Callable[[Progress], None] | None = None,
              worker_cmd: list[str] | None = None, task_set: str = TASK_SET_VERSION) -> SweepResult:
    """Run trials until the study holds ``n_trials`` finished trials or ``timeout_s`` passes.

    The timeout is checked between trials: the trial in flight always finishes.
    A first Ctrl-C (SIGINT) stops after the trial in flight; a second aborts it,
    records it as failed with reason ``interrupted`` and raises KeyboardInterrupt.
    """
    study = _open_or_create(space, storage_url, name, task_set)
    _recover_orphans(study)
    study.sampler = make_sampler(space, offset=len(study.get_trials(deepcopy=False)))
    series = SeriesStore(storage_url)
    budgets = study.user_attrs["budgets"]
    subset = stratified_subset(tasks, space.settings.prompts)
    started = time.monotonic()
    first = _finished(study)
    with _StopOnInterrupt() as stop:
        while (done := _finished(study)) < n_trials and not stop.requested:
            if timeout_s is not None and time.monotonic() - started >= timeout_s:
                break
            _run_one(study, space, series, budgets, subset, worker_cmd, n_trials, done, started, on_progress,
                     done - first)
    return SweepResult(study, stop.requested)


def _run_one(study: Any, space: Space, series: SeriesStore, budgets: dict[str, dict[str, float]], subset: list[Task],
             worker_cmd: list[str] | None, n_trials: int, done: int, started: float,
             on_progress: Callable[[Progress], None] | None, done_this_run: int) -> None:
    from optuna.trial import TrialState

    trial = study.ask()
    config = space.sample(trial)

    def report(outcome: Outcome | None, feasible: bool = False, phase: str | None = None,
               reused_from: int | None = None) -> None:
        if on_progress:
            finished = outcome is not None
            on_progress(Progress(done + finished, n_trials, trial.number, config, outcome, feasible,
                                 time.monotonic() - started, reused_from, phase, done_this_run + finished, study))

    def on_event(msg: dict[str, Any]) -> None:
        if msg.get("type") == "phase":
            report(None, phase=msg["phase"] + (f" (prompt {msg['prompt'] + 1})" if "prompt" in msg else ""))

    report(None, phase="starting")
    original = _measured_before(study, trial.user_attrs["config"])
    if original is not None:
        if space.settings.duplicates == "reuse":
            feasible = _reuse(study, trial, original)
            report(Outcome(ok=True, figures={k: v for k, v in original.user_attrs.items() if k in METRICS}),
                   feasible, reused_from=original.number)
            return
        trial.set_user_attr("repeat_of", original.number)  # a deliberate repeat, to estimate noise
    latency_budget = budgets.get("latency_p95_s", {}).get("max")
    try:
        outcome = run_trial(config, space.settings, subset, worker_cmd=worker_cmd, latency_budget_s=latency_budget,
                            on_event=on_event if on_progress else None)
    except KeyboardInterrupt:
        # run_trial's killer has already ended the worker's group; keep the trial as data.
        trial.set_user_attr("fail_reason", "interrupted")
        study.tell(trial, state=TrialState.FAIL)
        raise
    feasible = record(study, trial, outcome, series, budgets, space.spec.objectives)
    report(outcome, feasible)
