"""From a finished study to a decision, as the views show it: the front's moves under
verification, the policy's reason for its pick, the constant answer's bar, a trial's series,
and the fleet. The rows, the front and the policy itself are ``sweep.study.policy``'s,
re-exported here.
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
# The rows, the front and the policy: sweep.study.policy's, under the names the views have always used.
from sweep.study.policy import _dominates as _dominates
from sweep.study.policy import _failed_verification as _failed_verification
from sweep.study.policy import _pool as _pool
from sweep.study.policy import _signs as _signs
from sweep.study.policy import choose as choose
from sweep.study.policy import pareto_front as pareto_front
from sweep.study.policy import policy_key as policy_key
from sweep.study.policy import rows as rows
from sweep.study.policy import trial_by_number as trial_by_number
from sweep.study.policy import trial_row as trial_row


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
