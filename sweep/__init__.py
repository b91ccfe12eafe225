"""sweep: find out whether a local LLM can run in the background, invisible and still correct.

The public names below are imported on first use, so ``import sweep`` and
``sweep --help`` stay fast (Optuna, pydantic and SQLAlchemy load only when needed).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import ExportError, ModelError, SpaceError, StudyError, SweepError, TableError, TaskFileError

if TYPE_CHECKING:  # the names _LAZY serves, so that mypy and IDEs see them; never run
    from .export import export_record, render
    from .importers import import_tasks
    from .models import ModelFile, Registry
    from .orchestrator import run_study
    from .records import Outcome, StudyMeta, TrialConfig, TrialSettings
    from .results import choose, pareto_front, rows, trial_series
    from .runner import run_trial
    from .space import Space, load_space
    from .study import load_study
    from .table import export_table, load_table, save_table
    from .tasks import Task, load_tasks, score, stratified_subset

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
    "import_tasks": "importers",
}

__all__ = [
    "ExportError", "ModelError", "ModelFile", "Outcome", "Registry", "Space", "SpaceError", "StudyError", "StudyMeta",
    "SweepError", "TableError", "Task", "TaskFileError", "TrialConfig", "TrialSettings", "choose", "export_record", "export_table",
    "import_tasks", "load_space", "load_study", "load_table", "load_tasks", "pareto_front", "render", "rows", "run_study", "run_trial",
    "save_table", "score", "stratified_subset", "trial_series",
]


if not TYPE_CHECKING:  # seen by mypy, a module __getattr__ would make every misspelt name Any

    def __getattr__(name: str) -> Any:
        if name in _LAZY:
            return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        raise AttributeError(f"module 'sweep' has no attribute {name!r}")
