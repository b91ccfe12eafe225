"""Where studies live: Optuna's RDB storage plus sweep's own tables beside it, on SQLite or PostgreSQL.

sweep's tables are SQLAlchemy ``Table`` objects keyed by Optuna's ``trial_id``
(unique in the database) and carrying its ``study_id``; rows are written with a
per-dialect upsert. The schema changes only through ``MIGRATIONS``, which are only
ever appended; the applied version is kept in ``sweep_schema``. A fresh database is
created at the latest version. ``sweep_database`` holds the database's identity, a
random id written once: its URL alone does not name it (the default SQLite path is
relative, so every project directory has the same one). Schema changes and study
creation run under ``schema_lock``, so processes opening one database at once never
race. Readers (``write=False``) never write, and refuse a database whose sweep schema
is older.

A PostgreSQL lock (``schema_lock``, ``study_lock``) that is not had at once is waited for
aloud: every so often a line on stderr names its holder (its pid and host, from the
``application_name`` every sweep connection carries), for a holder may be stopped (Ctrl-Z,
SIGSTOP) or cut off while inside. The wait has no bound: a live holder lets go.

A server that refuses the connection (a wrong password, user or database name) is bad input
(``StorageRefused``, exit 2 at once); one that does not answer is waited for (``StorageUnreachable``).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import json
import os
import re
import socket
import sys
import time
import uuid
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator

import sqlalchemy as sa

from sweep.errors import StudyError

DEFAULT_STORAGE = "sqlite:///studies.db"
HEARTBEAT_SECONDS = 10  # how often an orchestrator marks its trial alive
GRACE_SECONDS = 60  # a RUNNING trial whose heartbeat is older than this lost its orchestrator
LOCK_SAY_S = 5.0  # a PostgreSQL lock not had within this is waited for aloud, naming its holder,
LOCK_REPEAT_S = 60.0  # and the line is said again at this interval while the wait lasts

metadata = sa.MetaData()
schema_table = sa.Table("sweep_schema", metadata, sa.Column("version", sa.Integer, nullable=False))


def _payload_table(name: str) -> sa.Table:
    return sa.Table(name, metadata,
                    sa.Column("trial_id", sa.Integer, primary_key=True, autoincrement=False),
                    sa.Column("study_id", sa.Integer, nullable=False, index=True),
                    sa.Column("payload", sa.Text, nullable=False))


SERIES = _payload_table("sweep_series")  # a sweep trial's time series and answers
VERIFICATION = _payload_table("sweep_verified")  # the runs of a trial's verification
IDENTITY = sa.Table("sweep_database", metadata, sa.Column("database_id", sa.String(32), nullable=False))


def _v3_key_by_trial_id(conn: sa.Connection) -> None:
    """Versions 1-2 keyed rows by study name and trial number: a study deleted and made again
    under the same name inherited them. Move them to tables keyed by Optuna's ids."""
    SERIES.create(conn, checkfirst=True)
    VERIFICATION.create(conn, checkfirst=True)
    for old, new in (("sweep_trial_series", SERIES), ("sweep_verification", VERIFICATION)):
        conn.execute(sa.text(
            f"INSERT INTO {new.name} (trial_id, study_id, payload) SELECT t.trial_id, t.study_id, o.payload "
            f"FROM {old} o JOIN studies s ON s.study_name = o.study_name "
            "JOIN trials t ON t.study_id = s.study_id AND t.number = o.trial_number"))
        conn.execute(sa.text(f"DROP TABLE {old}"))


def _v4_identity(conn: sa.Connection) -> None:
    """A spooled measurement named its database by URL alone, and ``sqlite:///studies.db`` is another
    file in each directory: give the database an identity of its own, which its records carry."""
    IDENTITY.create(conn, checkfirst=True)
    _give_identity(conn)


def _give_identity(conn: sa.Connection) -> None:
    """The database's random id, written once (the caller holds ``schema_lock``)."""
    if conn.execute(sa.select(IDENTITY.c.database_id)).first() is None:
        conn.execute(IDENTITY.insert().values(database_id=uuid.uuid4().hex))


