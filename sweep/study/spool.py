"""The spool: each measurement is on disk before it goes to the database, and replayed until it lands.

A trial's measurement (its figures, answers and series) is written atomically to a file in
``<cache>/spool/`` before the database is touched, and the file is removed once the record is
complete. Whatever happens in between (a PostgreSQL restart, a dropped connection, SQLite's
"database is locked", a full disk, the orchestrator killed), the next ``sweep run`` or
``sweep db upgrade`` on that database records what the spool holds.

Recording is several writes (the series row, the user attributes, the constraints, Optuna's tell),
so ``apply`` is idempotent instead: every record carries the spool id, and a replay finds where the
last attempt stopped. A trial still RUNNING is recorded; one that carries the id is already done;
one failed meanwhile by another orchestrator (its owner looked lost) gets the measurement as a new
trial marked ``recorded_late_for``, once. A failed trial that already carried the figures (its
owner stopped between writing them and the tell) is marked ``recorded_late_as`` that new trial.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from sweep import _optuna
from sweep.errors import SweepError
from sweep.procs import sweep_dead, write_atomically
from sweep.study.storage import SeriesStore, StorageUnreachable, safe_url

SPOOL_VERSION = 1
RETRY_ENV = "SWEEP_DB_RETRY_S"  # how long a record waits for the database before the sweep stops
DEFAULT_RETRY_S = 600.0


class DatabaseUnavailable(SweepError):
    """The database stayed unreachable past the retry window; the measurement is safe in the spool."""

    exit_code = 5


def spool_dir() -> Path:
    """``SWEEP_SPOOL_DIR``, else ``<cache>/spool``: a local disk, never one shared between hosts."""
    from sweep.models.registry import cache_dir

    return Path(os.environ.get("SWEEP_SPOOL_DIR") or cache_dir() / "spool")


@dataclass(frozen=True)
class Pending:
    """One measurement on its way to the database."""

    id: str
    storage: str  # the database's URL without its password
    study: str
    trial_id: int
    trial_number: int
    params: dict[str, Any]
    distributions: dict[str, str]  # Optuna's JSON form
    attrs: dict[str, Any]
    values: list[float] | None  # None: a failed trial
    constraints: list[float]
    payload: dict[str, Any] | None  # the series and answers (None: a reused trial, which has none of its own)

    @classmethod
    def of(cls, url: str, study: Any, trial: Any, attrs: dict[str, Any], values: list[float] | None,
           constraints: list[float], payload: dict[str, Any] | None) -> Pending:
        from optuna.distributions import distribution_to_json

        return cls(uuid.uuid4().hex, safe_url(url), study.study_name, _optuna.trial_id(trial), trial.number,
                   dict(trial.params), {k: distribution_to_json(d) for k, d in trial.distributions.items()},
                   attrs, values, constraints, payload)

    @property
    def feasible(self) -> bool:
        return self.values is not None and not self.attrs.get("violations")


def write(p: Pending, directory: Path | None = None) -> Path:
    """The record, atomically and durably on disk (a temp file, fsync, rename, fsync of the directory)."""
    directory = directory or spool_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', p.study)}-t{p.trial_number}-{p.id}.json"
    sweep_dead(directory, ".partial-")
    write_atomically(path, json.dumps({"spool_version": SPOOL_VERSION, **asdict(p)}), durable=True)
    return path


def pending(url: str, study: str | None = None, directory: Path | None = None) -> list[tuple[Path, Pending]]:
    """The spooled records for this database (and study), oldest first. A file of another spool
    version, or one that cannot be read, is left where it is and named."""
    directory = directory or spool_dir()
    out = []
    for path in sorted(directory.glob("*.json"), key=lambda p: p.stat().st_mtime) if directory.is_dir() else []:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise SweepError(f"{path}: a spooled measurement that cannot be read ({exc}); move it aside") from None
        if data.pop("spool_version", None) != SPOOL_VERSION:
            raise SweepError(f"{path}: a spooled measurement of another sweep version; this sweep reads "
                             f"version {SPOOL_VERSION}")
        p = Pending(**data)
        if p.storage == safe_url(url) and (study is None or p.study == study):
            out.append((path, p))
    return out


def _kill_at(step: str) -> None:
    """A test hook: ``SWEEP_TEST_KILL_AT=step`` kills this process just before that step of a record."""
    if os.environ.get("SWEEP_TEST_KILL_AT") == step:
        os.kill(os.getpid(), signal.SIGKILL)


def apply(study: Any, series: SeriesStore, p: Pending) -> bool:
    """Record ``p`` on its trial, or find that it already is; idempotent. Returns whether the trial
    met every budget."""
    import optuna
    from optuna.trial import TrialState

    attrs = {**p.attrs, "spool_id": p.id}
    current = study._storage.get_trial(p.trial_id)
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
    if any(t.user_attrs.get("spool_id") == p.id for t in study.get_trials(deepcopy=False)
           if t.number != current.number):
        return p.feasible  # recorded late before
    return _record_late(study, series, p, current, attrs)


def _record_late(study: Any, series: SeriesStore, p: Pending, current: Any, attrs: dict[str, Any]) -> bool:
    """The trial was failed by another orchestrator (its owner looked lost): the measurement is not
    lost, it becomes a new trial with the same parameters, marked ``recorded_late_for``."""
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
    if p.payload is not None:
        series.put(_optuna.study_id(study), tid, p.payload)
    if current.user_attrs.get("spool_id") == p.id:
        # Killed (or stopped) after its figures were written and before its tell, then failed by
        # another orchestrator: the failed trial carries the figures too, and says where they count.
        # The late trial's recorded_late_for is the link that always holds; this one is for readers.
        _optuna._write_attrs(study._storage, current._trial_id,
                             {"recorded_late_as": study._storage.get_trial_number_from_id(tid)}, running_only=False)
    return p.feasible


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


def replay(study: Any, series: SeriesStore, url: str, on_wait: Callable[[str], None] | None = None) -> int:
    """Record what the spool holds for this study; returns how many records it held."""
    done = 0
    for path, p in pending(url, study.study_name):
        try:
            study._storage.get_trial(p.trial_id)
        except KeyError:
            raise SweepError(f"{path}: a spooled measurement of trial {p.trial_number}, which study "
                             f"{p.study!r} in this database does not hold; move it aside") from None
        with_retries(lambda: apply(study, series, p),
                     lambda s: f"database unreachable since {s:.0f} s, retrying; the measurement of trial "
                               f"{p.trial_number} is safe in {path}", on_wait,
                     gone=lambda s: f"the database has been unreachable for {s:.0f} s; the measurement of trial "
                                    f"{p.trial_number} is kept in {path} for the next sweep run")
        path.unlink()
        done += 1
    return done


def replay_storage(url: str, series: SeriesStore, on_wait: Callable[[str], None] | None = None) -> int:
    """Record what the spool holds for every study of this database (``sweep db upgrade``)."""
    import optuna

    from sweep.study.storage import open_optuna_storage

    storage = open_optuna_storage(url)
    done = 0
    for name in sorted({p.study for _, p in pending(url)}):
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            raise SweepError(f"{spool_dir()}: spooled measurements of study {name!r}, which this database "
                             "does not hold; move them aside") from None
        done += replay(study, series, url, on_wait)
    return done
