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


def password_role(url: str, user: str, password: str) -> str:
    """A role that must give its password (the throwaway server trusts every other one): created on the
    server ``url`` points at, with a ``pg_hba.conf`` line of its own put first and the file reloaded.
    Returns ``url`` as that role, with that password."""
    import sqlalchemy as sa

    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f"CREATE ROLE {user} LOGIN PASSWORD '{password}'"))
        hba = Path(conn.execute(sa.text("SHOW hba_file")).scalar_one())
        hba.write_text(f"local all {user} scram-sha-256\n" + hba.read_text())
        conn.execute(sa.text("SELECT pg_reload_conf()"))
    engine.dispose()
    return sa.engine.make_url(url).set(username=user, password=password).render_as_string(hide_password=False)