# Each migration takes a database at the previous version to the next. Append only.
MIGRATIONS: list[Callable[[sa.Connection], object]] = [
    lambda conn: conn.execute(sa.text(
        "CREATE TABLE sweep_trial_series (study_name TEXT NOT NULL, trial_number INTEGER NOT NULL, "
        "payload TEXT NOT NULL, PRIMARY KEY (study_name, trial_number))")),
    lambda conn: conn.execute(sa.text(
        "CREATE TABLE sweep_verification (study_name TEXT NOT NULL, trial_number INTEGER NOT NULL, "
        "payload TEXT NOT NULL, PRIMARY KEY (study_name, trial_number))")),
    _v3_key_by_trial_id,
    _v4_identity,
]
SCHEMA_VERSION = len(MIGRATIONS)


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


def engine_kwargs(url: str) -> dict[str, Any]:
    # A reader such as optuna-dashboard, or a second orchestrator, may hold the file briefly:
    # wait instead of failing (``SWEEP_SQLITE_BUSY_S``, 60 s; past it the spool's retries take
    # over). A server connection is checked before use (a restart drops it), and a PostgreSQL one
    # says whose it is, for a process waiting for a lock it holds (unless the URL names it).
    if url.startswith("postgresql") and "application_name" not in _parsed(url).query:
        return {"pool_pre_ping": True, "connect_args": {"application_name": application_name()}}
    if not url.startswith("sqlite"):
        return {"pool_pre_ping": True}
    try:
        busy = float(os.environ.get("SWEEP_SQLITE_BUSY_S", 60))
    except ValueError:
        raise StudyError("SWEEP_SQLITE_BUSY_S must be a number of seconds") from None
    return {"connect_args": {"timeout": busy}}


def heartbeat_settings() -> tuple[int, int]:
    """(interval, grace) in whole seconds, from ``SWEEP_HEARTBEAT_SECONDS``/``SWEEP_GRACE_SECONDS``."""
    try:
        interval = int(os.environ.get("SWEEP_HEARTBEAT_SECONDS", HEARTBEAT_SECONDS))
        grace = int(os.environ.get("SWEEP_GRACE_SECONDS", GRACE_SECONDS))
    except ValueError:
        raise StudyError("SWEEP_HEARTBEAT_SECONDS and SWEEP_GRACE_SECONDS must be whole seconds") from None
    if not 0 < interval < grace:
        raise StudyError(f"the heartbeat interval ({interval} s) must be positive and below the grace period "
                         f"({grace} s)")
    return interval, grace


def application_name() -> str:
    """How this process's PostgreSQL sessions name themselves (``SWEEP_HOST_ID`` names a simulated host)."""
    host = os.environ.get("SWEEP_HOST_ID") or socket.gethostname()
    return f"sweep pid {os.getpid()} on {host}"[:63]  # PostgreSQL keeps 63 bytes


class StorageUnreachable(StudyError):
    """The database server did not answer (down, restarting, its socket gone): bad input to a
    command that only reads, but something a sweep waits out (``spool.transient``)."""


class StorageRefused(StudyError):
    """The server answered and refused the connection for a reason no wait mends (a wrong password,
    user or database name): bad input, which a sweep never retries."""


# The reasons a server refuses a connection for good: PostgreSQL's (libpq gives no SQLSTATE for a failed
# connection, only its text) and MySQL's.
_REFUSED = re.compile(r'\w+ authentication failed for user "[^"]*"|no password supplied|no pg_hba\.conf entry.*'
                      r'|(database|role) "[^"]*" does not exist|role "[^"]*" is not permitted to log in'
                      r'|permission denied for database.*|access denied for user.*|unknown database.*', re.IGNORECASE)


