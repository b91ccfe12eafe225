"""The tests' name for bench/_pg.py, the throwaway PostgreSQL server the benches start too.

Loaded from its file, so neither directory goes onto the other's import path."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("_pg", Path(__file__).resolve().parent.parent / "bench" / "_pg.py")
assert _spec is not None and _spec.loader is not None
_pg = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_pg)

postgres_bin = _pg.postgres_bin
throwaway_postgres = _pg.throwaway_postgres
new_database = _pg.new_database
pg_ctl = _pg.pg_ctl
