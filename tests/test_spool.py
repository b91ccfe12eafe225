"""Nothing measured is lost: the spool, idempotent records, and waiting out the database.

The real CLI measures real SmolLM2 trials; the orchestrator is killed (SIGKILL, by a test hook) at
each step of a record, a real PostgreSQL server is stopped and started under a sweep, and a real
SQLite write lock is held across a record. Which database and trial a record is of, temp files left
by a killed writer, and replays at once are tested without a model: real SQLite (and PostgreSQL)
databases, the real CLI, and real processes that race on one spool.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import TINY_SPACE, database_away, sweep_cli, wait_for, write_space

# The sweeps here are about what becomes of a measurement, not the model: fake workers (sweep.testing).
pytestmark = pytest.mark.usefixtures("fake_worker")


def _trials(url: str, name: str = "tiny") -> list:
    import optuna

    return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)


def _spooled() -> list[Path]:
    d = Path(os.environ["SWEEP_SPOOL_DIR"])  # each test's own (conftest.isolated)
    return sorted(d.glob("*.json")) if d.is_dir() else []


def _one_trial_space(tmp_path: Path) -> Path:
    return write_space(tmp_path / "tiny.yaml", TINY_SPACE)


@pytest.mark.slow
@pytest.mark.parametrize("step", ["series", "attrs", "constraints", "tell", "unspool"])
def test_a_kill_at_any_step_of_a_record_loses_nothing_and_records_once(step: str, tmp_path: Path,
                                                                       cache_dir: Path) -> None:
    space, url = _one_trial_space(tmp_path), os.environ["SWEEP_STORAGE"]
    killed = sweep_cli("run", str(space), "--study", "tiny", "--trials", "1", "--quiet", env={"SWEEP_TEST_KILL_AT": step})
    assert killed.returncode == -9, killed.stderr
    assert len(_spooled()) == 1  # the measurement was on disk before the database saw any of it
    again = sweep_cli("run", str(space), "--study", "tiny", "--trials", "1", "--quiet")
    assert again.returncode == 0, again.stderr
    trials = _trials(url)
    assert len(trials) == 1 and trials[0].state.name == "COMPLETE"  # recorded once, nothing measured again
    t = trials[0]
    assert "correctness" in t.user_attrs and t.user_attrs["spool_id"] and t.system_attrs["constraints"] is not None
    assert _spooled() == []
    from sweep import _optuna
    from sweep.study.storage import SeriesStore

    assert SeriesStore(url).get(_optuna.trial_id(t))["series"]["t"]  # the series row is there


@pytest.mark.slow
@pytest.mark.parametrize("step", ["attrs", "tell"])
def test_a_trial_failed_meanwhile_gets_its_measurement_as_a_late_trial_once(step: str, tmp_path: Path,
                                                                            cache_dir: Path) -> None:
    """Killed before its figures were written, or after (then the failed trial carries them and
    the spool id too, and says where its measurement went)."""
    import optuna

    from sweep import _optuna
    from sweep.study import spool
    from sweep.study.storage import SeriesStore

    space, url = _one_trial_space(tmp_path), os.environ["SWEEP_STORAGE"]
    assert sweep_cli("run", str(space), "--study", "tiny", "--trials", "1", "--quiet",
                     env={"SWEEP_TEST_KILL_AT": step}).returncode == -9
    study = optuna.load_study(study_name="tiny", storage=url)
    (running,) = study.get_trials(deepcopy=False)
    # Another orchestrator reaps it first: its owner is dead.
    assert _optuna.fail_if_running(study, _optuna.trial_id(running), {"fail_reason": "orchestrator_lost"})
    series = SeriesStore(url)
    (path, pending), = spool.pending(series, "tiny")
    spool.apply(study, series, pending)
    spool.apply(study, series, pending)  # a second replay finds it recorded
    trials = study.get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert trials[1].user_attrs["recorded_late_for"] == 0 and "correctness" in trials[1].user_attrs
    assert series.get(_optuna.trial_id(trials[1]))["series"]["t"]
    if step == "attrs":  # nothing of the measurement reached the failed trial
        assert "spool_id" not in trials[0].user_attrs and "recorded_late_as" not in trials[0].user_attrs
    else:  # its figures did, before it was failed: it names the trial that holds them
        assert trials[0].user_attrs["spool_id"] == trials[1].user_attrs["spool_id"]
        # Written past this process's cache of finished trials: read as another reader would.
        (failed, _) = optuna.load_study(study_name="tiny", storage=url).get_trials(deepcopy=False)
        assert failed.user_attrs["recorded_late_as"] == 1


def _run_in_background(space: Path, trials: int, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "sweep", "run", str(space), "--study", "tiny", "--trials",
                             str(trials)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env})


def _measuring(url: str) -> bool:
    try:
        return any(t.state.name == "RUNNING" and t.user_attrs.get("measuring") for t in _trials(url))
    except Exception:  # noqa: BLE001 - the study is not made yet
        return False


@pytest.mark.slow
def test_a_postgresql_restart_during_a_sweep_loses_nothing(pg_url: str, tmp_path: Path, cache_dir: Path) -> None:
    from pgserver import pg_ctl

    space = _one_trial_space(tmp_path)
    proc = _run_in_background(space, 2, {})
    try:
        wait_for(lambda: _measuring(pg_url), timeout=120)
        pg_ctl(pg_url, "stop")  # the trial measures on; its record finds no server
        wait_for(lambda: bool(_spooled()), timeout=200)  # its record has begun (the spool file comes first)
        time.sleep(1.5)  # and met the missing server (its first retry waits 0.5 s)
        pg_ctl(pg_url, "start")
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "database unreachable since" in out + err
    trials = _trials(pg_url)
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"] and _spooled() == []


@pytest.mark.slow
def test_a_database_away_past_the_window_stops_with_the_spool_named(pg_url: str, tmp_path: Path,
                                                                     cache_dir: Path) -> None:
    from pgserver import pg_ctl

    space = _one_trial_space(tmp_path)
    proc = _run_in_background(space, 1, {"SWEEP_DB_RETRY_S": "4"})
    try:
        wait_for(lambda: _measuring(pg_url), timeout=120)
        pg_ctl(pg_url, "stop")
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
        pg_ctl(pg_url, "start")
    assert proc.returncode == 5, err
    (spooled,) = _spooled()
    last = err.strip().splitlines()[-1]
    assert str(spooled) in last and "next sweep run records it" in last
    upgraded = sweep_cli("db", "upgrade")
    assert upgraded.returncode == 0 and "recorded 1 spooled measurement" in upgraded.stdout, upgraded.stderr
    assert [t.state.name for t in _trials(pg_url)] == ["COMPLETE"] and _spooled() == []


@pytest.mark.slow
def test_sqlite_locked_across_a_record_is_waited_out(tmp_path: Path, cache_dir: Path) -> None:
    space, url = _one_trial_space(tmp_path), os.environ["SWEEP_STORAGE"]
    db = url.removeprefix("sqlite:///")
    proc = _run_in_background(space, 1, {"SWEEP_SQLITE_BUSY_S": "5"})
    held = threading.Event()

    def hold_the_lock() -> None:
        conn = sqlite3.connect(db, timeout=60)
        conn.execute("BEGIN EXCLUSIVE")
        held.set()
        try:
            # Held from the measurement on until its record has begun (its spool file is written
            # just before), then longer than the sweep's busy timeout (5 s here, 60 s by default):
            # the record sees "database is locked" however long the measurement took.
            wait_for(lambda: bool(_spooled()), timeout=200)
            time.sleep(9)
        finally:
            conn.rollback()
            conn.close()

    try:
        wait_for(lambda: _measuring(url), timeout=120)  # locked from the measurement on, across its record
        locker = threading.Thread(target=hold_the_lock)
        locker.start()
        out, err = proc.communicate(timeout=300)
        locker.join()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert held.is_set() and proc.returncode == 0, err
    assert "database unreachable since" in out + err
    assert [t.state.name for t in _trials(url)] == ["COMPLETE"] and _spooled() == []


@pytest.mark.slow
def test_a_database_down_when_a_sweep_starts_is_waited_for_then_exit_5(tmp_path: Path, pg_url: str) -> None:
    """A server that is down or restarting when `sweep run` starts is not bad input (exit 2): the
    sweep waits for it as for one that goes away later, and stops with exit 5 past the window. A
    command that only reads still refuses at once (tests/test_refusals.py)."""
    from pgserver import pg_ctl

    space = _one_trial_space(tmp_path)
    pg_ctl(pg_url, "stop")
    try:
        proc = sweep_cli("run", str(space), "--trials", "1", env={"SWEEP_STORAGE": pg_url, "SWEEP_DB_RETRY_S": "3"})
    finally:
        pg_ctl(pg_url, "start")
    assert proc.returncode == 5, proc.stderr
    assert "database unreachable since" in proc.stdout + proc.stderr
    assert "has been unreachable for" in proc.stderr.strip().splitlines()[-1]
    proc = sweep_cli("run", str(space), "--trials", "1", env={"SWEEP_STORAGE": pg_url})
    assert proc.returncode == 0, proc.stderr  # once it is back, the same command runs


def _dead_pid() -> int:
    """The pid of a process that has ended (its number may be given out again, but not this soon)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_temp_file_a_killed_writer_left_stops_no_sweep(tmp_path: Path) -> None:
    """A writer killed inside its atomic write leaves ``.partial-PID-….json``, empty or half-written:
    it is never read as a record; a dead writer's is swept before the replay, a live one's is left."""
    spool_dir = Path(os.environ["SWEEP_SPOOL_DIR"])
    spool_dir.mkdir()
    dead = spool_dir / f".partial-{_dead_pid()}-x1y2.json"
    dead.write_text('{"spool_version": 1, "id": "')  # cut short by the SIGKILL
    live = spool_dir / f".partial-{os.getpid()}-z3w4.json"  # this test's process: alive, still writing
    live.write_text("")
    proc = sweep_cli("db", "upgrade")
    assert proc.returncode == 0, proc.stderr
    assert not dead.exists() and live.exists()