def _connect_error(url: str, exc: BaseException) -> StudyError:
    """The error to raise for a failed connection. Raise it outside the ``except`` that caught ``exc``:
    ``spool.transient`` follows ``__context__`` and would take a refusal for an outage."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, sa.exc.OperationalError):
        refused = next((m.group(0).strip() for line in text.splitlines() if (m := _REFUSED.search(line))), None)
        if refused:
            return StorageRefused(f"the study storage {safe_url(url)} refused the connection: {refused}; check the "
                                  "user, the password and the database name in --storage (or SWEEP_STORAGE)")
        return StorageUnreachable(f"cannot open the study storage {safe_url(url)}: {text.splitlines()[0]}")
    return StudyError(f"cannot open the study storage {safe_url(url)}: {text.splitlines()[0]}")


def _parsed(url: str) -> sa.engine.URL:
    """The URL parsed.

    Raises:
        StudyError: it is not a database URL (the message shows it without its secrets).
    """
    try:
        return sa.engine.make_url(url)
    except (sa.exc.ArgumentError, ValueError) as exc:
        raise StudyError(f"{_masked(url)} is not a database URL ({exc})") from None


def secret_query_key(key: str) -> bool:
    """Whether a URL query key names a secret: ``password``, ``sslpassword``, ``passwd``, ``pwd``, ``*secret*``,
    ``*token*``."""
    key = key.lower()
    return key == "pwd" or any(word in key for word in ("password", "passwd", "secret", "token"))


def _masked(url: str) -> str:
    """``url`` with its password and secret query values as ``***``, by pattern (for a URL that does not parse)."""
    url = re.sub(r"(://[^/@:]*:)[^@]*@", r"\1***@", url)
    return re.sub(r"([?&])([^=&#]+)=([^&#]*)", lambda m: f"{m[1]}{m[2]}={'***' if secret_query_key(m[2]) else m[3]}", url)


def safe_url(url: str) -> str:
    """The URL without its password, nor any query value whose key names a secret (``?password=``,
    ``sslpassword``, ``…secret…``, ``…token…``), for messages and exports."""
    try:
        parsed = sa.engine.make_url(url)
    except (sa.exc.ArgumentError, ValueError):
        return _masked(url)
    hidden = parsed.set(query={k: ("***" if secret_query_key(k) else v) for k, v in parsed.query.items()})
    return hidden.render_as_string(hide_password=True).replace("=%2A%2A%2A", "=***")


def redact_argv(argv: list[str]) -> list[str]:
    """A command line fit to store or show: every database URL in it (``--storage URL`` or
    ``--storage=URL``) without its password or the secrets of its query."""
    out = []
    for arg in argv:
        flag, eq, value = arg.partition("=") if arg.startswith("--") and "=" in arg else ("", "", arg)
        if "://" in value and "***" in safe_url(value):  # only a URL with a secret is rewritten
            value = safe_url(value)
        out.append(f"{flag}{eq}{value}" if eq else value)
    return out


def open_optuna_storage(url: str, write: bool = True) -> Any:
    """Optuna's RDB storage, with heartbeats. A writer creates the tables under ``schema_lock``."""
    import optuna

    from sweep._optuna import quiet

    quiet()
    interval, grace = heartbeat_settings()
    _parsed(url)
    error: StudyError
    try:
        def make() -> optuna.storages.RDBStorage:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs(url), heartbeat_interval=interval,
                                              grace_period=grace, skip_table_creation=not write)

        if not write:
            return make()
        with schema_lock(url):
            return make()
    except (sa.exc.OperationalError, sa.exc.ArgumentError, ImportError) as exc:
        error = _connect_error(url, exc)
    except optuna.exceptions.StorageInternalError as exc:  # Optuna wraps a failed connection
        error = _connect_error(url, exc.__cause__ or exc)
    raise error  # outside the handlers (``_connect_error``)


@contextlib.contextmanager
def schema_lock(url: str) -> Iterator[None]:
    """Serialise processes that create tables or studies in one database.

    SQLite file: ``flock`` on the database file itself (SQLite's own locks are POSIX
    record locks, which ``flock`` does not touch). PostgreSQL: a session advisory
    lock. Other databases: no lock (say so in the README before supporting one).
    """
    path = sqlite_path(url)
    if path is not None:
        try:
            f = open(path, "ab")
        except OSError as exc:
            raise StudyError(f"cannot open the studies database {path}: {exc.strerror}") from None
        with f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
        return
    if url.startswith("postgresql"):
        with advisory_lock(url, "sweep-schema"):
            yield
        return
    yield


