"""The study: an Optuna multi-objective study, its creation, its sampler, and how a trial is told.

The loop that asks and measures is the orchestrator's (``sweep.study.orchestrator``).
"""

from __future__ import annotations

import math
from typing import Any, Callable

from sweep import _optuna, platforms
from sweep.errors import StudyError
from sweep.measure.host import host_info
from sweep.measure.metrics import METRICS, constraint_values
from sweep.records import Outcome, StudyMeta, verifications
from sweep.study.fleet import check_hardware, describe_class, hardware_class
from sweep.study.space import Space
from sweep.study.storage import SeriesStore, open_optuna_storage, safe_url, schema_lock


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("sweep")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


SWEEP_VERSION = _version()  # the installed package's, from pyproject.toml
_SEED_STRIDE = 7919  # between the sampler seeds of a study's successive orchestrators


def make_sampler(space: Space, offset: int, orchestrator: int = 0) -> Any:
    """The space's sampler. The seed is offset by the trials already in the study, so a
    continued study does not replay the proposals of its first session, and by the
    orchestrator's index in the study, so two orchestrators started together differ.
    TPE runs with ``constant_liar``: a trial in flight elsewhere counts as a poor result,
    so parallel orchestrators do not propose the same point."""
    import optuna

    cfg = space.spec.sampler
    seed = None if cfg.seed is None else cfg.seed + offset + _SEED_STRIDE * orchestrator
    if cfg.name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=cfg.population_size)
    if cfg.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=cfg.n_startup_trials, constant_liar=True,
                                      multivariate=cfg.multivariate)


def load_study(storage_url: str, name: str) -> Any:
    """The named study, read-only: opening it writes nothing."""
    import optuna

    try:
        return optuna.load_study(study_name=name, storage=open_optuna_storage(storage_url, write=False))
    except KeyError:
        raise StudyError(f"no study named {name!r} in {safe_url(storage_url)}") from None


def open_or_create(space: Space, storage_url: str, name: str, task_set: str,
                    hardware_name: str | None = None) -> tuple[Any, SeriesStore, int]:
    """The study to run, created atomically if new; with the sweep tables and this
    orchestrator's index among the study's orchestrators (0 for the first).

    Every check runs before anything is written, so a refused host leaves the study as it was.

    Raises:
        StudyError: the study was made from another space, or on another hardware class.
    """
    import optuna

    storage = open_optuna_storage(storage_url)
    series = SeriesStore(storage_url)
    mine = hardware_class(hardware_name)
    directions = [METRICS[m].direction for m in space.spec.objectives]
    with schema_lock(storage_url):  # the study and its attributes are written together, once
        existing = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
        if name in existing:
            study = optuna.load_study(study_name=name, storage=storage)
            theirs = study.user_attrs.get("space_fingerprint")
            if theirs != space.fingerprint():
                raise StudyError(f"study {name!r} was made from another search space "
                                 f"({study.user_attrs.get('space_file', '?')}); use a new --study name")
            _check_comparable(study, space, task_set)
            check_hardware(study, mine, hardware_name)
            if "hardware_class" not in study.user_attrs:  # a study from before hardware classes
                study.set_user_attr("hardware_class", mine)
            runs = int(study.user_attrs.get("orchestrator_runs", 1))
            study.set_user_attr("orchestrator_runs", runs + 1)
            return study, series, runs
        study = optuna.create_study(study_name=name, storage=storage, directions=directions)
        series.forget_study(_optuna.study_id(study))
        study.set_metric_names(list(space.spec.objectives))
        meta = StudyMeta(
            objectives=list(space.spec.objectives), settings=space.settings,
            budgets={k: v.model_dump(exclude_none=True) for k, v in space.spec.constraints.items()},
            space_file=str(space.path), space_fingerprint=space.fingerprint(), task_set=task_set,
            sweep_version=SWEEP_VERSION, host=host_info(), hardware_class=mine, floor=space.spec.floor(),
            models={f"{n}:{q}": str(space.registry.resolve(n, q).path) for n, qs in space.spec.models.items() for q in qs})
        for key, value in {**meta.to_attrs(), "orchestrator_runs": 1}.items():
            study.set_user_attr(key, value)
        save_dashboard_note(study)
        return study, series, 0


def _check_comparable(study: Any, space: Space, task_set: str) -> None:
    """A study continues only under the settings and on the task set its figures were measured with.

    Raises:
        StudyError: naming each trial setting that changed, or the task sets.
    """
    # A setting added to sweep after the study was made counts at its default.
    meta = StudyMeta.of(study)
    theirs = meta.settings.to_dict()
    mine = space.settings.to_dict()
    changed = [f"{k} {theirs.get(k)!r} in the study, {mine.get(k)!r} here" for k in sorted(set(theirs) | set(mine))
               if theirs.get(k) != mine.get(k)]
    if changed:
        raise StudyError(f"study {study.study_name!r} was measured with other trial settings ({'; '.join(changed)}); "
                         "its figures would not be comparable: restore them or use a new --study name")
    if meta.task_set != task_set:
        raise StudyError(f"study {study.study_name!r} was measured on the task set {meta.task_set}, not {task_set}; "
                         f"pass --tasks {meta.task_set} to continue it, or use a new --study name")


