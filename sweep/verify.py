"""Verification: re-run the front on the whole task set, with repeats, and see what holds.

A sweep scores each trial on a small subset so it stays fast; the front it
finds rests on few items and one run. ``verify_study`` re-runs the front's
trials on every task, ``repeats`` times, without early abort, and stores:

- correctness with a 95% Wilson interval over the items (each item's score is
  first averaged over the repeats; at temperature 0 the repeats answer alike,
  so the items, not the repeats, are the sample);
- latency percentiles over every answer of every repeat, and CPU percentiles
  over every active window of every repeat;
- for every other figure, the worst value any repeat measured.

Scores with partial credit lie in [0, 1], so their variance is at most
p(1 - p), the binomial one: the Wilson interval stays a fair (slightly wide)
interval for them too.
"""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any, Callable

from sweep.correctness.tasks import Task
from sweep.errors import ModelError, StudyError
from sweep.measure.metrics import ACTIVE_TAGS, METRICS, cpu_window_figures, latency_figures, score_interval, wilson  # noqa: F401
from sweep.records import Outcome, StudyMeta, TrialConfig, TrialSettings
from sweep.results.front import pareto_front, rows, trial_by_number, verifications
from sweep.study.storage import SeriesStore
from sweep.trial.runner import run_trial

def mean_interval(scores: list[float]) -> dict[str, Any]:
    """The mean of item scores, its 95% interval (``score_interval``) and the number of items."""
    mean = sum(scores) / len(scores)
    return {"mean": mean, "ci": list(score_interval(scores)), "n": len(scores)}


def item_scores(runs: list[Outcome]) -> dict[str, tuple[str, float]]:
    """Each item's kind and its score averaged over the runs."""
    totals: dict[str, list[Any]] = {}
    for run in runs:
        for a in run.answers:
            entry = totals.setdefault(a["id"], [a["kind"], 0.0])
            entry[1] += a["score"] / len(runs)
    return {k: (kind, s) for k, (kind, s) in totals.items()}


def correctness_summary(scores: dict[str, tuple[str, float]]) -> dict[str, Any]:
    """Mean correctness with its interval, overall and by kind."""
    kinds: dict[str, list[float]] = {}
    for kind, s in scores.values():
        kinds.setdefault(kind, []).append(s)
    return {"all": mean_interval([s for _, s in scores.values()]),
            "by_kind": {k: mean_interval(v) for k, v in sorted(kinds.items())}}


def pooled_figures(runs: list[Outcome]) -> dict[str, float]:
    """The figures of several runs of one configuration, pooled as the module docstring says."""
    figs: dict[str, float] = {}
    for name in {k for run in runs for k in run.figures}:
        values = [run.figures[name] for run in runs if name in run.figures]
        figs[name] = max(values) if METRICS.get(name) is None or METRICS[name].direction == "minimize" else min(values)
    figs.update(latency_figures([a["latency_s"] for run in runs for a in run.answers]))
    windows = [(c, tag) for run in runs for c, tag in zip(run.series["tree_core_pct"], run.series["phase"])]
    figs.update(cpu_window_figures([c for c, tag in windows if tag in ACTIVE_TAGS],
                                   [c for c, tag in windows if tag == "idle"], runs[0].series["ncpu"]))
    figs["parse_failures"] = sum(run.figures.get("parse_failures", 0) for run in runs) / len(runs)
    return {k: v for k, v in figs.items() if not math.isnan(v)}


