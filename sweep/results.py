"""From a finished study to a decision: rows, the Pareto front, the export policy, exports.

Export policy: trials that meet every budget first; among them the highest
correctness, then the lowest active p99 CPU, then the lowest p95 latency. If no
trial meets every budget, nothing is exported unless asked (``allow_infeasible``),
and then the *closest* trial is chosen: the smallest sum of budget overshoots,
each relative to its budget.
"""

from __future__ import annotations

import math
from typing import Any

from .errors import ExportError
from .metrics import METRICS


def rows(study: Any) -> list[dict[str, Any]]:
    """One dict per finished trial: number, state, config, figures, feasibility."""
    out = []
    for t in study.get_trials(deepcopy=False):
        if t.state.name not in ("COMPLETE", "FAIL"):
            continue
        a = t.user_attrs
        out.append({
            "number": t.number, "state": t.state.name, "config": a.get("config"),
            "figures": {k: v for k, v in a.items() if k in METRICS},
            "values": list(t.values) if t.values else None,
            "constraint_values": a.get("constraint_values"), "violations": a.get("violations", []),
            "feasible": t.state.name == "COMPLETE" and not a.get("violations"),
            "fail_reason": a.get("fail_reason"), "fail_detail": a.get("fail_detail"),
            "reused_from": a.get("reused_from"),
        })
    return out


def _dominates(a: list[float], b: list[float], signs: list[int]) -> bool:
    better = False
    for x, y, s in zip(a, b, signs):
        if s * x < s * y:
            return False
        better |= s * x > s * y
    return better


def pareto_front(study: Any) -> tuple[list[dict[str, Any]], bool]:
    """The non-dominated complete trials, among feasible ones if any exist.

    Returns the front and whether it is the feasible front (False: no trial met
    every budget, and the front shown ignores the budgets).
    """
    objectives = study.user_attrs["objectives"]
    signs = [1 if METRICS[m].direction == "maximize" else -1 for m in objectives]
    complete = [r for r in rows(study) if r["state"] == "COMPLETE" and r["reused_from"] is None]
    feasible = [r for r in complete if r["feasible"]]
    pool = feasible or complete
    front = [r for r in pool if not any(_dominates(o["values"], r["values"], signs) for o in pool if o is not r)]
    return sorted(front, key=_policy_key), bool(feasible)


def _policy_key(r: dict[str, Any]) -> tuple[float, ...]:
    f = r["figures"]
    return (not r["feasible"], -f.get("correctness", 0.0), f.get("cpu_active_p99_share_pct", math.inf),
            f.get("latency_p95_s", math.inf), r["number"])


def _overshoot(r: dict[str, Any], budgets: dict[str, dict[str, float]]) -> float:
    total = 0.0
    for bound, c in zip(budgets.values(), r["constraint_values"] or []):
        limit = bound.get("max", bound.get("min")) or 1.0
        total += max(c, 0.0) / abs(limit)
    return total


def choose(study: Any, allow_infeasible: bool = False, trial: int | None = None) -> dict[str, Any]:
    """The trial the export policy picks (or ``trial`` when given).

    Raises:
        ExportError: no complete trial, the named trial is not complete, or no
            trial meets every budget and ``allow_infeasible`` is False.
    """
    complete = [r for r in rows(study) if r["state"] == "COMPLETE"]
    if trial is not None:
        match = [r for r in complete if r["number"] == trial]
        if not match:
            raise ExportError(f"trial {trial} of study {study.study_name!r} is not a complete trial")
        return match[0]
    if not complete:
        raise ExportError(f"study {study.study_name!r} has no complete trial to export")
    feasible = [r for r in complete if r["feasible"]]
    if feasible:
        return min(feasible, key=_policy_key)
    budgets = study.user_attrs["budgets"]
    closest = min(complete, key=lambda r: (_overshoot(r, budgets), _policy_key(r)))
    if not allow_infeasible:
        raise ExportError(
            f"no trial of study {study.study_name!r} meets every budget; the closest, trial {closest['number']}, "
            f"breaks {', '.join(closest['violations'])}. Pass --allow-infeasible to export it anyway."
        )
    return closest