_ENGINES: dict[str, sa.Engine] = {}


def engine_for(url: str) -> sa.Engine:
    """One engine (and its pool) per URL per process."""
    if url not in _ENGINES:
        _parsed(url)
        try:
            _ENGINES[url] = sa.create_engine(url, **engine_kwargs(url))
        except (sa.exc.ArgumentError, ImportError) as exc:
            raise _connect_error(url, exc) from None
    return _ENGINES[url]


def _connect(url: str) -> sa.Connection:
    """A connection from the URL's engine."""
    error: StudyError
    try:
        return engine_for(url).connect()
    except sa.exc.OperationalError as exc:
        error = _connect_error(url, exc)
    raise error  # outside the handler (``_connect_error``)


@contextlib.contextmanager
def advisory_lock(url: str, name: str) -> Iterator[None]:
    """A PostgreSQL session advisory lock named ``name``, held on its own connection; waited for
    without bound, naming its holder on stderr now and then (``LOCK_SAY_S``, ``LOCK_REPEAT_S``)."""
    key = zlib.crc32(name.encode())
    conn = _connect(url)
    try:
        _acquire(conn, key, f"the lock {name!r} on {safe_url(url)}")
        try:
            yield
        finally:
            _release(conn, key)
    finally:
        conn.close()


def _acquire(conn: sa.Connection, key: int, what: str) -> None:
    """``pg_advisory_lock`` under a ``lock_timeout`` (``SET LOCAL``: for this transaction only, so the
    pooled connection keeps none); each time it runs out, say who holds the lock, and wait again.
    (A try-lock loop would poll, and keep no place in the server's queue of waiters.)"""
    started = time.monotonic()
    timeout = LOCK_SAY_S
    while True:
        try:
            conn.execute(sa.text(f"SET LOCAL lock_timeout = {max(1, round(timeout * 1000))}"))
            conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            conn.commit()
            return
        except sa.exc.DBAPIError as exc:
            if _sqlstate(exc) != "55P03":  # lock_not_available: the timeout ran out; anything else is raised
                raise
        conn.rollback()
        waited = time.monotonic() - started
        print(f"waiting {waited:.0f} s for {what}, held by {_lock_holder(conn, key)}", file=sys.stderr, flush=True)
        timeout = LOCK_REPEAT_S


def _sqlstate(exc: sa.exc.DBAPIError) -> str | None:
    """The SQLSTATE of a failed statement (psycopg 3 calls it ``sqlstate``, psycopg2 ``pgcode``)."""
    return getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)


def _lock_holder(conn: sa.Connection, key: int) -> str:
    """Who holds the advisory lock ``key`` in this database, in words, from ``pg_locks`` and
    ``pg_stat_activity`` (a role that may not see another's session gets its backend pid only)."""
    row = conn.execute(sa.text(
        "SELECT l.pid, a.application_name, a.client_addr::text, a.state, "
        "EXTRACT(EPOCH FROM now() - a.state_change) FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 AND l.classid::bigint = :hi "
        "AND l.objid::bigint = :lo AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"),
        {"hi": key >> 32, "lo": key & 0xFFFFFFFF}).first()
    conn.rollback()
    if row is None:
        return "a session that has just let go; trying again"
    pid, app, addr, state, for_s = row
    where = f"from {addr}" if addr else "local socket"
    idle = f", {state} for {float(for_s or 0):.0f} s" if state else ""
    return (f"{app or 'an unnamed client'} (server backend {pid}, {where}{idle}); still waiting: a live holder "
            f"lets go, a stopped one once continued; if it is gone, pg_terminate_backend({pid}) on the server frees it")


def _release(conn: sa.Connection, key: int) -> None:
    """Let go of the lock. A connection that is gone took its session's lock with it: it is dropped
    from the pool rather than failing the block that ran under the lock."""
    try:
        conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        conn.commit()
    except sa.exc.DBAPIError:
        conn.invalidate()


