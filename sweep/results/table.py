"""A study as a table of measurements: one JSON file, versioned, that needs no database to read.

Each finished trial is a row: its parameters, every figure, ok or failed with the reason,
and a configuration key, so repeats of one effective configuration group together.
Per-prompt latencies and phase times come along, so what-if analyses (early abort, a
sampler replayed against a recorded grid: ``bench/``) can run on the file alone.

A study's ``table_meta`` user attribute, written by whoever recorded it
(``bench/record_grid.py``: the command, wall time, grid points), is copied into the metadata.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sweep.errors import TableError
from sweep.measure.metrics import METRICS
from sweep.records import StudyMeta
from sweep.results.front import trial_row
from sweep.study.storage import SeriesStore, safe_url

TABLE_FORMAT = "sweep-table"
TABLE_VERSION = 1
TABLE_META_ATTR = "table_meta"  # study user attribute merged into the table's metadata
NOT_THE_CONFIG = ("interrupted", "orchestrator_lost")  # failures that say nothing about the configuration


def params_key(params: dict[str, Any]) -> str:
    """A trial's sampled parameters as one comparable string."""
    return json.dumps(params, sort_keys=True)


def config_key(config: dict[str, Any] | None) -> str | None:
    """A short hash of an effective configuration, without the model's path (which differs by host)."""
    if not config:
        return None
    canon = {k: v for k, v in config.items() if k != "model_path"}
    return hashlib.sha256(json.dumps(canon, sort_keys=True).encode()).hexdigest()[:12]


def describe_distribution(dist: Any) -> dict[str, Any]:
    """An Optuna distribution as plain JSON: its type and its choices or range."""
    import optuna

    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return {"type": "categorical", "choices": list(dist.choices)}
    if isinstance(dist, optuna.distributions.IntDistribution):
        return {"type": "int", "low": dist.low, "high": dist.high, "step": dist.step, "log": dist.log}
    return {"type": "float", "low": dist.low, "high": dist.high, "step": dist.step, "log": dist.log}


def _row(t: Any, payload: dict[str, Any] | None) -> dict[str, Any]:
    a = t.user_attrs
    ok = t.state.name == "COMPLETE"
    answers = (payload or {}).get("answers") or []
    marks = ((payload or {}).get("series") or {}).get("marks") or {}
    start = marks.get("start")
    return {
        **trial_row(t),
        "ok": ok,
        "fail_reason": None if ok else a.get("fail_reason", "unknown"),
        "fail_detail": None if ok else a.get("fail_detail"),
        "params": dict(t.params),
        "config_key": config_key(a.get("config")),
        "repeat": None,  # set once every row is known
        "by_kind": a.get("by_kind"),
        "wall_seconds": a.get("wall_seconds"),
        "measured_at": a.get("measured_at"),
        "repeat_of": a.get("repeat_of"),
        "latencies_s": [x["latency_s"] for x in answers],
        # Seconds since the worker was spawned at which each phase began (load, idle, active, done).
        "phases_s": {k: round(v - start, 4) for k, v in marks.items() if k != "start"} if start is not None else {},
    }


def make_table(study: Any, storage_url: str, command: list[str] | None = None) -> dict[str, Any]:
    """The study as a table: metadata and one row per finished (complete or failed) trial.

    Args:
        study: a sweep study (``load_study``).
        storage_url: where it lives; per-prompt latencies and phase times are read from there.
        command: the command line that asked for the table, recorded in the metadata.

    Returns:
        A dict: ``format``, ``version``, ``meta`` and ``rows``. Rows of one effective
        configuration share ``config_key`` and are numbered by ``repeat`` (0, 1, ...) in trial
        order; a trial that reused another's figures has ``repeat`` None and ``reused_from``, and a
        promotion (the configuration on more items) ``repeat`` None and ``promotes``.

    Raises:
        SweepError: the study was not made by sweep (``StudyMeta``).
    """
    from sweep import _optuna
    from sweep.study.storage import redact_argv

    meta = StudyMeta.of(study)
    store = SeriesStore(storage_url, write=False)
    trials = [t for t in study.get_trials(deepcopy=False) if t.state.name in ("COMPLETE", "FAIL")]
    rows = [_row(t, store.get(_optuna.trial_id(t))) for t in trials]
    seen: dict[str | None, int] = {}
    for r in rows:
        if r["reused_from"] is None and r["promotes"] is None:  # a promotion answered other items
            r["repeat"] = seen.get(r["config_key"], 0)
            seen[r["config_key"]] = r["repeat"] + 1
    params: dict[str, Any] = {}
    for t in trials:
        for name, dist in t.distributions.items():
            params.setdefault(name, describe_distribution(dist))
    starts = [r["measured_at"][0] for r in rows if r["measured_at"]]
    recorded = study.user_attrs.get(TABLE_META_ATTR) or {}
    return {
        "format": TABLE_FORMAT,
        "version": TABLE_VERSION,
        "meta": {
            "study": study.study_name,
            "storage": safe_url(storage_url),
            "objectives": [{"name": m, "direction": METRICS[m].direction} for m in meta.objectives],
            "budgets": meta.budgets,
            "params": params,
            "settings": meta.settings.to_dict(),
            "task_set": meta.task_set,
            "space_file": meta.space_file,
            "models": meta.models,
            "sweep_version": meta.sweep_version,
            "host": meta.host,
            "hardware_class": meta.hardware_class,
            "date": _iso(min(starts)) if starts else None,  # when the first trial was measured
            "last_measured": _iso(max(starts)) if starts else None,
            "command": redact_argv(recorded["command"]) if isinstance(recorded.get("command"), list)
            else recorded.get("command"),
            "wall_seconds": recorded.get("wall_seconds"),
            **{k: v for k, v in recorded.items() if k not in ("command", "wall_seconds")},
            "exported": {"at": _iso(datetime.now(timezone.utc).timestamp()),
                         "command": redact_argv(command or [Path(sys.argv[0]).name, *sys.argv[1:]]),
                         "python": platform.python_version()},
            "n_rows": len(rows),
            "n_configs": len({r["config_key"] for r in rows}),
        },
        "rows": rows,
    }


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def save_table(table: dict[str, Any], path: str | Path) -> Path:
    """Write a table as JSON (NaN is not JSON: figures never hold it, and a stray one is refused)."""
    path = Path(path)
    path.write_text(json.dumps(table, indent=1, allow_nan=False) + "\n")
    return path


def load_table(path: str | Path) -> dict[str, Any]:
    """Read a table written by ``save_table``.

    Raises:
        TableError: no such file, not JSON, not a sweep table, or another format version.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise TableError(f"{path}: no such table file") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise TableError(f"{path}: not JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != TABLE_FORMAT:
        raise TableError(f"{path}: not a sweep table (no \"format\": \"{TABLE_FORMAT}\")")
    if data.get("version") != TABLE_VERSION:
        raise TableError(f"{path}: table format version {data.get('version')!r}; this sweep reads version "
                         f"{TABLE_VERSION}")
    return data