def verify_trial(config: TrialConfig, settings: TrialSettings, tasks: list[Task], repeats: int,
                 on_run: Callable[[int, Outcome], None] | None = None,
                 on_event: Callable[[dict[str, Any]], None] | None = None, lock: bool = True,
                 on_wait: Callable[[str], None] | None = None) -> tuple[dict[str, Any], list[Outcome]]:
    """Run one configuration ``repeats`` times on ``tasks``; the verification record and the runs.

    A run that fails ends the verification: the record says why (``failed``).
    """
    # The sweep's timeout was sized for its subset; scale it to the whole set.
    scale = max(1, math.ceil(len(tasks) / max(settings.prompts, 1)))
    settings = replace(settings, prompts=len(tasks), early_abort=False, timeout_seconds=settings.timeout_seconds * scale)
    runs: list[Outcome] = []
    record: dict[str, Any] = {"n_items": len(tasks), "repeats": repeats, "failed": None, "detail": "",
                              "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if not lock:
        record["measured_without_lock"] = True
    for i in range(repeats):
        outcome = run_trial(config, settings, tasks, on_event=on_event, lock=lock, on_wait=on_wait)
        runs.append(outcome)
        if on_run:
            on_run(i, outcome)
        if not outcome.ok:
            record.update(failed=outcome.reason, detail=outcome.detail[:500], figures={}, by_kind={},
                          correctness_ci=None)
            return record, runs
    summary = correctness_summary(item_scores(runs))
    figures = pooled_figures(runs)
    figures["correctness"] = summary["all"]["mean"]
    record.update(figures=figures, correctness_ci=summary["all"]["ci"], by_kind=summary["by_kind"])
    return record, runs


def front_to_verify(study: Any, trials: list[int] | None = None, again: bool = False,
                    n_items: int = 0, repeats: int = 0) -> tuple[list[dict[str, Any]], list[int]]:
    """The rows to verify (the front, or the named trials) and those skipped as already verified.

    A trial counts as already verified when a verification on at least as many
    items and repeats exists; ``again`` verifies it anyway.
    """
    if trials:
        by_number = {r["number"]: r for r in rows(study, prefer_verified=False)}
        missing = [n for n in trials if n not in by_number or by_number[n]["state"] != "COMPLETE"]
        if missing:
            raise StudyError(f"study {study.study_name!r} has no complete trial {', '.join(map(str, missing))}")
        targets = [by_number[n] for n in trials]
    else:
        targets = pareto_front(study, prefer_verified=False)[0]
    done = verifications(study)
    skipped = [r["number"] for r in targets if not again and r["number"] in done
               and done[r["number"]]["n_items"] >= n_items and done[r["number"]]["repeats"] >= repeats]
    return [r for r in targets if r["number"] not in skipped], skipped


def save_verification(study: Any, series: SeriesStore, trial: Any, record: dict[str, Any], runs: list[Outcome],
                      on_wait: Callable[[str], None] | None = None) -> None:
    """Store the record on the study and every run's answers and figures in sweep's own table, through
    the spool as a trial's measurement is (``spool.record``): on disk first, kept there while the
    database is away. ``trial`` was read before the runs: nothing here reads the database first.

    Raises:
        DatabaseUnavailable: the database stayed unreachable past the retry window; the verification
            is in the spool, and the next sweep run, sweep verify or sweep db upgrade records it.
    """
    from sweep.study import spool

    payload = {"runs": [{"ok": r.ok, "reason": r.reason, "figures": r.figures, "answers": r.answers} for r in runs]}
    spool.record(study, series, spool.PendingVerification.of(series, study, trial, record, payload), on_wait)


def verify_study(study: Any, url: str, tasks: list[Task], repeats: int = 2, trials: list[int] | None = None,
                 again: bool = False, on_event: Callable[[str], None] | None = None,
                 task_set: str = "", lock: bool = True) -> tuple[list[int], list[int]]:
    """Verify the study's front (or ``trials``) on ``tasks``; returns the trials verified and those skipped.

    Raises:
        StudyError: a named trial is not a complete trial of the study.
        ModelError: a trial's model file is gone (nothing is run or stored then).
        DatabaseUnavailable: the database stayed unreachable past the retry window when a verification
            was recorded; it is in the spool, and the next sweep run, sweep verify or sweep db upgrade
            records it.
    """
    from pathlib import Path

    from sweep.results.display import config_summary
    from sweep.study import spool

    say = on_event or (lambda _: None)
    series = SeriesStore(url)
    spool.replay(study, series, on_wait=say)  # what an earlier one could not record counts below
    targets, skipped = front_to_verify(study, trials, again, len(tasks), repeats)
    for row in targets:
        path = row["config"]["model_path"]
        if not Path(path).is_file():
            raise ModelError(f"trial {row['number']}: model file {path} no longer exists; nothing was verified")
    settings = StudyMeta.of(study).settings
    for row in targets:
        n = row["number"]
        trial = trial_by_number(study, n)
        config = TrialConfig.from_dict(row["config"])
        say(f"trial {n}: {config_summary(row['config'])}: {len(tasks)} tasks x {repeats} runs")

        def on_run(i: int, o: Outcome, n: int = n) -> None:
            what = (f"correctness {o.figures['correctness']:.3f}, latency p95 {o.figures.get('latency_p95_s', math.nan):.2f} s"
                    if o.ok else f"FAILED ({o.reason}: {o.detail[:160]})")
            say(f"  trial {n}, run {i + 1}/{repeats} in {o.wall_seconds:.1f} s: {what}")

        def on_message(msg: dict[str, Any], n: int = n) -> None:
            if msg.get("type") == "prompt" and (msg["index"] + 1) % 20 == 0:
                say(f"  trial {n}: {msg['index'] + 1}/{len(tasks)} answered")

        record, runs = verify_trial(config, settings, tasks, repeats, on_run, on_message, lock, say)
        record["task_set"] = task_set
        save_verification(study, series, trial, record, runs, say)
    return [r["number"] for r in targets], skipped
