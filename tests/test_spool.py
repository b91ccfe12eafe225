"""Nothing measured is lost: the spool, idempotent records, and waiting out the database.

The real CLI measures real SmolLM2 trials; the orchestrator is killed (SIGKILL, by a test hook) at
each step of a record, a real PostgreSQL server is stopped and started under a sweep, and a real
SQLite write lock is held across a record.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import TINY_SPACE, sweep_cli, wait_for, write_space


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
    (path, pending), = spool.pending(url, "tiny")
    series = SeriesStore(url)
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
