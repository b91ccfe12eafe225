"""sweep: find out whether a local LLM can run in the background, invisible and still correct.

The public names below are imported on first use, so ``import sweep`` and
``sweep --help`` stay fast (Optuna, pydantic and SQLAlchemy load only when needed).
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import ExportError, ModelError, SpaceError, StudyError, SweepError, TableError, TaskFileError

_LAZY = {
    "ModelFile": "models", "Registry": "models",
    "Outcome": "records", "StudyMeta": "records", "TrialConfig": "records", "TrialSettings": "records",
    "choose": "results", "export_record": "export", "render": "export", "pareto_front": "results", "rows": "results",
    "trial_series": "results",
    "export_table": "table", "load_table": "table", "save_table": "table",
    "run_trial": "runner",
    "Space": "space", "load_space": "space",
    "load_study": "study", "run_study": "orchestrator",
    "Task": "tasks", "load_tasks": "tasks", "score": "tasks", "stratified_subset": "tasks",
}

__all__ = [
    "ExportError", "ModelError", "ModelFile", "Outcome", "Registry", "Space", "SpaceError", "StudyError", "StudyMeta",
    "SweepError", "TableError", "Task", "TaskFileError", "TrialConfig", "TrialSettings", "choose", "export_record", "export_table",
    "load_space", "load_study", "load_table", "load_tasks", "pareto_front", "render", "rows", "run_study", "run_trial",
    "save_table", "score", "stratified_subset", "trial_series",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'sweep' has no attribute {name!r}")
