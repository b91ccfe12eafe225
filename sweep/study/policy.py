"""The export policy over a study's rows: each finished trial's figures from its largest sample,
the Pareto front, and the trial the policy picks. The views (``sweep.results``) and the study
loop (promotion, ``sweep.study.promotion``) read a study through these.

Larger samples: where a promotion (``sweep.study.promotion``) or ``sweep verify`` has re-run
a trial's configuration on more items, the figures of the largest sample replace the trial's
own in every row, so the front, the feasibility and the export policy all rest on it.

Export policy: trials that meet every budget first; among them the best on the space's
first objective, then its second, and so on (by default: the highest correctness, then the
lowest active p99 CPU, then the lowest p95 latency). If no
trial meets every budget, nothing is exported unless asked (``allow_infeasible``),
and then the *closest* trial is chosen. The space's floor budgets (``policy.floor``, by default
correctness) come first: a trial that meets them beats every trial that does not, and among
those that break one, the closest on the floors wins. Then the smallest sum of the other budgets'
overshoots, each relative to its budget.
"""

from __future__ import annotations

import math
from typing import Any

from sweep.errors import ExportError, StudyError
from sweep.measure.metrics import METRICS, constraint_values
from sweep.records import StudyMeta, verifications

def trial_row(t: Any) -> dict[str, Any]:
    """A finished trial's own record, as stored: number, state, config, figures, feasibility."""
    a = t.user_attrs
    return {
        "number": t.number, "state": t.state.name, "config": a.get("config"),
        "figures": {k: v for k, v in a.items() if k in METRICS},
        "values": list(t.values) if t.values else None,
        "constraint_values": a.get("constraint_values"), "violations": a.get("violations", []),
        "feasible": t.state.name == "COMPLETE" and not a.get("violations"),
        "fail_reason": a.get("fail_reason"), "fail_detail": a.get("fail_detail"),
        "reused_from": a.get("reused_from"), "promotes": a.get("promotes"),
    }


def rows(study: Any, prefer_verified: bool = True) -> list[dict[str, Any]]:
    """One dict per finished trial: number, state, config, figures, feasibility.

    A configuration's figures come from its largest sample: a promotion trial's
    (``row["promoted"]``, ``sweep.study.promotion``), or, with ``prefer_verified``,
    a verification on more items (``row["verified"]``); the trial's own figures stay
    under ``sweep_figures``. A promotion trial's own row has ``promotes`` set and
    takes no part in the front or the policy.
    """
    meta = StudyMeta.of(study)
    checked = verifications(study) if prefer_verified else {}
    trials = study.get_trials(deepcopy=False)
    promoted = _largest_promotions(trials)  # promotions are the sweep's own measurements
    out = []
    for t in trials:
        if t.state.name not in ("COMPLETE", "FAIL"):
            continue
        row = {**trial_row(t), "verified": None, "promoted": None}
        # A reused copy holds its original's measurement, so it stands or falls with its verification.
        origin = t.user_attrs.get("reused_from", t.number)
        v = checked.get(t.number) or checked.get(origin)
        p = promoted.get(origin) if t.state.name == "COMPLETE" and row["promotes"] is None else None
        if p is not None and (v is None or v["n_items"] < p.user_attrs["items"]):
            _apply_promotion(row, p, meta.objectives, meta.budgets)
        elif v is not None and t.state.name == "COMPLETE":
            _apply_verification(row, v, meta.objectives, meta.budgets)
        out.append(row)
    return out


def _largest_promotions(trials: list[Any]) -> dict[int, Any]:
    """Each promoted trial's promotion on the most items, by the original's number (promotions that
    failed for a reason not the configuration's own measured nothing, and are left out)."""
    from sweep.study.promotion import NOT_ITS_FAULT

    best: dict[int, Any] = {}
    for t in trials:
        a = t.user_attrs
        if "promotes" not in a or t.state.name not in ("COMPLETE", "FAIL") or a.get("fail_reason") in NOT_ITS_FAULT:
            continue
        n = int(a["promotes"])
        if n not in best or a["items"] > best[n].user_attrs["items"]:
            best[n] = t
    return best


def _apply_promotion(row: dict[str, Any], p: Any, objectives: list[str], budgets: dict[str, dict[str, float]]) -> None:
    """The figures of the promotion trial ``p`` in place of the row's own (those stay under ``sweep_figures``)."""
    promo = trial_row(p)
    row["promoted"] = {"trial": p.number, "rung": p.user_attrs["rung"], "n_items": p.user_attrs["items"],
                       "failed": promo["fail_reason"] if promo["state"] == "FAIL" else None}
    row["sweep_figures"] = row["figures"]
    if row["promoted"]["failed"]:
        # The configuration did not survive more items: keep its first figures, never call it feasible.
        row["feasible"] = False
        row["violations"] = [*row["violations"], f"promotion ({row['promoted']['failed']})"]
        return
    row["figures"] = promo["figures"]
    row["values"] = promo["values"] or [row["figures"].get(m, math.nan) for m in objectives]
    row["constraint_values"] = constraint_values(row["figures"], budgets)
    row["violations"] = [name for name, c in zip(budgets, row["constraint_values"]) if c > 0]
    row["feasible"] = not row["violations"]