def save_dashboard_note(study: Any) -> None:
    """A note on the study for optuna-dashboard: where and against what it was measured."""
    from optuna_dashboard import save_note

    a = StudyMeta.of(study)
    lines = [f"# {study.study_name}", "", f"Measured on {describe_class(study)}.", "",
             f"Search space `{a.space_file}`; task set `{a.task_set}`; sweep {a.sweep_version}.", "",
             "## Models", ""]
    lines += [f"- `{name}`: `{path}`" for name, path in a.models.items()]
    lines += ["", "## Budgets (constraints, in this order)", ""]
    for name, bound in a.budgets.items():
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


def finished_count(study: Any) -> int:
    """The trials that count towards ``--trials``: finished ones, less those the database would not
    let start (``storage_error``: nothing was measured, and its parameters were queued again) and
    promotions (a configuration measured again on more items, not a new one)."""
    from optuna.trial import TrialState

    return sum(t.state in (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
               and t.user_attrs.get("fail_reason") != "storage_error" and "promotes" not in t.user_attrs
               for t in study.get_trials(deepcopy=False))


def measured_path(trial: Any) -> str:
    """The measurement path that measured a trial (trials from before the record: Linux's)."""
    return str((trial.user_attrs.get("platform") or {}).get("platform", "linux"))


def measured_before(study: Any, config: dict[str, Any]) -> Any:
    """The first complete trial that measured exactly this effective configuration on this
    measurement path: a study that joined the two paths (``--hardware-class``) measures a
    configuration again on the other, never passes one path's figures off as the other's."""
    from optuna.trial import TrialState

    path = platforms.name()
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.user_attrs.get("config") == config and "reused_from" not in t.user_attrs \
                and "promotes" not in t.user_attrs and measured_path(t) == path:
            return t
    return None


def reuse(study: Any, series: SeriesStore, trial: Any, original: Any) -> bool:
    """Tell the trial the original's measurement, marked as reused (never as a new measurement),
    by the one path every record takes (``spool.apply``). Returns whether every budget was met."""
    from sweep.study import spool

    attrs = {k: v for k, v in original.user_attrs.items() if k in METRICS or k in ("by_kind", "platform")}
    cv = list(original.user_attrs.get("constraint_values", []))
    attrs.update(reused_from=original.number, constraint_values=cv, violations=_violations(StudyMeta.of(study).budgets, cv))
    return spool.apply(study, series, spool.Pending.of(series, study, trial, attrs, list(original.values), cv, None))


def _violations(budgets: dict[str, Any], cv: list[float]) -> list[str]:
    """The budgets a trial broke, by name; the constraint values are in the budgets' order."""
    return [name for name, c in zip(budgets, cv) if c > 0]


def _outcome_attrs(outcome: Outcome, budgets: dict[str, dict[str, float]],
                   objectives: list[str]) -> tuple[dict[str, Any], list[float] | None, list[float]]:
    """What a trial's outcome writes: its user attributes, its objective values (None: failed)
    and its constraint values."""
    attrs: dict[str, Any] = {**outcome.figures, "wall_seconds": round(outcome.wall_seconds, 3),
                             "knobs": outcome.knobs, "platform": outcome.series.get("platform", {})}
    values = [outcome.figures.get(m, math.nan) for m in objectives]
    if not outcome.ok or any(math.isnan(v) for v in values):
        attrs.update(fail_reason=outcome.reason or "no_measurement", fail_detail=outcome.detail[:2000],
                     stderr_tail=outcome.stderr_tail[-4000:])
        return attrs, None, []
    cv = constraint_values(outcome.figures, budgets)
    attrs.update(by_kind=outcome.by_kind, constraint_values=cv, violations=_violations(budgets, cv))
    return attrs, values, cv


def record(study: Any, trial: Any, outcome: Outcome, series: SeriesStore, budgets: dict[str, dict[str, float]],
           objectives: list[str], extra: dict[str, Any] | None = None,
           on_wait: Callable[[str], None] | None = None) -> bool:
    """Store everything measured on the trial and tell Optuna. Returns whether budgets were met.

    The measurement goes to the spool first (``sweep.study.spool``), then to the database, retried with
    backoff while the database is unreachable (``on_wait`` is told, once a try); the spool file goes
    once the record is complete. If another orchestrator failed the trial meanwhile (its heartbeat
    looked stale), the measurement is not lost: it becomes a new trial with the same parameters,
    marked ``recorded_late_for``.

    Raises:
        DatabaseUnavailable: the database stayed unreachable past the retry window; the
            measurement is in the spool, and the next run records it.
        MeasurementLost: that, and the spool could not be written either: the measurement's one
            copy is the JSON line printed on stderr (``spool.record``).
    """
    from sweep.study import spool

    attrs, values, cv = _outcome_attrs(outcome, budgets, objectives)
    attrs.update(extra or {})
    pending = spool.Pending.of(series, study, trial, attrs, values, cv,
                               {"series": outcome.series, "answers": outcome.answers})
    return bool(spool.record(study, series, pending, on_wait))
