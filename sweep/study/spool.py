"""The spool: each measurement is on disk before it goes to the database, and replayed until it lands.

A trial's measurement (its figures, answers and series), or a verification's (its record and its
runs), is written atomically to a file in ``<cache>/spool/`` before the database is touched, and the
file is removed once the record is complete (``record``). Whatever happens in between (a PostgreSQL
restart, a dropped connection, SQLite's "database is locked", a full disk, the orchestrator killed),
the next ``sweep run``, ``sweep verify`` or ``sweep db upgrade`` on that database records what the
spool holds. Where the spool itself cannot be written and the database does not answer either, the
record is printed on stderr as the spool's JSON, its one copy left (``MeasurementLost``).

Recording is several writes (the series row, the user attributes, the constraints, Optuna's tell),
so ``apply`` is idempotent instead: every record carries the spool id, and a replay finds where the
last attempt stopped. A trial still RUNNING is recorded; one that carries the id is already done;
one failed meanwhile by another orchestrator (its owner looked lost) gets the measurement as a new
trial marked ``recorded_late_for``, once. A failed trial that already carried the figures (its
owner stopped between writing them and the tell) is marked ``recorded_late_as`` that new trial. A
replay that finds the late trial writes the rest again (its series, that mark): its maker may have
stopped between them. A verification's writes each replace the last.

A record names its database twice, by its URL (a SQLite path made absolute) and by the identity
the database holds (``sweep_database``), and its trial by study id, number, start and parameters:
``apply`` checks them all before it writes. A record that matches nothing here is left in place
and named, never recorded elsewhere.

A record is held (a lock on the file itself) by whoever records it: its writer from before it is
visible, a replay from before it reads the database. So two replays at once never record one
measurement twice, and a record whose holder died is free again (the kernel lets go of its lock).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Callable, ClassVar, Iterator

from sweep import _optuna
from sweep.errors import SweepError
from sweep.procs import owned_prefix, sweep_dead
from sweep.records import VERIFIED_PREFIX
from sweep.study.storage import VERIFICATION, SeriesStore, StorageUnreachable, secret_query_key

SPOOL_VERSION = 3  # 2: the database's identity, the study id and the trial's start; 3: records of verifications
RETRY_ENV = "SWEEP_DB_RETRY_S"  # how long a record waits for the database before the sweep stops
DEFAULT_RETRY_S = 600.0


class DatabaseUnavailable(SweepError):
    """The database stayed unreachable past the retry window; the measurement is safe in the spool."""

    exit_code = 5


class MeasurementLost(DatabaseUnavailable):
    """The database stayed unreachable and the spool could not be written: the record is kept only in
    the JSON line printed on stderr."""

    exit_code = 6


class SpoolMismatch(SweepError):
    """A spooled record that this database or study does not hold: it is left in place, never
    recorded elsewhere."""


def spool_dir() -> Path:
    """``SWEEP_SPOOL_DIR``, else ``<cache>/spool``: a local disk, never one shared between hosts."""
    from sweep.models.registry import cache_dir

    return Path(os.environ.get("SWEEP_SPOOL_DIR") or cache_dir() / "spool")


@dataclass(frozen=True)
class Pending:
    """One measurement on its way to the database."""

    kind: ClassVar[str] = "trial"
    tag: ClassVar[str] = "t"  # in the file's name
    id: str
    storage: str  # the database's URL without its password, a SQLite path absolute (``database_url``)
    study: str
    trial_id: int
    trial_number: int
    params: dict[str, Any]
    distributions: dict[str, str]  # Optuna's JSON form
    attrs: dict[str, Any]
    values: list[float] | None  # None: a failed trial
    constraints: list[float]
    payload: dict[str, Any] | None  # the series and answers (None: a reused trial, which has none of its own)
    # None in a record of spool version 1, which named its database by URL alone:
    database: str | None = None  # the database's identity (``SeriesStore.database_id``)
    study_id: int | None = None
    trial_start: str | None = None  # ``_started``

    @classmethod
    def of(cls, series: SeriesStore, study: Any, trial: Any, attrs: dict[str, Any], values: list[float] | None,
           constraints: list[float], payload: dict[str, Any] | None) -> Pending:
        """The record of ``trial``'s measurement in the database ``series`` opened: nothing here reads
        the database (it may be away)."""
        from optuna.distributions import distribution_to_json

        return cls(uuid.uuid4().hex, database_url(series.url), study.study_name, _optuna.trial_id(trial), trial.number,
                   dict(trial.params), {k: distribution_to_json(d) for k, d in trial.distributions.items()},
                   attrs, values, constraints, payload, series.database_id, _optuna.study_id(study), _started(trial))

    @property
    def feasible(self) -> bool:
        return self.values is not None and not self.attrs.get("violations")

    @property
    def what(self) -> str:
        return f"measurement of trial {self.trial_number}"


@dataclass(frozen=True)
class PendingVerification:
    """One verification on its way to the database: its record (the study's ``verified:<number>``) and
    its runs (a row of ``sweep_verified``), checked against its trial as a measurement is."""

    kind: ClassVar[str] = "verification"
    tag: ClassVar[str] = "v"
    id: str
    storage: str
    database: str | None
    study: str
    study_id: int
    trial_id: int
    trial_number: int
    trial_start: str | None
    params: dict[str, Any]
    record: dict[str, Any]
    runs: dict[str, Any]

    @classmethod
    def of(cls, series: SeriesStore, study: Any, trial: Any, record: dict[str, Any],
           runs: dict[str, Any]) -> PendingVerification:
        """The record of ``trial``'s verification; nothing here reads the database."""
        return cls(uuid.uuid4().hex, database_url(series.url), series.database_id, study.study_name,
                   _optuna.study_id(study), _optuna.trial_id(trial), trial.number, _started(trial), dict(trial.params),
                   record, runs)

    @property
    def what(self) -> str:
        return f"verification of trial {self.trial_number}"


Record = Pending | PendingVerification
_KINDS: dict[str, type[Record]] = {k.kind: k for k in (Pending, PendingVerification)}


def database_url(url: str) -> str:
    """The URL that names one database wherever it is used: without its password or any secret of its
    query, and a SQLite path absolute and without symlinks (the default ``sqlite:///studies.db`` is
    another file in each directory)."""
    import sqlalchemy as sa

    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        return url
    path = _sqlite_path(url)
    if path is not None:
        parsed = parsed.set(database=str(Path(path).resolve()))
    # A secret in the query (?password=, sslpassword, a token) names no database: it is left out,
    # so that a spool file never holds it.
    parsed = parsed.set(query={k: v for k, v in parsed.query.items() if not secret_query_key(k)})
    return parsed.render_as_string(hide_password=True)


def _sqlite_path(url: str) -> str | None:
    """The path of a SQLite file database, as the URL spells it (relative or not); None for any other."""
    import sqlalchemy as sa

    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        return None
    path = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or path in ("", ":memory:") or path.startswith("file:"):
        return None
    return path


def _relative_sqlite(url: str) -> bool:
    path = _sqlite_path(url)
    return path is not None and not os.path.isabs(path)


def _started(trial: Any) -> str | None:
    """When the trial started, in UTC: what tells it from the trial a study made again under the same
    name gets, which SQLite gives the same study id, trial id and number (and a seeded sampler the
    same parameters)."""
    start = trial.datetime_start
    return None if start is None else str(start.astimezone(datetime.timezone.utc).isoformat())


def _about(p: Record) -> str:
    return f"a {p.what} of study {p.study!r}"


def _tell(line: str) -> None:
    """Where a record left in place is named when the caller says nowhere else: seen even with --quiet."""
    print(line, file=sys.stderr, flush=True)


@contextlib.contextmanager
def holding(p: Record, directory: Path | None = None) -> Iterator[Path]:
    """The record, atomically and durably on disk (a temp file, fsync, rename, fsync of the directory),
    held by this process for the block. It is held from before its name is visible, which
    ``write_atomically`` could not do: no replay records a measurement its writer is still recording."""
    directory = directory or spool_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', p.study)}-{p.tag}{p.trial_number}-{p.id}.json"
    sweep_dead(directory, ".partial-")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=owned_prefix(".partial-"), suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        try:
            _lock(f)  # a file no one else has opened yet
            f.write(_dumps(p))
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync(directory)
        yield path


def write(p: Record, directory: Path | None = None) -> Path:
    """The record on disk, held by no one (``holding`` for the writer that records it itself)."""
    with holding(p, directory) as path:
        return path


def _dumps(p: Record) -> str:
    """A record file's text."""
    return json.dumps({"spool_version": SPOOL_VERSION, "kind": p.kind, **asdict(p)})


def _fsync(directory: Path) -> None:
    """The rename survives a power loss."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _lock(f: IO[Any]) -> bool:
    """An exclusive lock on the open file, without waiting (``flock`` on POSIX): the kernel lets go of
    it when the file is closed or its process dies, however it dies."""
    import portalocker

    try:
        portalocker.lock(f, portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING)
        return True
    except portalocker.exceptions.LockException:
        return False


@contextlib.contextmanager
def _claimed(path: Path) -> Iterator[bool]:
    """Whether this process holds the record for the block. False: another live process holds it (its
    writer still records it, or another replay does), or it is gone (recorded meanwhile). A holder
    removes the record before it lets go, so one that opened it before then finds its name gone."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        yield False
        return
    with f:
        yield _lock(f) and _names(path, f)


def _names(path: Path, f: IO[Any]) -> bool:
    """Whether ``path`` is still the open file's name."""
    try:
        return os.path.samestat(os.fstat(f.fileno()), os.stat(path))
    except FileNotFoundError:
        return False


def _records(directory: Path) -> list[Path]:
    """The record files, oldest first. A temp file (``.partial-PID-…``, empty or cut short when its
    writer was killed) is never one: a dead writer's is removed first, a live writer's left alone. A
    file gone meanwhile was recorded by another replay."""
    if not directory.is_dir():
        return []
    sweep_dead(directory, ".partial-")
    dated = []
    for path in directory.glob("*.json"):
        with contextlib.suppress(FileNotFoundError):
            if not path.name.startswith("."):
                dated.append((path.stat().st_mtime, path))
    return [path for _, path in sorted(dated)]


def _read(path: Path) -> Record | None:
    """A record file; None: it is gone (recorded meanwhile by another replay). A file of another spool
    version, or one that cannot be read, stops the caller with its name: it is left where it is."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise SweepError(f"{path}: a spooled measurement that cannot be read ({exc}); move it aside") from None
    if data.pop("spool_version", None) not in range(1, SPOOL_VERSION + 1):
        raise SweepError(f"{path}: a spooled measurement of another sweep version; this sweep reads "
                         f"versions 1 to {SPOOL_VERSION}")
    kind = data.pop("kind", Pending.kind)  # versions 1 and 2 spooled trials' measurements only
    try:
        return _KINDS[kind](**data)
    except (KeyError, TypeError) as exc:
        raise SweepError(f"{path}: a spooled measurement that cannot be read (kind {kind!r}: {exc}); "
                         "move it aside") from None


def _belongs(p: Record, series: SeriesStore) -> bool:
    """Whether the record is of this database: its identity and URL both (a copy of the database has
    its identity, not its URL).

    Raises:
        SpoolMismatch: the record may be this database's, but which database it is cannot be told.
    """
    here = database_url(series.url)
    if p.database is None:  # spool version 1: its URL alone names the database
        if not _relative_sqlite(p.storage):
            return database_url(p.storage) == here
        if database_url(p.storage) != here:
            return False
        raise SpoolMismatch(f"{_about(p)} spooled by an older sweep for the relative {p.storage}, which names "
                            f"no one directory's database; left in place (if it is {here}'s, write that as its "
                            '"storage" and run again)')
    # A record spooled before secrets were left out of its URL still names its database by it.
    ours, here_too = p.database == series.database_id, database_url(p.storage) == here
    if ours and not here_too:
        raise SpoolMismatch(f"{_about(p)} spooled for {p.storage}, which bears this database's identity (a copy "
                            "of it, or it under another URL); left in place: sweep db upgrade --storage with that "
                            "URL records it")
    if here_too and not ours:
        raise SpoolMismatch(f"{_about(p)} spooled for another database that was at this URL (its identity "
                            "differs: the file was replaced, or made again); left in place")
    return ours


def pending(series: SeriesStore, study: str | None = None, directory: Path | None = None,
            say: Callable[[str], None] = _tell) -> list[tuple[Path, Record]]:
    """The spooled records for the database ``series`` opened (and this study), oldest first. Another
    database's are not touched; one that may be this database's but cannot be told is named (``say``)
    and left in place.

    Raises:
        SweepError: a file of another spool version, or one that cannot be read (left where it is).
    """
    out = []
    for path in _records(directory or spool_dir()):
        p = _read(path)
        if p is None or (study is not None and p.study != study):
            continue
        try:
            if _belongs(p, series):
                out.append((path, p))
        except SpoolMismatch as exc:
            say(f"{path}: {exc}")
    return out


def _kill_at(step: str) -> None:
    """A test hook: ``SWEEP_TEST_KILL_AT=step`` kills this process just before that step of a record."""
    if os.environ.get("SWEEP_TEST_KILL_AT") == step:
        os.kill(os.getpid(), signal.SIGKILL)


def _its_trial(study: Any, series: SeriesStore, p: Record) -> Any:
    """The trial ``p`` is of, once the database, the study and the trial are checked to be the ones
    it was measured (or verified) on (a record of spool version 1 has no identity, study id or start
    to check).

    Raises:
        SpoolMismatch: naming what differs.
    """
    def refuse(why: str) -> SpoolMismatch:
        return SpoolMismatch(f"{_about(p)} that this database does not hold ({why}); left in place")

    if p.database is not None and p.database != series.database_id:
        raise refuse("it was measured for another database")
    sid = _optuna.study_id(study)
    if p.study != study.study_name or p.study_id not in (None, sid):
        raise refuse(f"it is of another study than study {study.study_name!r} here, id {sid}")
    try:
        tid = study._storage.get_trial_id_from_study_id_trial_number(sid, p.trial_number)
    except KeyError:
        raise refuse(f"the study has no trial {p.trial_number}") from None
    if tid != p.trial_id:
        raise refuse(f"trial {p.trial_number} here is another trial (id {tid}, the record's {p.trial_id})")
    current = study._storage.get_trial(tid)
    if p.trial_start is not None and _started(current) != p.trial_start:
        raise refuse(f"trial {p.trial_number} here started at {_started(current)}, the measured one at "
                     f"{p.trial_start}: the study was made again under its name")
    if current.params != p.params:
        raise refuse(f"trial {p.trial_number} here has other parameters")
    return current


def apply(study: Any, series: SeriesStore, p: Pending) -> bool:
    """Record ``p`` on its trial, or find that it already is; idempotent. Returns whether the trial
    met every budget.

    Raises:
        SpoolMismatch: the record is not of this database, this study or this trial; nothing is written.
    """
    import optuna
    from optuna.trial import TrialState

    attrs = {**p.attrs, "spool_id": p.id}
    current = _its_trial(study, series, p)
    if current.state == TrialState.RUNNING:
        try:
            _kill_at("series")
            if p.payload is not None:
                series.put(_optuna.study_id(study), p.trial_id, p.payload)
            _kill_at("attrs")
            _optuna.set_user_attrs(study, current, attrs)
            if p.values is None:
                _kill_at("tell")
                study.tell(p.trial_number, state=TrialState.FAIL)
                return False
            _kill_at("constraints")
            _optuna.set_constraints(study, current, p.constraints)
            _kill_at("tell")
            study.tell(p.trial_number, p.values)
            return p.feasible
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
            current = study._storage.get_trial(p.trial_id)  # finished by another process meanwhile
            if not current.state.is_finished():
                raise
    if current.user_attrs.get("spool_id") == p.id and \
            (current.state == TrialState.COMPLETE or p.values is None):
        return p.feasible  # recorded before: the last attempt stopped after the tell
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("spool_id") == p.id and t.number != current.number:
            return _late_rest(study, series, p, current, _optuna.trial_id(t))  # recorded late before, perhaps part
    return _record_late(study, series, p, current, attrs)


def _record_late(study: Any, series: SeriesStore, p: Pending, current: Any, attrs: dict[str, Any]) -> bool:
    """The trial was failed by another orchestrator (its owner looked lost): the measurement is not
    lost, it becomes a new trial with the same parameters, marked ``recorded_late_for``. The new trial
    is made with the figures in one write, and the rest follows (``_late_rest``)."""
    import optuna
    from optuna.distributions import json_to_distribution
    from optuna.trial import TrialState

    user_attrs = {k: v for k, v in current.user_attrs.items() if k not in ("fail_reason", "fail_detail")}
    user_attrs.update(attrs, recorded_late_for=p.trial_number)
    late = optuna.trial.create_trial(
        params=p.params, distributions={k: json_to_distribution(d) for k, d in p.distributions.items()},
        values=p.values, state=TrialState.FAIL if p.values is None else TrialState.COMPLETE, user_attrs=user_attrs,
        system_attrs={"constraints": p.constraints} if p.values is not None else {})
    tid = _optuna.add_trial(study, late)
    _kill_at("late_series")
    return _late_rest(study, series, p, current, tid)


def _late_rest(study: Any, series: SeriesStore, p: Pending, current: Any, tid: int) -> bool:
    """What a late record writes after its trial ``tid``: the series and answers, and the failed trial's
    link to it. Each write replaces the last, so a replay that finds the late trial writes them again
    (whoever made it may have stopped before they were written) and the record leaves the spool only
    once they are."""
    if p.payload is not None:
        series.put(_optuna.study_id(study), tid, p.payload)
    if current.user_attrs.get("spool_id") == p.id:
        # Killed (or stopped) after its figures were written and before its tell, then failed by
        # another orchestrator: the failed trial carries the figures too, and says where they count.
        # The late trial's recorded_late_for is the link that always holds; this one is for readers.
        _optuna._write_attrs(study._storage, current._trial_id,
                             {"recorded_late_as": study._storage.get_trial_number_from_id(tid)}, running_only=False)
    return p.feasible


def apply_verification(study: Any, series: SeriesStore, v: PendingVerification) -> None:
    """Record ``v`` on its trial's study (its runs, its record, the dashboard's note), or find that it
    is; idempotent, as each write replaces the last. A verification of the trial begun later that is
    recorded already stands.

    Raises:
        SpoolMismatch: the record is not of this database, this study or this trial; nothing is written.
    """
    from sweep.study.writer import save_dashboard_note

    _its_trial(study, series, v)
    key = f"{VERIFIED_PREFIX}{v.trial_number}"
    there = study.user_attrs.get(key)
    if there is not None and str(there.get("at", "")) > str(v.record.get("at", "")):
        return  # a replay that came after `sweep verify --again` had recorded a newer one
    series.put(_optuna.study_id(study), v.trial_id, v.runs, table=VERIFICATION)
    study.set_user_attr(key, v.record)
    save_dashboard_note(study)


def _apply(study: Any, series: SeriesStore, r: Record) -> Any:
    return apply(study, series, r) if isinstance(r, Pending) else apply_verification(study, series, r)


def transient(exc: BaseException) -> bool:
    """Whether a database error may pass: a dropped or refused connection, a server restarting,
    SQLite's "database is locked", a full disk under the database."""
    import sqlalchemy.exc as sa_exc

    if isinstance(exc, DatabaseUnavailable):
        return False  # the wait is over: it ends the sweep, however transient its cause was
    if isinstance(exc, StorageUnreachable):
        return True  # the server did not answer when the storage was opened
    seen = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, (sa_exc.OperationalError, sa_exc.InterfaceError)):
            return True
        if isinstance(cause, sa_exc.DBAPIError) and cause.connection_invalidated:
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def retry_window_s() -> float:
    raw = os.environ.get(RETRY_ENV)
    try:
        return float(raw) if raw else DEFAULT_RETRY_S
    except ValueError:
        raise SweepError(f"{RETRY_ENV}={raw!r}: expected a number of seconds") from None


