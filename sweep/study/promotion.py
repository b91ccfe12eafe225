"""Promotion: more items for the configurations that matter, during the night.

A space's ``promote`` block names rungs of items (``prompts: [10, 40, 246]``) and the share
of a rung that goes on to the next (``keep``). Every trial is measured on the first rung. In
the manner of asynchronous successive halving, once a rung holds ``m`` configurations, the best
``floor(m * keep)`` of them are measured again on the next rung's items (a superset: the
stratified subset of more items), each as a *promotion trial* of its own: a trial with the
original's parameters and the user attributes ``promotes`` (the original's number), ``rung`` and
``items``. It is recorded through the spool like every trial, and claimed like one: it is
created RUNNING under the study's lock, after a look at every promotion already made, so that
of several orchestrators exactly one measures it.

A rung's best: configurations whose correctness interval reaches every floor budget come first
(a small sample does not rule out a good model), then the non-dominated rank on the study's
objectives, then the export policy's order. When the run has its trials, the policy's pick is
promoted too until it rests on the deepest rung any configuration reached (the second at least),
so the morning's answer never rests on the smallest sample alone, and a mean on few items never
wins over one on more for its luck alone.

Readers (``sweep.results.front.rows``) give each configuration the figures of its largest
sample: its promotion on the most items, or its verification where that has more.
"""

from __future__ import annotations

import math
from typing import Any

from sweep import _optuna
from sweep.errors import ExportError
from sweep.records import StudyMeta
from sweep.study.policy import _dominates, _signs, choose, policy_key, trial_by_number, trial_row

# A promotion that failed for one of these reasons measured nothing about the configuration; it is
# made again. Any other failure (a timeout or a crash on more items) is the configuration's.
NOT_ITS_FAULT = ("interrupted", "storage_error", "orchestrator_lost")


def rungs(prompts: list[int], n_tasks: int) -> list[int]:
    """The rungs' item counts on a task set of ``n_tasks`` items: each at most the whole set, and
    a rung no larger than the one below it dropped."""
    out: list[int] = []
    for n in prompts:
        n = min(n, n_tasks)
        if not out or n > out[-1]:
            out.append(n)
    return out


def is_promotion(t: Any) -> bool:
    return "promotes" in t.user_attrs


def _made(study: Any) -> dict[tuple[int, int], Any]:
    """Every promotion that counts, by (original number, rung): waiting, running, complete, or
    failed for a reason of the configuration's own."""
    out = {}
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        if "promotes" not in a or (t.state.name == "FAIL" and a.get("fail_reason") in NOT_ITS_FAULT):
            continue
        out[(int(a["promotes"]), int(a["rung"]))] = t
    return out


def _members(study: Any, made: dict[tuple[int, int], Any], rung: int) -> list[dict[str, Any]]:
    """The configurations measured on a rung, as rows of that rung's figures (``number``: the original's)."""

    if rung == 0:
        return [trial_row(t) for t in study.get_trials(deepcopy=False)
                if t.state.name == "COMPLETE" and not is_promotion(t) and "reused_from" not in t.user_attrs]
    return [{**trial_row(t), "number": n} for (n, r), t in made.items() if r == rung and t.state.name == "COMPLETE"]


def ranked(study: Any, members: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A rung's configurations, best first (the module docstring says how)."""

    meta = StudyMeta.of(study)
    signs = _signs(study)
    key = policy_key(study)

    def misses_floor(r: dict[str, Any]) -> bool:
        f = r["figures"]
        for name in meta.floors():
            bound = meta.budgets[name]
            value = f.get(name, math.nan)
            if name == "correctness":  # the interval's optimistic end: a small sample rules out little
                value = f.get("correctness_ci_high", value)
            if math.isnan(value) or ("min" in bound and value < bound["min"]) or \
                    ("max" in bound and value > bound["max"]):
                return True
        return False

    rank: dict[int, int] = {}
    left = list(members)
    level = 0
    while left:
        front = [r for r in left if not any(_dominates(o["values"], r["values"], signs) for o in left if o is not r)]
        for r in front:
            rank[id(r)] = level
        left = [r for r in left if id(r) not in rank]
        level += 1
    return sorted(members, key=lambda r: (misses_floor(r), rank[id(r)], key(r)))


def due(study: Any, sizes: list[int], keep: float, finishing: bool) -> tuple[int, int] | None:
    """The promotion to make now, as (original trial number, rung), or None. Deeper rungs first.
    ``finishing``: the run has its trials, so the policy's pick is promoted too while it rests on
    a rung below the deepest reached (the second at least). Call it under the study's lock, with
    the trial's creation (``start``)."""

    made = _made(study)
    for rung in range(len(sizes) - 2, -1, -1):
        members = _members(study, made, rung)
        for r in ranked(study, members)[:math.floor(len(members) * keep)]:
            if (r["number"], rung + 1) not in made:
                return r["number"], rung + 1
    if finishing and len(sizes) > 1:
        try:
            pick = choose(study, allow_infeasible=True)
        except ExportError:
            return None
        # The pick goes as deep as the deepest rung any configuration reached (the second at least):
        # a mean on fewer items must not win over one on more for its luck alone.
        deepest = max([1] + [r for (_, r), t in made.items() if t.state.name == "COMPLETE"])
        at = (pick.get("promoted") or {}).get("rung", 0)
        if at < deepest and (pick["number"], at + 1) not in made:
            return pick["number"], at + 1
    return None


def start(study: Any, original: int, rung: int, items: int) -> Any:
    """The promotion trial, created RUNNING with the original's parameters (the sampler's queue
    is not used: another orchestrator's ask would take it as a new configuration)."""
    import optuna
    from optuna.trial import TrialState

    t = trial_by_number(study, original)
    frozen = optuna.trial.create_trial(state=TrialState.RUNNING, params=t.params, distributions=t.distributions,
                                       user_attrs={"promotes": original, "rung": rung, "items": items})
    return optuna.trial.Trial(study, _optuna.add_trial(study, frozen))
