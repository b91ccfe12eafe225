"""Where studies live: Optuna's RDB storage plus sweep's own tables beside it.

sweep's tables change only through ``MIGRATIONS``, which are only ever appended;
the applied version is kept in ``sweep_schema``. Only the orchestrator writes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from .errors import StudyError

DEFAULT_STORAGE = "sqlite:///studies.db"

MIGRATIONS: list[list[str]] = [
    [
        "CREATE TABLE sweep_schema (version INTEGER NOT NULL)",
        "INSERT INTO sweep_schema (version) VALUES (0)",
        """CREATE TABLE sweep_trial_series (
            study_name TEXT NOT NULL,
            trial_number INTEGER NOT NULL,
            payload TEXT NOT NULL,
            PRIMARY KEY (study_name, trial_number)
        )""",
    ],
    [
        """CREATE TABLE sweep_verification (
            study_name TEXT NOT NULL,
            trial_number INTEGER NOT NULL,
            payload TEXT NOT NULL,
            PRIMARY KEY (study_name, trial_number)
        )""",
    ],
]
TABLES = ("sweep_trial_series", "sweep_verification")


def storage_url(url: str | None = None) -> str:
    """``--storage`` beats ``SWEEP_STORAGE`` beats ``sqlite:///studies.db``."""
    return url or os.environ.get("SWEEP_STORAGE") or DEFAULT_STORAGE


def sqlite_path(url: str) -> Path | None:
    return Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else None


def require_existing(url: str) -> None:
    """Refuse to read from a SQLite file that is not there (opening it would create it)."""
    path = sqlite_path(url)
    if path is not None and not path.exists():
        raise StudyError(f"no studies database at {path} (run a sweep first, or pass --storage)")


def _engine_kwargs(url: str) -> dict[str, Any]:
    # A reader such as optuna-dashboard may hold the file briefly; wait instead of failing.
    return {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}


def open_optuna_storage(url: str) -> Any:
    import optuna

    return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url))


class SeriesStore:
    """sweep's own tables of per-trial JSON payloads: the sweep's time series and answers
    (``sweep_trial_series``) and the runs of a verification (``sweep_verification``)."""

    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(url, **_engine_kwargs(url))
        self._migrate()

    def _migrate(self) -> None:
        with self.engine.begin() as conn:
            have = sa.inspect(conn).has_table("sweep_schema")
            version = conn.execute(sa.text("SELECT version FROM sweep_schema")).scalar_one() if have else 0
            if version > len(MIGRATIONS):
                raise StudyError(f"the database has sweep schema version {version}; this sweep knows up to "
                                 f"{len(MIGRATIONS)}. Upgrade sweep to read it.")
            for statements in MIGRATIONS[version:]:
                for sql in statements:
                    conn.execute(sa.text(sql))
            conn.execute(sa.text("UPDATE sweep_schema SET version = :v"), {"v": len(MIGRATIONS)})

    def put(self, study: str, trial: int, payload: dict[str, Any], table: str = "sweep_trial_series") -> None:
        assert table in TABLES  # a table name cannot be a bound parameter
        with self.engine.begin() as conn:
            conn.execute(sa.text(f"INSERT OR REPLACE INTO {table} VALUES (:s, :t, :p)"),
                         {"s": study, "t": trial, "p": json.dumps(payload)})

    def get(self, study: str, trial: int, table: str = "sweep_trial_series") -> dict[str, Any] | None:
        assert table in TABLES
        with self.engine.begin() as conn:
            row = conn.execute(sa.text(f"SELECT payload FROM {table} WHERE study_name=:s AND trial_number=:t"),
                               {"s": study, "t": trial}).first()
        return json.loads(row[0]) if row else None