def with_retries(fn: Callable[[], Any], what: Callable[[float], str], on_wait: Callable[[str], None] | None = None,
                 window_s: float | None = None, gone: Callable[[float], str] | None = None) -> Any:
    """``fn()``, tried again with backoff (0.5 s doubling to 10 s) while the database error is
    transient, for at most ``window_s``; ``what(seconds)`` is the line said while waiting, and
    ``gone(seconds)`` the message of the ``DatabaseUnavailable`` raised after the window."""
    window_s = retry_window_s() if window_s is None else window_s
    first = None
    delay = 0.5
    while True:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - only transient database errors are retried
            if not transient(exc):
                raise
            now = time.monotonic()
            first = first or now
            waited = now - first
            if waited >= window_s:
                message = gone(waited) if gone else f"the database has been unreachable for {waited:.0f} s"
                raise DatabaseUnavailable(f"{message} ({type(exc).__name__})") from exc
            if on_wait:
                on_wait(what(waited))
            time.sleep(min(delay, max(0.0, window_s - waited)))
            delay = min(delay * 2, 10.0)


def record(study: Any, series: SeriesStore, r: Record, on_wait: Callable[[str], None] | None = None) -> Any:
    """Spool ``r``, record it and unspool it: the path of every measurement and verification (``replay``
    takes up those an earlier one left). The database is retried with backoff while it is unreachable
    (``on_wait`` is told, once a try). Returns what recording it returns (``apply``: whether the trial
    met every budget).

    Raises:
        DatabaseUnavailable: the database stayed unreachable past the retry window; the record is in
            the spool, and the next sweep run records it.
        MeasurementLost: that, and the spool could not be written either: the record's one copy is the
            JSON line printed on stderr just before.
    """
    with contextlib.ExitStack() as held:  # the spool file, held until it is recorded (``holding``)
        try:
            path: Path | None = held.enter_context(holding(r))
            kept = f"safe in {path}"
        except OSError as exc:  # a full disk, say: the database may still take it
            path = None
            unwritable = f"the spool {exc.filename or spool_dir()} could not be written ({exc.strerror or exc})"
            kept = f"in memory only: {unwritable}"

        def gone(s: float) -> str:
            if path is not None:
                return f"the database has been unreachable for {s:.0f} s; the {r.what} is kept in {path}, and the " \
                       "next sweep run records it"
            return (f"the database has been unreachable for {s:.0f} s and {unwritable}: the {r.what} is not kept "
                    "but in the JSON line above; save that line as a .json file in a spool directory that can be "
                    "written (SWEEP_SPOOL_DIR) for sweep db upgrade to record")

        try:
            result = with_retries(lambda: _apply(study, series, r),
                                  lambda s: f"database unreachable since {s:.0f} s, retrying; the {r.what} is {kept}",
                                  on_wait, gone=gone)
        except BaseException as exc:
            if path is not None:
                raise
            _tell(_dumps(r))  # its one copy now, whatever stopped it
            if isinstance(exc, DatabaseUnavailable):
                raise MeasurementLost(str(exc)) from exc
            raise
        _kill_at("unspool")
        if path is not None:
            path.unlink(missing_ok=True)
    return result