@contextlib.contextmanager
def study_lock(url: str, study_id: int) -> Iterator[None]:
    """Serialise the count-then-ask step of orchestrators on several hosts (PostgreSQL only:
    SQLite is one host, where the measurement lock already serialises them)."""
    if url.startswith("postgresql"):
        with advisory_lock(url, f"sweep-study-{study_id}"):
            yield
    else:
        yield


def _upsert(conn: sa.Connection, table: sa.Table, row: dict[str, Any]) -> None:
    dialect = conn.dialect.name
    if dialect in ("sqlite", "postgresql"):
        insert = importlib.import_module(f"sqlalchemy.dialects.{dialect}").insert
        stmt = insert(table).values(**row)
        conn.execute(stmt.on_conflict_do_update(index_elements=["trial_id"],
                                                set_={k: stmt.excluded[k] for k in row if k != "trial_id"}))
        return
    conn.execute(table.delete().where(table.c.trial_id == row["trial_id"]))
    conn.execute(table.insert().values(**row))


class SeriesStore:
    """sweep's own tables of per-trial JSON payloads: a sweep trial's time series and answers
    (``SERIES``) and the runs of a verification (``VERIFICATION``)."""

    def __init__(self, url: str, write: bool = True) -> None:
        self.url = url
        self.engine = engine_for(url)
        self.version = self._read_version()
        self.database_id = self._read_identity() if self.version == SCHEMA_VERSION else None
        if self.version == SCHEMA_VERSION:
            return
        if self.version > SCHEMA_VERSION:
            raise StudyError(f"the database has sweep schema version {self.version}; this sweep knows up to "
                             f"{SCHEMA_VERSION}. Upgrade sweep to read it.")
        if write:
            with schema_lock(url):
                self._migrate()
            self.database_id = self._read_identity()
        elif self.version:
            raise StudyError(f"the database {safe_url(url)} has sweep schema version {self.version}, older than this "
                             f"sweep's {SCHEMA_VERSION}; `sweep db upgrade` brings it up to date (it writes)")

    def _read_version(self) -> int:
        error: StudyError
        try:
            with self.engine.connect() as conn:
                if not sa.inspect(conn).has_table(schema_table.name):
                    return 0
                return int(conn.execute(sa.select(schema_table.c.version)).scalar_one())
        except sa.exc.OperationalError as exc:
            error = _connect_error(self.url, exc)
        raise error  # outside the handler (``_connect_error``)

    def _read_identity(self) -> str:
        """Read once, when the store opens: a record is spooled before the database is touched."""
        with self.engine.connect() as conn:
            return str(conn.execute(sa.select(IDENTITY.c.database_id)).scalar_one())

    def _migrate(self) -> None:
        with self.engine.begin() as conn:
            version = int(conn.execute(sa.select(schema_table.c.version)).scalar_one()) \
                if sa.inspect(conn).has_table(schema_table.name) else None
            if version is None:  # a fresh database: the latest tables at once
                metadata.create_all(conn)
                conn.execute(schema_table.insert().values(version=SCHEMA_VERSION))
                _give_identity(conn)
            else:
                for migrate in MIGRATIONS[version:]:
                    migrate(conn)
                conn.execute(schema_table.update().values(version=SCHEMA_VERSION))
        self.version = SCHEMA_VERSION

    def put(self, study_id: int, trial_id: int, payload: dict[str, Any], table: sa.Table = SERIES) -> None:
        with self.engine.begin() as conn:
            _upsert(conn, table, {"trial_id": trial_id, "study_id": study_id, "payload": json.dumps(payload)})

    def get(self, trial_id: int, table: sa.Table = SERIES) -> dict[str, Any] | None:
        if not self.version:
            return None  # a database no sweep has written to: nothing stored
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(table.c.payload).where(table.c.trial_id == trial_id)).first()
        return json.loads(row[0]) if row else None

    def forget_study(self, study_id: int) -> None:
        """Drop rows left by a deleted study whose id the database has given out again."""
        with self.engine.begin() as conn:
            for table in (SERIES, VERIFICATION):
                conn.execute(table.delete().where(table.c.study_id == study_id))
