"""sweep: find out whether a local LLM can run in the background, invisible and still correct.

The public names below are imported on first use, so ``import sweep`` and
``sweep --help`` stay fast (Optuna, pydantic and SQLAlchemy load only when needed).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sweep.errors import ExportError, ModelError, SpaceError, StudyError, SweepError, TableError, TaskFileError

if TYPE_CHECKING:  # the names _LAZY serves, so that mypy and IDEs see them; never run
    from sweep.correctness.importers import import_tasks
    from sweep.correctness.tasks import Task, load_tasks, score, stratified_subset
    from sweep.models.registry import ModelFile, Registry
    from sweep.records import Outcome, StudyMeta, TrialConfig, TrialSettings
    from sweep.results.export import export_record, render
    from sweep.results.front import choose, pareto_front, rows, trial_series
    from sweep.results.table import load_table, make_table, save_table
    from sweep.study.orchestrator import run_study
    from sweep.study.space import Space, load_space
    from sweep.study.writer import load_study
    from sweep.trial.runner import run_trial

_LAZY = {
    "ModelFile": "sweep.models.registry", "Registry": "sweep.models.registry",
    "Outcome": "sweep.records", "StudyMeta": "sweep.records", "TrialConfig": "sweep.records", "TrialSettings": "sweep.records",
    "choose": "sweep.results.front", "export_record": "sweep.results.export", "render": "sweep.results.export",
    "pareto_front": "sweep.results.front", "rows": "sweep.results.front", "trial_series": "sweep.results.front",
    "make_table": "sweep.results.table", "load_table": "sweep.results.table", "save_table": "sweep.results.table",
    "run_trial": "sweep.trial.runner",
    "Space": "sweep.study.space", "load_space": "sweep.study.space",
    "load_study": "sweep.study.writer", "run_study": "sweep.study.orchestrator",
    "Task": "sweep.correctness.tasks", "load_tasks": "sweep.correctness.tasks", "score": "sweep.correctness.tasks",
    "stratified_subset": "sweep.correctness.tasks",
    "import_tasks": "sweep.correctness.importers",
}

__all__ = [
    "ExportError", "ModelError", "ModelFile", "Outcome", "Registry", "Space", "SpaceError", "StudyError", "StudyMeta",
    "SweepError", "TableError", "Task", "TaskFileError", "TrialConfig", "TrialSettings", "choose", "export_record", "make_table",
    "import_tasks", "load_space", "load_study", "load_table", "load_tasks", "pareto_front", "render", "rows", "run_study", "run_trial",
    "save_table", "score", "stratified_subset", "trial_series",
]


if not TYPE_CHECKING:  # seen by mypy, a module __getattr__ would make every misspelt name Any

    def __getattr__(name: str) -> Any:
        if name in _LAZY:
            return getattr(importlib.import_module(_LAZY[name]), name)
        raise AttributeError(f"module 'sweep' has no attribute {name!r}")
