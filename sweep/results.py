"""From a finished study to a decision: rows, the Pareto front, the export policy, exports.

Export policy: trials that meet every budget first; among them the highest
correctness, then the lowest active p99 CPU, then the lowest p95 latency. If no
trial meets every budget, nothing is exported unless asked (``allow_infeasible``),
and then the *closest* trial is chosen: the smallest sum of budget overshoots,
each relative to its budget.
"""

from __future__ import annotations

import math
import shlex
from datetime import datetime, timezone
from typing import Any

from .errors import ExportError, StudyError
from .metrics import METRICS
from .records import TrialConfig


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


def budget_report(row: dict[str, Any], budgets: dict[str, dict[str, float]]) -> dict[str, dict[str, Any]]:
    """Per budget: the bound, the measured value, whether it was met and by what margin."""
    out = {}
    for name, bound in budgets.items():
        value = row["figures"].get(name)
        kind, limit = ("max", bound["max"]) if "max" in bound else ("min", bound["min"])
        margin = None if value is None else (limit - value if kind == "max" else value - limit)
        out[name] = {kind: limit, "value": value, "met": margin is not None and margin >= 0, "margin": margin}
    return out


# llama-cpp-python chat_format -> llama.cpp built-in template, where the two agree.
_SERVER_TEMPLATES = {"chatml": "chatml", "gemma": "gemma", "llama-2": "llama2", "llama-3": "llama3",
                     "mistral-instruct": "mistral-v1", "vicuna": "vicuna", "zephyr": "zephyr", "phi3": "phi3"}


def llama_server_command(config: TrialConfig) -> str:
    """The equivalent llama-server command line (llama.cpp's own argument names)."""
    args = ["llama-server", "-m", config.model_path, "--threads", str(config.n_threads),
            "--threads-batch", str(config.n_threads_batch), "--batch-size", str(config.n_batch),
            "--ubatch-size", str(config.n_ubatch), "--ctx-size", str(config.n_ctx), "--n-gpu-layers", "0"]
    if config.cpus:
        mask = sum(1 << c for c in config.cpus)
        args += ["--cpu-mask", f"{mask:x}", "--cpu-strict", "1"]
    if config.nice > 0 or config.sched_policy in ("batch", "idle"):
        args += ["--prio", "-1"]  # llama-server's "low" priority; nice/policy are applied by the launcher below
    if config.chat_format in _SERVER_TEMPLATES:
        args += ["--chat-template", _SERVER_TEMPLATES[config.chat_format]]
    return shlex.join(args)


def launcher_prefix(config: TrialConfig) -> str:
    """Shell prefix that applies the OS knobs llama-server itself does not set."""
    parts = []
    if config.omp_wait_policy:
        parts.append(f"OMP_WAIT_POLICY={config.omp_wait_policy.upper()}")
    if config.gomp_spincount is not None:
        parts.append(f"GOMP_SPINCOUNT={config.gomp_spincount}")
    if config.sched_policy != "normal":
        parts += ["chrt", f"--{config.sched_policy}", "0"]
    if config.nice:
        parts += ["nice", "-n", str(config.nice)]
    return " ".join(parts)


def export_record(study: Any, row: dict[str, Any], storage_url: str) -> dict[str, Any]:
    """The full exported configuration, with where it came from."""
    if row["config"] is None:
        raise StudyError(f"trial {row['number']} has no stored configuration")
    config = TrialConfig.from_dict(row["config"])
    budgets = study.user_attrs["budgets"]
    report = budget_report(row, budgets)
    prefix = launcher_prefix(config)
    return {
        "schema": "sweep.export/1",
        "config": config.to_dict(),
        "settings": study.user_attrs.get("settings"),
        "llama_kwargs": config.llama_kwargs(),
        "environment": config.environment(),
        "llama_server": (prefix + " " if prefix else "") + llama_server_command(config),
        "budgets": report,
        "meets_all_budgets": all(b["met"] for b in report.values()),
        "metrics": row["figures"],
        "provenance": {
            "study": study.study_name, "trial": row["number"], "storage": storage_url,
            "space_file": study.user_attrs.get("space_file"), "task_set": study.user_attrs.get("task_set"),
            "host": study.user_attrs.get("host"), "sweep_version": study.user_attrs.get("sweep_version"),
            "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    }