def _apply_verification(row: dict[str, Any], v: dict[str, Any], objectives: list[str],
                        budgets: dict[str, dict[str, float]]) -> None:
    row["verified"] = {k: v[k] for k in ("n_items", "repeats", "correctness_ci", "failed", "detail", "at")}
    row["sweep_figures"] = row["figures"]
    if v["failed"]:
        # The configuration did not survive the larger run: keep its sweep figures, never call it feasible.
        row["feasible"] = False
        row["violations"] = [*row["violations"], f"verification ({v['failed']})"]
        return
    row["figures"] = {**row["figures"], **v["figures"]}
    row["values"] = [row["figures"].get(m, math.nan) for m in objectives]
    row["constraint_values"] = constraint_values(row["figures"], budgets)
    row["violations"] = [name for name, c in zip(budgets, row["constraint_values"]) if c > 0]
    row["feasible"] = not row["violations"]


def _dominates(a: list[float], b: list[float], signs: list[int]) -> bool:
    better = False
    for x, y, s in zip(a, b, signs):
        if s * x < s * y:
            return False
        better |= s * x > s * y
    return better


def _failed_verification(r: dict[str, Any]) -> bool:
    """Whether a larger sample of the trial's configuration (a verification, a promotion) failed."""
    return bool((r["verified"] and r["verified"]["failed"]) or (r.get("promoted") and r["promoted"]["failed"]))


def _signs(study: Any) -> list[int]:
    return [1 if METRICS[m].direction == "maximize" else -1 for m in StudyMeta.of(study).objectives]


def _pool(all_rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], bool]:
    """The trials a front is drawn from: feasible ones if any, else every complete one."""
    complete = [r for r in all_rows if r["state"] == "COMPLETE" and r["reused_from"] is None
                and r["promotes"] is None and not _failed_verification(r)]
    feasible = [r for r in complete if r["feasible"]]
    return feasible or complete, bool(feasible)


def pareto_front(study: Any, prefer_verified: bool = True) -> tuple[list[dict[str, Any]], bool]:
    """The non-dominated complete trials, among feasible ones if any exist.

    Returns the front and whether it is the feasible front (False: no trial met
    every budget, and the front shown ignores the budgets).
    """
    signs = _signs(study)
    pool, feasible = _pool(rows(study, prefer_verified))
    front = [r for r in pool if not any(_dominates(o["values"], r["values"], signs) for o in pool if o is not r)]
    return sorted(front, key=policy_key(study)), feasible


def policy_key(study: Any) -> Any:
    """The export policy's order: feasible first, then the study's objectives in the space's
    order, each best first; the trial number breaks ties."""
    objectives = StudyMeta.of(study).objectives
    signs = _signs(study)

    def key(r: dict[str, Any]) -> tuple[float, ...]:
        f = r["figures"]
        return (not r["feasible"], *(-s * f.get(m, -s * math.inf) for m, s in zip(objectives, signs)), r["number"])
    return key


def _overshoot(r: dict[str, Any], budgets: dict[str, dict[str, float]], only: list[str] | None = None,
               but: list[str] | None = None) -> float:
    """The sum of the budgets' overshoots, each relative to its budget (``only`` these, ``but`` those)."""
    total = 0.0
    for (name, bound), c in zip(budgets.items(), r["constraint_values"] or []):
        if (only is not None and name not in only) or (but is not None and name in but):
            continue
        limit = bound.get("max", bound.get("min")) or 1.0
        total += max(c, 0.0) / abs(limit)
    return total


def choose(study: Any, allow_infeasible: bool = False, trial: int | None = None) -> dict[str, Any]:
    """The trial the export policy picks (or ``trial`` when given).

    Raises:
        ExportError: no complete trial, the named trial is not complete, or no
            trial meets every budget and ``allow_infeasible`` is False.
    """
    complete = [r for r in rows(study) if r["state"] == "COMPLETE" and r["promotes"] is None]
    if trial is not None:
        match = [r for r in complete if r["number"] == trial]
        if not match:
            raise ExportError(f"trial {trial} of study {study.study_name!r} is not a complete trial")
        return match[0]
    if not complete:
        raise ExportError(f"study {study.study_name!r} has no complete trial to export")
    complete = [r for r in complete if not _failed_verification(r)] or complete
    feasible = [r for r in complete if r["feasible"]]
    if feasible:
        return min(feasible, key=policy_key(study))
    meta = StudyMeta.of(study)
    budgets, floor = meta.budgets, meta.floors()
    key = policy_key(study)
    closest = min(complete, key=lambda r: (_overshoot(r, budgets, only=floor), _overshoot(r, budgets, but=floor),
                                           key(r)))
    if not allow_infeasible:
        raise ExportError(
            f"no trial of study {study.study_name!r} meets every budget; the closest, trial {closest['number']}, "
            f"breaks {', '.join(closest['violations'])}. Pass --allow-infeasible to export it anyway."
        )
    return closest


def trial_by_number(study: Any, number: int) -> Any:
    """The study's trial numbered ``number``.

    Raises:
        StudyError: the study has no such trial.
    """
    for t in study.get_trials(deepcopy=False):
        if t.number == number:
            return t
    raise StudyError(f"study {study.study_name!r} has no trial {number}")