def _study(url: str, name: str = "demo") -> Any:
    """A study as ``sweep run`` opens one (sweep's tables beside Optuna's), with a seeded sampler: two
    studies made alike propose alike, as two projects with one search space do."""
    import optuna

    from sweep.study.storage import SeriesStore, open_optuna_storage

    SeriesStore(url)
    return optuna.create_study(study_name=name, storage=open_optuna_storage(url), directions=["minimize"],
                               sampler=optuna.samplers.RandomSampler(seed=3))


def _asked(study: Any) -> Any:
    trial = study.ask()
    trial.suggest_int("n_threads", 1, 8)
    return trial


def _spool(url: str, study: Any, trial: Any, values: list[float] | None = None) -> Path:
    """A measurement of ``trial`` in the spool, as its orchestrator wrote it just before it was killed
    (the trial stays RUNNING in the database)."""
    from sweep.study import spool
    from sweep.study.storage import SeriesStore

    p = spool.Pending.of(SeriesStore(url), study, trial, {"correctness": 0.5}, values or [1.0], [],
                         {"series": {"t": [0.0]}, "answers": []})
    return spool.write(p)


def _told(study: Any, spool_id: str, value: float = 2.0) -> Any:
    """A trial asked and recorded complete, as another record (``spool_id``) left it."""
    trial = _asked(study)
    trial.set_user_attr("spool_id", spool_id)
    study.tell(trial, value)
    return trial


