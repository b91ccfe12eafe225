"""A throwaway PostgreSQL server for benches and tests: ``initdb`` into a temp directory, on a
Unix socket only, run as the ``postgres`` user when we are root (``initdb`` refuses root).

The bench scripts import it as ``_pg`` (bench/ is their first path entry); the tests as
``pgserver`` (tests/pgserver.py loads this file)."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Iterator


def postgres_bin() -> Path | None:
    """Debian's PostgreSQL binaries, newest version first."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str]:
    """Start a server; yield a URL template with ``{db}`` for the database name; remove it all."""
    bindir = postgres_bin()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="sweep-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, log = root / "data", root / "server.log"
    try:
        subprocess.run(as_user + [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                                  "-E", "UTF8", "--no-sync"], check=True, capture_output=True)
        subprocess.run(as_user + [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-o",
                                  f"-k {root} -c listen_addresses='' -c fsync=off -c max_connections=200", "start"],
                       check=True, capture_output=True)
        yield f"postgresql+psycopg://postgres@/{{db}}?host={root}"
    finally:
        subprocess.run(as_user + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def new_database(template: str) -> str:
    """A fresh, empty database on the server; its URL."""
    import sqlalchemy as sa

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(template.format(db="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return template.format(db=name)


def pg_ctl(template: str, action: str) -> None:
    """Stop (``-m fast``: connections are cut, as in a restart or failover) or start the server that
    ``template`` (or a database URL on it) points at."""
    root = Path(template.rsplit("host=", 1)[1].split("&")[0])
    bindir = postgres_bin()
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    args = ["-m", "fast", "stop"] if action == "stop" else \
        ["-l", str(root / "server.log"), "-o", f"-k {root} -c listen_addresses='' -c fsync=off -c max_connections=200",
         "start"]
    subprocess.run(as_user + [str(bindir / "pg_ctl"), "-D", str(root / "data"), "-w", *args], check=True,
                   capture_output=True)
