"""Who owns a trial: a host is its hostname, machine id and PID namespace, and a dead pid proves a
trial lost only in the same boot. The reaper never marks a trial its owner completed."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import optuna
import pytest

from sweep import _optuna
from sweep.study.fleet import Owner


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_clone_or_a_container_with_the_same_hostname_is_another_host() -> None:
    me = Owner.me()
    assert me.machine_id and me.pid_namespace.startswith("pid:[")
    assert me.same_host(me.to_dict())
    assert not me.same_host({**me.to_dict(), "machine_id": "0" * 32})  # a clone whose machine id was renewed
    assert not me.same_host({**me.to_dict(), "pid_namespace": "pid:[1]"})  # a container on this kernel
    assert not me.same_host({k: v for k, v in me.to_dict().items() if k != "machine_id"})  # an older record


def test_a_dead_pid_proves_a_trial_lost_only_in_this_boot() -> None:
    me = Owner.me()
    dead = {**replace(me, pid=_dead_pid(), start_ticks=1).to_dict()}
    assert me.gone(dead)
    # Another boot id: this host rebooted, or a clone of it booted. The heartbeat decides.
    assert not me.gone({**dead, "boot_id": "another-boot"})


def test_the_reaper_leaves_a_completed_trial_as_it_is(tmp_path: Path) -> None:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="s")
    trial = study.ask()
    study.tell(trial, 1.0)  # its owner completed it while the reaper looked
    assert not _optuna.fail_if_running(study, _optuna.trial_id(trial), {"fail_reason": "orchestrator_lost"})
    (t,) = study.get_trials()
    assert t.state.name == "COMPLETE" and "fail_reason" not in t.user_attrs
    running = study.ask()
    assert _optuna.fail_if_running(study, _optuna.trial_id(running), {"fail_reason": "orchestrator_lost"})
    t = study.get_trials()[1]
    assert t.state.name == "FAIL" and t.user_attrs["fail_reason"] == "orchestrator_lost"


def test_a_trial_without_an_owner_is_aged_by_the_database_clock_not_the_askers(tmp_path: Path,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Optuna's datetime_start is the asking host's local clock. A host five hours behind (or in
    another time zone) must not get its trial reaped between ask and the owner write, and one
    ahead must not keep an abandoned trial alive forever."""
    import datetime as dt
    import sqlite3
    import time

    from sweep.study.fleet import reap_lost
    from sweep.study.storage import open_optuna_storage

    monkeypatch.setenv("SWEEP_HEARTBEAT_SECONDS", "1")
    monkeypatch.setenv("SWEEP_GRACE_SECONDS", "3")
    db = tmp_path / "s.db"
    study = optuna.create_study(storage=open_optuna_storage(f"sqlite:///{db}"), study_name="s")
    behind, ahead = study.ask(), study.ask()
    with sqlite3.connect(db) as conn:
        for trial, hours in ((behind, -5), (ahead, 5)):
            start = (dt.datetime.now() + dt.timedelta(hours=hours)).strftime("%Y-%m-%d %H:%M:%S.%f")
            conn.execute("UPDATE trials SET datetime_start = ? WHERE trial_id = ?", (start, _optuna.trial_id(trial)))
    me = Owner.me()
    assert reap_lost(study, me) == []  # just asked, by the database's clock
    time.sleep(1.5)
    assert reap_lost(study, me) == []  # still within the grace period of its first heartbeat
    time.sleep(3)
    assert sorted(reap_lost(study, me)) == [behind.number, ahead.number]  # nobody came to own them