def replay(study: Any, series: SeriesStore, on_wait: Callable[[str], None] | None = None,
           say: Callable[[str], None] = _tell) -> int:
    """Record what the spool holds for this study; returns how many records it recorded. One that this
    study does not hold is left in place and named (``say``)."""
    return _replay(study, series, pending(series, study.study_name, say=say), on_wait, say)


def _replay(study: Any, series: SeriesStore, records: list[tuple[Path, Record]],
            on_wait: Callable[[str], None] | None, say: Callable[[str], None]) -> int:
    done = 0
    for path, p in records:
        with _claimed(path) as mine:
            if not mine:
                continue  # another process records it now, or has recorded it
            try:
                with_retries(lambda: _apply(study, series, p),
                             lambda s: f"database unreachable since {s:.0f} s, retrying; the {p.what} is safe in "
                                       f"{path}", on_wait,
                             gone=lambda s: f"the database has been unreachable for {s:.0f} s; the {p.what} is kept "
                                            f"in {path} for the next sweep run")
            except SpoolMismatch as exc:
                say(f"{path}: {exc}")
                continue
            path.unlink()  # before the lock goes
        done += 1
    return done


def replay_storage(url: str, series: SeriesStore, on_wait: Callable[[str], None] | None = None,
                   say: Callable[[str], None] = _tell) -> int:
    """Record what the spool holds for every study of this database (``sweep db upgrade``); returns
    how many records it recorded. A record of a study the database does not hold is left and named."""
    import optuna

    from sweep.study.storage import open_optuna_storage

    storage = open_optuna_storage(url)
    by_study: dict[str, list[tuple[Path, Record]]] = {}
    for path, p in pending(series, say=say):
        by_study.setdefault(p.study, []).append((path, p))
    done = 0
    for name, records in sorted(by_study.items()):
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            for path, p in records:
                say(f"{path}: {_about(p)} that this database does not hold (no study {name!r}); left in place")
            continue
        done += _replay(study, series, records, on_wait, say)
    return done