def test_a_record_is_replayed_only_into_the_database_it_was_made_in(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Two project directories, each with the default ``sqlite:///studies.db`` and a study "demo" made
    alike: the record A's killed run left is not B's, whose trial 0 is complete under another record; A's
    next run records it."""
    from sweep.study import storage

    monkeypatch.setattr(storage, "_ENGINES", {})  # one process plays both projects: no engine of another test's
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    default = "sqlite:///studies.db"
    monkeypatch.delenv("SWEEP_STORAGE")
    monkeypatch.chdir(a)
    study_a = _study(f"sqlite:///{a / 'studies.db'}")
    trial_a = _asked(study_a)
    path = _spool(default, study_a, trial_a)  # A's orchestrator, on the default storage, is killed here
    study_b = _study(f"sqlite:///{b / 'studies.db'}")
    trial_b = _told(study_b, "B's own record")
    assert (trial_b._trial_id, trial_b.number, trial_b.params) == (trial_a._trial_id, trial_a.number, trial_a.params)
    monkeypatch.chdir(b)
    proc = sweep_cli("db", "upgrade")
    assert proc.returncode == 0, proc.stderr
    assert [t.state.name for t in _trials(f"sqlite:///{b / 'studies.db'}", "demo")] == ["COMPLETE"]
    assert path.exists()  # A's measurement is kept for A
    monkeypatch.chdir(a)
    proc = sweep_cli("db", "upgrade")
    assert proc.returncode == 0 and "recorded 1 spooled measurement" in proc.stdout, proc.stderr
    (t,) = _trials(f"sqlite:///{a / 'studies.db'}", "demo")
    assert t.state.name == "COMPLETE" and t.user_attrs["correctness"] == 0.5 and not path.exists()


def test_a_record_of_a_deleted_study_is_not_given_to_the_study_made_again_under_its_name(
        capsys: pytest.CaptureFixture[str]) -> None:
    """SQLite gives a deleted study's ids out again: the study made again under the name has the same
    study id, and its trial 0 the same trial id and (seeded) parameters as the one the record is for."""
    import optuna

    from sweep.study import spool
    from sweep.study.storage import SeriesStore

    url = os.environ["SWEEP_STORAGE"]
    old = _study(url)
    trial = _asked(old)
    path = _spool(url, old, trial)
    optuna.delete_study(study_name="demo", storage=url)
    new = _study(url)
    again = _told(new, "the new study's own record")
    assert (new._study_id, again._trial_id, again.number, again.params) == \
        (old._study_id, trial._trial_id, trial.number, trial.params)
    assert spool.replay(new, SeriesStore(url)) == 0
    assert [t.state.name for t in _trials(url, "demo")] == ["COMPLETE"] and path.exists()
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert str(path) in line and "left in place" in line


@pytest.mark.parametrize("change", ["study", "trial_number", "params"])
def test_apply_checks_the_study_and_the_trial_before_it_writes(change: str) -> None:
    """A record applied to a study it is not of, or naming a trial by a number or parameters the trial
    does not have, is refused before anything is written."""
    import dataclasses

    from sweep.errors import SweepError
    from sweep.study import spool
    from sweep.study.storage import SeriesStore

    url = os.environ["SWEEP_STORAGE"]
    one, two = _study(url, "one"), _study(url, "two")
    trial_one, trial_two = _asked(one), _asked(two)
    p = spool.Pending.of(SeriesStore(url), one, trial_one, {"correctness": 0.5}, [1.0], [], None)
    target = one
    if change == "study":
        target = two
    elif change == "trial_number":
        _asked(one)  # trial 1 exists, but the record's trial is 0
        p = dataclasses.replace(p, trial_number=1)
    else:
        p = dataclasses.replace(p, params={"n_threads": trial_one.params["n_threads"] + 1})
    with pytest.raises(SweepError, match="left in place|does not hold"):
        spool.apply(target, SeriesStore(url), p)
    for name in ("one", "two"):
        assert all(t.state.name == "RUNNING" and "correctness" not in t.user_attrs for t in _trials(url, name))


@pytest.mark.parametrize("change", ["study", "trial_number", "params", "database"])
def test_a_verification_is_checked_against_its_database_study_and_trial_as_a_measurement_is(change: str) -> None:
    """A spooled verification applied to a study it is not of, naming a trial by a number or parameters
    the trial does not have, or made for another database, is refused before anything is written."""
    import dataclasses

    from sweep.study import spool
    from sweep.study.storage import VERIFICATION, SeriesStore

    url = os.environ["SWEEP_STORAGE"]
    one, two = _study(url, "one"), _study(url, "two")
    trial_one = _told(one, "its own record")
    _told(two, "its own record")
    v = spool.PendingVerification.of(SeriesStore(url), one, trial_one, {"n_items": 1, "at": "now"}, {"runs": []})
    target = one
    if change == "study":
        target = two
    elif change == "trial_number":
        _told(one, "another record")  # trial 1 exists, but the record's trial is 0
        v = dataclasses.replace(v, trial_number=1)
    elif change == "params":
        v = dataclasses.replace(v, params={"n_threads": trial_one.params["n_threads"] + 1})
    else:
        v = dataclasses.replace(v, database="another database's identity")
    with pytest.raises(spool.SpoolMismatch, match="left in place"):
        spool.apply_verification(target, SeriesStore(url), v)
    assert not any(k.startswith("verified:") for study in (one, two) for k in study.user_attrs)
    assert all(SeriesStore(url).get(t._trial_id, VERIFICATION) is None for t in _trials(url, "one"))


def _as_an_older_sweep_wrote_it(path: Path, storage: str) -> None:
    """The record in spool version 1: the database named by its URL alone."""
    data = json.loads(path.read_text())
    for key in ("database", "study_id", "trial_start"):
        data.pop(key, None)
    path.write_text(json.dumps({**data, "spool_version": 1, "storage": storage}))


@pytest.mark.parametrize("relative", [False, True])
def test_an_older_sweeps_record_is_replayed_where_its_url_names_one_database(relative: bool, tmp_path: Path) -> None:
    """Records from before the database's identity name it by URL: an absolute one still replays; the
    relative default names no directory's database, so it is left in place and named, never guessed."""
    url = os.environ["SWEEP_STORAGE"]
    study = _study(url)
    path = _spool(url, study, _asked(study))
    named = "sqlite:///studies.db" if relative else url  # the test runs in tmp_path: the same file
    _as_an_older_sweep_wrote_it(path, named)
    proc = sweep_cli("db", "upgrade", env={"SWEEP_STORAGE": named})
    assert proc.returncode == 0, proc.stderr
    (t,) = _trials(url, "demo")
    if relative:
        assert t.state.name == "RUNNING" and path.exists()
        (line,) = proc.stderr.strip().splitlines()
        assert str(path) in line and "relative" in line
    else:
        assert t.state.name == "COMPLETE" and t.user_attrs["correctness"] == 0.5 and not path.exists()


# One of two replays started at once. Each holds the other back where the race is (both have found the
# measurement unrecorded and are about to record it as a late trial) until the other gets there too or
# has finished without getting there: the worst interleaving, every time.
_RACER = """
import sys, time
from pathlib import Path

import optuna

from sweep.study import spool
from sweep.study.storage import SeriesStore

url, me, other, flags = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])
record_late = spool._record_late


def when_the_other_is_here_too(*args, **kwargs):
    (flags / f"late-{me}").touch()
    deadline = time.monotonic() + 60
    while not (flags / f"late-{other}").exists() and not (flags / f"done-{other}").exists():
        assert time.monotonic() < deadline, "the other replay neither came nor finished"
        time.sleep(0.01)
    return record_late(*args, **kwargs)


spool._record_late = when_the_other_is_here_too
try:
    spool.replay(optuna.load_study(study_name="demo", storage=url), SeriesStore(url))
finally:
    (flags / f"done-{me}").touch()
"""


def test_two_replays_at_once_record_a_measurement_once(tmp_path: Path) -> None:
    """Two orchestrators starting together both replay the record of a trial failed meanwhile (its
    owner looked lost): one of them records it, as one late trial, and neither fails."""
    from sweep import _optuna

    url = os.environ["SWEEP_STORAGE"]
    study = _study(url)
    trial = _asked(study)
    path = _spool(url, study, trial)
    assert _optuna.fail_if_running(study, _optuna.trial_id(trial), {"fail_reason": "orchestrator_lost"})
    flags = tmp_path / "flags"
    flags.mkdir()
    racers = [subprocess.Popen([sys.executable, "-c", _RACER, url, me, other, str(flags)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for me, other in (("1", "2"), ("2", "1"))]
    for racer in racers:
        _, err = racer.communicate(timeout=120)
        assert racer.returncode == 0, err
    trials = _trials(url, "demo")
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"] and trials[1].user_attrs["recorded_late_for"] == 0
    assert not path.exists()


# An orchestrator that spools a measurement, as ``writer.record`` does, and is killed while it holds it.
_WRITER = """
import os, signal, sys
from pathlib import Path

import optuna

from sweep.study import spool
from sweep.study.storage import SeriesStore

url, ready = sys.argv[1], Path(sys.argv[2])
study = optuna.load_study(study_name="demo", storage=url)
trial = study.ask()
trial.suggest_int("n_threads", 1, 8)
p = spool.Pending.of(SeriesStore(url), study, trial, {"correctness": 0.5}, [1.0], [], None)
with spool.holding(p) as path:
    ready.write_text(str(path))
    sys.stdin.read()  # recording, until the test has looked
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_record_is_replayed_only_once_its_holder_is_gone(tmp_path: Path) -> None:
    """A replay leaves alone the record a live orchestrator is recording; once that one is killed, the
    next replay records it."""
    from sweep.study import spool
    from sweep.study.storage import SeriesStore

    url = os.environ["SWEEP_STORAGE"]
    study = _study(url)
    ready = tmp_path / "ready"
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, url, str(ready)], stdin=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: ready.exists() or writer.poll() is not None, timeout=60)
        assert ready.exists(), writer.communicate()[1]
        path = Path(ready.read_text())
        assert spool.replay(study, SeriesStore(url)) == 0
        assert path.exists() and [t.state.name for t in _trials(url, "demo")] == ["RUNNING"]
        writer.stdin.close()
        assert writer.wait(timeout=60) == -9
    finally:
        if writer.poll() is None:
            writer.kill()
    assert spool.replay(study, SeriesStore(url)) == 1
    (t,) = _trials(url, "demo")
    assert t.state.name == "COMPLETE" and t.user_attrs["correctness"] == 0.5 and not path.exists()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_database_gets_its_identity_once_by_a_numbered_migration(backend: str,
                                                                   request: pytest.FixtureRequest) -> None:
    """A database of sweep schema 3 is given a random identity by ``sweep db upgrade``, once: every
    later opening reads the same one. PostgreSQL included (no SQLite-only SQL)."""
    import sqlalchemy as sa

    from sweep.study import storage

    url = request.getfixturevalue("pg_url") if backend == "postgresql" else os.environ["SWEEP_STORAGE"]
    fresh = storage.SeriesStore(url)
    assert fresh.version == storage.SCHEMA_VERSION and fresh.database_id
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # as sweep schema 3 left it
        conn.execute(sa.text("DROP TABLE sweep_database"))
        conn.execute(sa.text("UPDATE sweep_schema SET version = 3"))
    engine.dispose()
    upgraded = sweep_cli("db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    ids = {storage.SeriesStore(url).database_id for _ in range(2)} | {storage.SeriesStore(url, write=False).database_id}
    assert len(ids) == 1 and None not in ids and ids != {fresh.database_id}


@pytest.mark.parametrize("case", ["copied", "replaced"])
def test_a_record_is_left_where_the_url_and_the_identity_disagree(case: str, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy of the database bears the original's identity at another URL; a database made afresh at
    the original's path bears another identity at its URL. Neither takes the original's record: it is
    named there and left in place."""
    import shutil

    import optuna

    from sweep.study import spool, storage
    from sweep.study.storage import SeriesStore

    url = os.environ["SWEEP_STORAGE"]
    study = _study(url)
    path = _spool(url, study, _asked(study))
    monkeypatch.setattr(storage, "_ENGINES", {})  # the next sweep is another process: no connection to the old file
    if case == "copied":
        shutil.copy(tmp_path / "studies.db", tmp_path / "copy.db")
        there, said = f"sqlite:///{tmp_path / 'copy.db'}", "this database's identity"
    else:
        (tmp_path / "studies.db").rename(tmp_path / "original.db")
        _told(_study(url), "the new database's own record")
        there, said = url, "its identity differs"
    assert spool.replay(optuna.load_study(study_name="demo", storage=there), SeriesStore(there)) == 0
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert str(path) in line and said in line and path.exists()
    if case == "copied":
        assert spool.replay(study, SeriesStore(url)) == 1 and not path.exists()


# A replay killed (SIGKILL, by the test hook) between making the late trial and writing its series.
_KILLED_REPLAY = """
import sys

import optuna

from sweep.study import spool
from sweep.study.storage import SeriesStore

url = sys.argv[1]
spool.replay(optuna.load_study(study_name="demo", storage=url), SeriesStore(url))
"""


def test_a_replay_killed_between_the_late_trial_and_its_series_is_completed_by_the_next(tmp_path: Path) -> None:
    """The late trial is made, then its series row is written: a replay killed between the two leaves
    the record in the spool, and the next replay writes the series on that late trial (the answers
    too) instead of finding the trial and dropping the record, or making a second one."""
    from sweep import _optuna
    from sweep.study import spool
    from sweep.study.storage import SeriesStore

    url = os.environ["SWEEP_STORAGE"]
    study = _study(url)
    trial = _asked(study)
    path = _spool(url, study, trial)
    assert _optuna.fail_if_running(study, _optuna.trial_id(trial), {"fail_reason": "orchestrator_lost"})
    killed = subprocess.run([sys.executable, "-c", _KILLED_REPLAY, url], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "SWEEP_TEST_KILL_AT": "late_series"})
    assert killed.returncode == -9, killed.stderr
    assert [t.state.name for t in _trials(url, "demo")] == ["FAIL", "COMPLETE"] and path.exists()
    assert spool.replay(study, SeriesStore(url)) == 1
    assert spool.replay(study, SeriesStore(url)) == 0
    trials = _trials(url, "demo")
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"] and trials[1].user_attrs["recorded_late_for"] == 0
    assert SeriesStore(url).get(_optuna.trial_id(trials[1])) == {"series": {"t": [0.0]}, "answers": []}
    assert not path.exists()


def test_a_measurement_neither_the_spool_nor_the_database_takes_is_printed_and_exits_6(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The spool cannot be written (a file where its directory should be: root cannot write there either)
    and the database stays away past the window: the message says the measurement is kept nowhere, it is
    printed on stderr as the spool's JSON, and exit 6, not 5's promise of a later record. Saved in a
    spool, that JSON is recorded by `sweep db upgrade`."""
    from sweep.errors import SweepError
    from sweep.records import Outcome
    from sweep.study import writer
    from sweep.study.storage import SeriesStore

    monkeypatch.setenv("SWEEP_SQLITE_BUSY_S", "0.2")
    monkeypatch.setenv("SWEEP_DB_RETRY_S", "1")
    url = os.environ["SWEEP_STORAGE"]
    study = _study(url)
    trial = _asked(study)
    series = SeriesStore(url)
    (tmp_path / "not-a-dir").write_text("")
    monkeypatch.setenv("SWEEP_SPOOL_DIR", str(tmp_path / "not-a-dir" / "spool"))
    outcome = Outcome(ok=True, figures={"correctness": 0.5}, series={"t": [0.0]}, answers=[{"id": "a", "score": 1.0}])
    with database_away(url), pytest.raises(SweepError) as raised:
        writer.record(study, trial, outcome, series, {}, ["correctness"])
    assert raised.value.exit_code == 6
    message = str(raised.value)
    assert "could not be written" in message and "not kept" in message and "records it" not in message
    printed = [line for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert len(printed) == 1
    record = json.loads(printed[0])
    assert (record["study"], record["trial_number"], record["attrs"]["correctness"]) == ("demo", 0, 0.5)
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "lost.json").write_text(printed[0])
    proc = sweep_cli("db", "upgrade", env={"SWEEP_SPOOL_DIR": str(saved)})
    assert proc.returncode == 0 and "recorded 1 spooled measurement" in proc.stdout, proc.stderr
    (t,) = _trials(url, "demo")
    assert t.state.name == "COMPLETE" and t.user_attrs["correctness"] == 0.5
    assert series.get(t._trial_id)["answers"] == [{"id": "a", "score": 1.0}]


def test_a_spool_file_never_holds_a_secret_of_the_url_and_an_older_one_still_names_its_database() -> None:
    """database_url, which a spooled record stores, leaves out the password and every secret of the query;
    a record spooled before that, with ?password= in its URL, still belongs to its database."""
    from types import SimpleNamespace

    from sweep.study import spool

    url = "postgresql://sweep:pw1@db.example:5432/studies?password=pw2&sslmode=require&access_token=tk3"
    named = spool.database_url(url)
    assert not any(secret in named for secret in ("pw1", "pw2", "tk3")) and "sslmode=require" in named
    series = SimpleNamespace(url=url, database_id="its identity")
    older = SimpleNamespace(database="its identity", storage=url.replace("pw1", "***"), study="demo", trial_number=0,
                            what="measurement of trial 0", kind="measurement")
    assert spool._belongs(older, series)  # type: ignore[arg-type]
