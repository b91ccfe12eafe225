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
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import json
import os
import uuid
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator

import sqlalchemy as sa

from sweep.errors import StudyError

DEFAULT_STORAGE = "sqlite:///studies.db"
HEARTBEAT_SECONDS = 10  # how often an orchestrator marks its trial alive
GRACE_SECONDS = 60  # a RUNNING trial whose heartbeat is older than this lost its orchestrator

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
    # over). A server connection is checked before use (a restart drops it).
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


class StorageUnreachable(StudyError):
    """The database server did not answer (down, restarting, its socket gone): bad input to a
    command that only reads, but something a sweep waits out (``spool.transient``)."""


def _connect_error(url: str, exc: BaseException) -> StudyError:
    kind = StorageUnreachable if isinstance(exc, sa.exc.OperationalError) else StudyError
    return kind(f"cannot open the study storage {safe_url(url)}: {str(exc).splitlines()[0]}")


def safe_url(url: str) -> str:
    """The URL without its password, for messages and exports."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url


def redact_argv(argv: list[str]) -> list[str]:
    """A command line fit to store or show: every database URL in it (``--storage URL`` or
    ``--storage=URL``) without its password."""
    out = []
    for arg in argv:
        flag, eq, value = arg.partition("=") if arg.startswith("--") and "=" in arg else ("", "", arg)
        if "://" in value and "@" in value:
            value = safe_url(value)
        out.append(f"{flag}{eq}{value}" if eq else value)
    return out


def open_optuna_storage(url: str, write: bool = True) -> Any:
    """Optuna's RDB storage, with heartbeats. A writer creates the tables under ``schema_lock``."""
    import optuna

    from sweep._optuna import quiet

    quiet()
    interval, grace = heartbeat_settings()
    try:
        def make() -> optuna.storages.RDBStorage:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs(url), heartbeat_interval=interval,
                                              grace_period=grace, skip_table_creation=not write)

        if not write:
            return make()
        with schema_lock(url):
            return make()
    except (sa.exc.OperationalError, sa.exc.ArgumentError, ImportError) as exc:
        raise _connect_error(url, exc) from None
    except optuna.exceptions.StorageInternalError as exc:  # Optuna wraps a failed connection
        raise _connect_error(url, exc.__cause__ or exc) from None


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
        try:
            _ENGINES[url] = sa.create_engine(url, **engine_kwargs(url))
        except (sa.exc.ArgumentError, ImportError) as exc:
            raise _connect_error(url, exc) from None
    return _ENGINES[url]


@contextlib.contextmanager
def advisory_lock(url: str, name: str) -> Iterator[None]:
    """A PostgreSQL session advisory lock named ``name``, held on its own connection."""
    key = zlib.crc32(name.encode())
    try:
        conn = engine_for(url).connect()
    except sa.exc.OperationalError as exc:
        raise _connect_error(url, exc) from None
    try:
        conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": key})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            conn.commit()
    finally:
        conn.close()


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
        try:
            with self.engine.connect() as conn:
                if not sa.inspect(conn).has_table(schema_table.name):
                    return 0
                return int(conn.execute(sa.select(schema_table.c.version)).scalar_one())
        except sa.exc.OperationalError as exc:
            raise _connect_error(self.url, exc) from None

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
