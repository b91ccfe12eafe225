"""From a finished study to a decision: rows, the Pareto front, the export policy, exports.

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

from sweep import _optuna
from sweep.errors import ExportError, StudyError

# Figures against budgets (metrics) and a study's verifications (records) live below the writer
# (sweep.study.writer), which needs them too; the views import them from here as before.
from sweep.measure.metrics import METRICS, MISSING_FIGURE, constraint_values  # noqa: F401
from sweep.records import VERIFIED_PREFIX as VERIFIED_PREFIX
from sweep.records import StudyMeta
from sweep.records import verifications as verifications


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


def front_moves(study: Any) -> list[str]:
    """How the verified figures change the front, one sentence per trial that moves."""
    before = {r["number"] for r in pareto_front(study, prefer_verified=False)[0]}
    after_rows = rows(study)
    after = {r["number"] for r in pareto_front(study)[0]}
    pool, _ = _pool(after_rows)
    by_number = {r["number"]: r for r in after_rows}
    signs = _signs(study)
    moves = []
    for n in sorted(before - after):
        r = by_number[n]
        if _failed_verification(r):
            why = f"its verification failed ({r['verified']['failed']})"
        elif r not in pool:
            why = "on verified figures it breaks " + ", ".join(r["violations"])
        else:
            dominators = [o["number"] for o in pool if _dominates(o["values"], r["values"], signs)]
            why = "on verified figures it is dominated by trial " + ", ".join(map(str, dominators))
        moves.append(f"trial {n} leaves the front: {why}")
    for n in sorted(after - before):
        label = "verified" if by_number[n]["verified"] else "not verified"
        moves.append(f"trial {n} joins the front ({label}): on the verified figures no trial dominates it any more")
    return moves


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


def why_chosen(study: Any, r: dict[str, Any]) -> str:
    """The policy's reason for its pick, in one sentence that names the floor."""
    meta = StudyMeta.of(study)
    floor = meta.floors()
    named = " and ".join(_bound_text(n, meta.budgets[n]) for n in floor) or "none"
    if r["feasible"]:
        return (f"it meets every budget, and is the best of those that do on {meta.objectives[0]}"
                + (f", then {', '.join(meta.objectives[1:])}" if len(meta.objectives) > 1 else ""))
    broken = [n for n in r["violations"] if n in floor]
    if not broken:
        return (f"no trial meets every budget; it meets the floor ({named}), which comes first, and of those that "
                f"do it breaks the others ({', '.join(r['violations'])}) by the least")
    return (f"no trial meets the floor ({named}); it comes closest to it, then to the other budgets "
            f"({', '.join(n for n in r['violations'] if n not in floor) or 'none broken'})")


def _bound_text(name: str, bound: dict[str, float]) -> str:
    return f"{name} <= {bound['max']:g}" if "max" in bound else f"{name} >= {bound['min']:g}"


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


def constant_reference(study: Any) -> dict[int, float] | None:
    """What the best constant answer of each kind scores (chosen knowing the answers: the bar a model
    must clear) on each sample the study's figures rest on (the trials' own items, each promotion's,
    each verification's), by the number of items; None where the task set cannot be read any more."""
    from sweep.correctness.tasks import best_constants, load_tasks, stratified_subset
    from sweep.errors import TaskFileError

    meta = StudyMeta.of(study)
    try:
        tasks = load_tasks(meta.task_set)
    except TaskFileError:
        return None
    sizes = {meta.settings.prompts, *(v["n_items"] for v in verifications(study).values())}
    sizes |= {int(t.user_attrs["items"]) for t in study.get_trials(deepcopy=False) if "promotes" in t.user_attrs}
    out = {}
    for n in sorted(sizes):
        scores = [s for _, kind_scores in best_constants(stratified_subset(tasks, n)).values() for s in kind_scores]
        if scores:
            out[len(scores)] = sum(scores) / len(scores)
    return out or None


def no_better_than(r: dict[str, Any], constant: dict[int, float] | None) -> bool:
    """Whether a trial's correctness interval reaches down to the constant answer's score on as many items."""
    low, n = r["figures"].get("correctness_ci_low"), r["figures"].get("correctness_n")
    bar = constant.get(int(n)) if constant and n is not None else None
    return bar is not None and low is not None and low <= bar


def trial_by_number(study: Any, number: int) -> Any:
    """The study's trial numbered ``number``.

    Raises:
        StudyError: the study has no such trial.
    """
    for t in study.get_trials(deepcopy=False):
        if t.number == number:
            return t
    raise StudyError(f"study {study.study_name!r} has no trial {number}")


def trial_series(study: Any, number: int, storage_url: str) -> dict[str, Any] | None:
    """A sweep trial's monitor series (``series``: windows, phase tags, phase marks) and its
    answers (``answers``), as stored by the sweep; None when nothing was stored. Reads only."""
    from sweep.study.storage import SeriesStore

    return SeriesStore(storage_url, write=False).get(_optuna.trial_id(trial_by_number(study, number)))


def fleet_summary(storage_url: str) -> list[dict[str, Any]]:
    """One row per hardware class in the database: its studies, the trials done and meeting every
    budget, and the export policy's pick across them (feasible first, then the policy's order).
    Reads only."""
    import optuna

    from sweep.study.fleet import hosts
    from sweep.study.storage import open_optuna_storage

    storage = open_optuna_storage(storage_url, write=False)
    classes: dict[str, dict[str, Any]] = {}
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        if "budgets" not in study.user_attrs:
            continue  # not a sweep study
        hc = study.user_attrs.get("hardware_class") or {"name": "(unrecorded)", "fingerprint": {}}
        entry = classes.setdefault(hc["name"], {"class": hc["name"], "fingerprint": hc["fingerprint"],
                                                "studies": [], "hosts": set(), "done": 0, "feasible": 0, "picks": []})
        finished = rows(study)
        entry["studies"].append(study.study_name)
        entry["hosts"].update(hosts(study))
        entry["done"] += len(finished)
        entry["feasible"] += sum(r["feasible"] for r in finished)
        try:
            pick = choose(study, allow_infeasible=True)
        except ExportError:
            continue
        entry["picks"].append({**pick, "study": study.study_name})
    out = []
    for entry in classes.values():
        picks = sorted(entry.pop("picks"), key=lambda r: (not r["feasible"], -r["figures"].get("correctness", 0.0),
                                                         r["figures"].get("cpu_active_p99_share_pct", 1e9)))
        entry["hosts"] = sorted(entry["hosts"])
        entry["pick"] = picks[0] if picks else None
        out.append(entry)
    return sorted(out, key=lambda e: e["class"])
