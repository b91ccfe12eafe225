"""Many orchestrators, many hosts, one study: PostgreSQL, heartbeats, the host measurement lock,
hardware classes. Real sweeps on the real model through the real CLI, on a real PostgreSQL server.

Two "hosts" on this one machine are two orchestrators with their own ``SWEEP_HOST_ID`` and
``SWEEP_LOCK_FILE``, each pinned to its own CPU, as two machines sharing a database would be.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import optuna
import pytest

from sweep.measure.host import allowed_cpus

from conftest import QUICK_TAIL, TINY_SPACE, stray_processes, sweep_cli, sweep_cli_all, wait_for, write_space

TWO_CPUS = pytest.mark.skipif(len(allowed_cpus()) < 2, reason="two simulated hosts need a CPU each")
FAST_HEARTBEAT = {"SWEEP_HEARTBEAT_SECONDS": "1", "SWEEP_GRACE_SECONDS": "4"}

# Every test here runs real sweeps, on the fake worker (sweep.testing) but the first, which reads
# a real model's trial back from PostgreSQL.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fake_worker")]


def trials(url: str, study: str = "tiny") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=url).get_trials()


def start(space: Path, n: int, env: dict[str, str], cpu: int | None = None, *extra: str) -> subprocess.Popen[str]:
    """A ``sweep run`` in the background, as a host of its own when ``env`` names one."""
    pin = (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None
    return subprocess.Popen([sys.executable, "-m", "sweep", "run", str(space), "--trials", str(n), "--quiet", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **env},
                            preexec_fn=pin)


def host(name: str, tmp: Path, **more: str) -> dict[str, str]:
    return {"SWEEP_HOST_ID": name, "SWEEP_LOCK_FILE": str(tmp / f"{name}.lock"), **more}


def overlaps(spans: list[tuple[float, float]]) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    spans = sorted(spans)
    return [(a, b) for a, b in zip(spans, spans[1:]) if b[0] < a[1]]


def measured(ts: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    return [t for t in ts if "measured_at" in t.user_attrs]


def test_postgres_study_completes_and_every_reader_works(isolated: Path, pg_url: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SWEEP_TEST_WORKER")  # the real model, end to end on PostgreSQL
    space = write_space(isolated / "s.yaml", TINY_SPACE)
    proc = sweep_cli("run", str(space), "--trials", "2")
    assert proc.returncode == 0, proc.stderr
    ts = trials(pg_url)
    assert [t.state.name for t in ts] == ["COMPLETE", "COMPLETE"]
    from sweep.results.front import trial_series

    study = optuna.load_study(study_name="tiny", storage=pg_url)
    for t in ts:
        stored = trial_series(study, t.number, pg_url)
        assert stored and stored["series"]["marks"]["load"] and len(stored["answers"]) == 3
        assert t.user_attrs["owner"]["pid"] > 0 and t.user_attrs["hardware_class"]
    readers = [["pareto", "--json"], ["status"], ["show", "0"], ["report", "-o", str(isolated / "r.html")],
               ["export", "-o", str(isolated / "e.json"), "--allow-infeasible"]]
    for args, out in zip(readers, sweep_cli_all(*([*args, "--study", "tiny"] for args in readers))):
        assert out.returncode == 0, (args, out.stderr)
    assert json.loads((isolated / "e.json").read_text())["provenance"]["host"]["hostname"]


@TWO_CPUS
def test_two_orchestrators_on_one_postgres_study(isolated: Path, pg_url: str) -> None:
    space = write_space(isolated / "s.yaml", TINY_SPACE)
    a = start(space, 6, host("a", isolated), cpu=allowed_cpus()[0])
    b = start(space, 6, host("b", isolated), cpu=allowed_cpus()[1])
    errs = []
    for p in (a, b):
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        errs.append(err)
    ts = trials(pg_url)
    # Each trial's state and failure, and both orchestrators' last words, for a failure to name its cause.
    why = ([(t.number, t.state.name, t.user_attrs.get("fail_reason"), str(t.user_attrs.get("fail_detail", ""))[:300])
            for t in ts], [e[-1500:] for e in errs])
    assert len(ts) == 6 and all(t.state.name in ("COMPLETE", "FAIL") for t in ts), why
    assert not [t.number for t in ts if t.user_attrs.get("fail_reason") == "orchestrator_lost"]
    by_config: dict[str, list[tuple[float, float]]] = {}
    for t in measured(ts):
        by_config.setdefault(json.dumps(t.user_attrs["config"], sort_keys=True), []).append(
            tuple(t.user_attrs["measured_at"]))
    for spans in by_config.values():
        assert not overlaps(spans)  # one configuration is never measured twice at once
    from sweep.results.front import trial_series

    study = optuna.load_study(study_name="tiny", storage=pg_url)
    for t in ts:
        if t.state.name == "COMPLETE" and "reused_from" not in t.user_attrs:
            assert trial_series(study, t.number, pg_url), t.number
    pareto = sweep_cli("pareto", "--study", "tiny", "--json")
    assert pareto.returncode == 0 and json.loads(pareto.stdout)["front"]
    assert study.user_attrs["orchestrator_runs"] == 2
    assert not stray_processes()


def _running_on(url: str, name: str) -> bool:
    try:
        return any(t.state.name == "RUNNING" and (t.user_attrs.get("owner") or {}).get("host") == name
                   and "config" in t.user_attrs for t in trials(url))
    except KeyError:
        return False


@TWO_CPUS
def test_sigkill_of_one_of_two_orchestrators(isolated: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The real model's trials: the survivor must still be measuring when the lost trial is requeued.
    monkeypatch.delenv("SWEEP_TEST_WORKER")
    space = write_space(isolated / "s.yaml", TINY_SPACE)
    a = start(space, 5, host("a", isolated, **FAST_HEARTBEAT), cpu=allowed_cpus()[0])
    wait_for(lambda: _running_on(pg_url, "a"))
    b = start(space, 5, host("b", isolated, **FAST_HEARTBEAT), cpu=allowed_cpus()[1])
    time.sleep(0.5)  # into a's trial
    a.kill()
    a.wait()
    _, err = b.communicate(timeout=600)
    assert b.returncode == 0, err
    ts = trials(pg_url)
    lost = [t for t in ts if t.user_attrs.get("fail_reason") == "orchestrator_lost"]
    assert len(lost) == 1 and lost[0].user_attrs["owner"]["host"] == "a"
    requeued = [t for t in ts if t.user_attrs.get("requeued_from") == lost[0].number]
    assert len(requeued) == 1 and requeued[0].params == lost[0].params
    assert requeued[0].user_attrs["owner"]["host"] == "b"
    assert sum(t.state.name in ("COMPLETE", "FAIL") for t in ts) == 5
    assert not [t for t in ts if t.state.name == "RUNNING"]
    assert not stray_processes()


def test_two_runs_on_one_sqlite_study_take_turns(isolated: Path) -> None:
    space = write_space(isolated / "s.yaml", TINY_SPACE)
    env = {"SWEEP_LOCK_FILE": str(isolated / "host.lock")}
    runs = [start(space, 4, env), start(space, 4, env)]
    for p in runs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    url = os.environ["SWEEP_STORAGE"]
    ts = trials(url)
    assert len(ts) == 4 and all(t.state.name in ("COMPLETE", "FAIL") for t in ts)
    assert not [t for t in ts if t.user_attrs.get("fail_reason") == "orchestrator_lost"]
    assert len({t.user_attrs["owner"]["pid"] for t in ts}) == 2  # both ran trials
    spans = [tuple(t.user_attrs["measured_at"]) for t in measured(ts)]
    assert len(spans) >= 2 and not overlaps(spans)


def test_a_waiting_orchestrator_names_the_holder(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sweep.hostlock import measurement_lock

    space = write_space(isolated / "s.yaml", TINY_SPACE)
    monkeypatch.setenv("SWEEP_LOCK_FILE", str(isolated / "host.lock"))
    with measurement_lock("a test that holds it"):
        p = subprocess.Popen([sys.executable, "-m", "sweep", "run", str(space), "--trials", "1"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(3)
        assert p.poll() is None  # it waits: it never measures alongside
        assert not trials_or_none(os.environ["SWEEP_STORAGE"])
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert f"waiting for the measurement lock held by pid {os.getpid()} (a test that holds it)" in out


def trials_or_none(url: str) -> list[Any]:
    try:
        return trials(url)
    except KeyError:
        return []


def test_no_lock_marks_every_trial(isolated: Path) -> None:
    space = write_space(isolated / "s.yaml", TINY_SPACE)
    assert sweep_cli("run", str(space), "--trials", "1", "--no-lock").returncode == 0
    (t,) = trials(os.environ["SWEEP_STORAGE"])
    assert t.user_attrs["measured_without_lock"] is True
    assert "WITHOUT the measurement lock" in sweep_cli("show", "0", "--study", "tiny").stdout


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_concurrent_first_opens_of_a_fresh_database(backend: str, isolated: Path, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("pg_url") if backend == "postgresql" else os.environ["SWEEP_STORAGE"]
    space = write_space(isolated / "s.yaml", TINY_SPACE)
    env = {"SWEEP_LOCK_FILE": str(isolated / "host.lock"), "SWEEP_STORAGE": url}
    procs = [start(space, 1, env) for _ in range(4)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    study = optuna.load_study(study_name="tiny", storage=url)
    assert len(study.get_trials()) == 1 and study.user_attrs["orchestrator_runs"] == 4
    assert [s.study_name for s in optuna.get_all_study_summaries(url)] == ["tiny"]


def test_optuna_dashboard_reads_a_postgres_study(isolated: Path, pg_url: str) -> None:
    from test_e2e import _free_port

    assert sweep_cli("run", str(write_space(isolated / "s.yaml", TINY_SPACE)), "--trials", "1").returncode == 0
    port = _free_port()
    dashboard = subprocess.Popen([str(Path(sys.executable).with_name("optuna-dashboard")), pg_url,
                                  "--host", "127.0.0.1", "--port", str(port)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                base = f"http://127.0.0.1:{port}/api/studies"
                with urllib.request.urlopen(base, timeout=5) as r:
                    (summary,) = json.loads(r.read())["study_summaries"]
                with urllib.request.urlopen(f"{base}/{summary['study_id']}", timeout=10) as r:
                    detail = json.loads(r.read())
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=10)
    assert summary["study_name"] == "tiny"
    assert [t["state"] for t in detail["trials"]] == ["Complete"]
    assert "hardware class" in detail["note"]["body"]


def test_a_host_of_another_hardware_class_is_refused(isolated: Path, one_trial: Path) -> None:
    space = write_space(isolated / "s.yaml", TINY_SPACE)
    db = isolated / "studies.db"
    shutil.copy(one_trial, db)  # a real one-trial study
    before = db.read_bytes()
    other = {"SWEEP_TEST_HARDWARE": json.dumps({"cpu_model": "Imaginary CPU 9000", "logical_cpus": 64})}
    proc = sweep_cli("run", str(space), "--trials", "2", env=other)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "another hardware class" in lines[0]
    assert "Imaginary CPU 9000" in lines[0] and "logical_cpus 64" in lines[0]
    assert db.read_bytes() == before
    name = optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}").user_attrs["hardware_class"]["name"]
    joined = sweep_cli("run", str(space), "--trials", "2", "--hardware-class", name, env=other)
    assert joined.returncode == 0, joined.stderr
    fleet = sweep_cli("fleet")
    assert fleet.returncode == 0 and name in fleet.stdout and "tiny" in fleet.stdout


def test_a_study_made_again_under_its_name_inherits_nothing(isolated: Path, one_trial: Path) -> None:
    from sweep.results.front import trial_series

    space = write_space(isolated / "s.yaml", TINY_SPACE)
    url = os.environ["SWEEP_STORAGE"]
    shutil.copy(one_trial, isolated / "studies.db")  # a real one-trial study
    old = trial_series(optuna.load_study(study_name="tiny", storage=url), 0, url)
    optuna.delete_study(study_name="tiny", storage=url)
    assert sweep_cli("run", str(space), "--trials", "1", "--no-lock").returncode == 0
    study = optuna.load_study(study_name="tiny", storage=url)
    new = trial_series(study, 0, url)
    assert new and new["series"]["marks"] != old["series"]["marks"]
    import sqlalchemy as sa

    with sa.create_engine(url).connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM sweep_series")).scalar_one() == 1


def test_readers_never_write(isolated: Path, one_trial: Path) -> None:
    db = isolated / "studies.db"
    shutil.copy(one_trial, db)  # a real one-trial study
    before = db.read_bytes()
    readers = [["pareto"], ["pareto", "--json"], ["status"], ["show", "0", "--png", str(isolated / "t.png")],
               ["report", "-o", str(isolated / "r.html")], ["export", "-o", str(isolated / "e.json"),
                                                           "--allow-infeasible"], ["fleet"]]
    # All at once, as readers would come: none of them writes, alone or beside the others.
    for args, out in zip(readers, sweep_cli_all(*([*args, *([] if args == ["fleet"] else ["--study", "tiny"])]
                                                  for args in readers))):
        assert out.returncode == 0, (args, out.stderr)
    assert db.read_bytes() == before


def test_an_old_database_is_upgraded_with_its_rows(isolated: Path) -> None:
    """A database from before trial-id keys (schema 2): readers refuse it with one line, and
    ``sweep db upgrade`` moves every row to its trial."""
    import sqlalchemy as sa

    from sweep.results.front import trial_series

    url = os.environ["SWEEP_STORAGE"]
    study = optuna.create_study(study_name="old", storage=url, directions=["maximize"])
    for x in (1.0, 2.0):
        study.enqueue_trial({})
        t = study.ask()
        study.tell(t, x)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE sweep_schema (version INTEGER NOT NULL)"))
        conn.execute(sa.text("INSERT INTO sweep_schema VALUES (2)"))
        for table in ("sweep_trial_series", "sweep_verification"):
            conn.execute(sa.text(f"CREATE TABLE {table} (study_name TEXT NOT NULL, trial_number INTEGER NOT NULL, "
                                 "payload TEXT NOT NULL, PRIMARY KEY (study_name, trial_number))"))
        for n in (0, 1):
            conn.execute(sa.text("INSERT INTO sweep_trial_series VALUES ('old', :n, :p)"),
                         {"n": n, "p": json.dumps({"series": {"n": n}, "answers": []})})
    engine.dispose()
    with pytest.raises(Exception, match="sweep db upgrade"):
        trial_series(study, 0, url)
    proc = sweep_cli("db", "upgrade")
    assert proc.returncode == 0, proc.stderr
    assert [trial_series(study, n, url)["series"]["n"] for n in (0, 1)] == [0, 1]


@pytest.mark.parametrize("sig, state", [(signal.SIGTERM, "COMPLETE"), (signal.SIGHUP, "FAIL")])
def test_sigterm_finishes_the_trial_and_sighup_records_it(sig: int, state: str, isolated: Path) -> None:
    space = write_space(isolated / "s.yaml", TINY_SPACE)
    url = os.environ["SWEEP_STORAGE"]
    p = start(space, 3, {})
    wait_for(lambda: any(t.state.name == "RUNNING" and "config" in t.user_attrs for t in trials_or_none(url)))
    time.sleep(0.4)
    p.send_signal(sig)
    p.communicate(timeout=300)
    assert p.returncode == 130
    ts = trials(url)
    assert [t.state.name for t in ts] == [state]
    if state == "FAIL":
        assert ts[0].user_attrs["fail_reason"] == "interrupted"
    assert not stray_processes()


ONE_CONFIGURATION = """\
version: 1
name: tiny
models:
  smollm2-135m: [Q4_1]
fixed:
  n_threads: 1
  n_threads_batch: 1
  n_ctx: 512
  max_tokens: 16
""" + QUICK_TAIL


def test_two_hosts_asking_for_one_configuration_at_once_break_the_tie(isolated: Path, pg_url: str) -> None:
    # Both hold at the barrier with their trial asked and the one configuration drawn, then look at
    # each other at once: the lower trial number measures, the other waits and reuses its figures.
    # Neither is pinned: a host's CPUs are part of the configuration, and both must draw the same.
    space = write_space(isolated / "one.yaml", ONE_CONFIGURATION)
    barrier = isolated / "go"
    runs = [start(space, 2, host(name, isolated, SWEEP_TEST_BARRIER=str(barrier))) for name in ("a", "b")]
    wait_for(lambda: _running_on(pg_url, "a") and _running_on(pg_url, "b"))
    barrier.touch()
    for p in runs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    ts = trials(pg_url)
    assert len(ts) == 2 and all(t.state.name == "COMPLETE" for t in ts)
    (first,) = measured(ts)
    assert first.number == 0 and ts[1].user_attrs["reused_from"] == 0
    assert not stray_processes()


# Issue 34, items 4 and 9: outages, locks and secrets. None of these measures: no model is loaded.


def _owned(trial: Any, owner: dict[str, Any]) -> None:
    trial.set_user_attr("owner", owner)


@pytest.mark.parametrize("reaper", ["measuring", "between_trials"])
def test_an_outage_longer_than_the_grace_reaps_no_live_trial(reaper: str, pg_url: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The database away for longer than the grace period: no heartbeat could land, so none is judged
    stale until every owner has had a full grace period since the recovery; a trial whose owner is
    really gone is still reaped after it. The reaper sees the outage through its trial's heartbeat
    (measuring) or its database watch (between trials, as while it waits for the host's lock); a
    reaper started after the outage does not judge at once either."""
    from pgserver import pg_ctl

    from sweep import _optuna
    from sweep.study.fleet import DatabaseWatch, Heartbeat, Owner, reap_lost
    from sweep.study.storage import open_optuna_storage

    monkeypatch.setenv("SWEEP_HEARTBEAT_SECONDS", "1")
    monkeypatch.setenv("SWEEP_GRACE_SECONDS", "3")
    study = optuna.create_study(storage=open_optuna_storage(pg_url), study_name="outage")
    me = Owner.me()
    mine, peers, dead = study.ask(), study.ask(), study.ask()
    _owned(mine, me.to_dict())  # this orchestrator's
    _owned(peers, {**me.to_dict(), "host": "b"})  # a live orchestrator on another host
    _owned(dead, {**me.to_dict(), "host": "c"})  # one on a third host, which dies before the outage
    looks = Heartbeat(study, mine) if reaper == "measuring" else DatabaseWatch(study)
    peers_beats = Heartbeat(study, peers)
    try:
        assert reap_lost(study, me) == []
        time.sleep(3.5)  # the reaper has seen the database up for a grace period
        _optuna.storage(study).record_heartbeat(dead._trial_id)  # c's last beat: it dies
        assert reap_lost(study, me) == []  # every heartbeat fresh
        peers_beats.stop()  # b's last beat before the outage; it beats again once the database is back
        pg_ctl(pg_url, "stop")
        time.sleep(5)  # longer than the grace: no heartbeat lands
        pg_ctl(pg_url, "start")
        # At once, before b's heartbeat thread got a beat through: no trial is judged from heartbeats
        # that could not land, neither by this reaper nor by one that started after the outage.
        reaped = reap_lost(study, me)
        assert reaped == [], f"trials {reaped} reaped on heartbeats that could not land (mine {mine.number}, " \
                             f"b's {peers.number}, the dead one {dead.number})"
        fresh = optuna.load_study(study_name="outage", storage=open_optuna_storage(pg_url))
        assert reap_lost(fresh, me) == []
        peers_beats = Heartbeat(study, peers)  # b's thread beats again
        time.sleep(4.5)  # a full grace period since the recovery
        assert reap_lost(study, me) == [dead.number]  # only the trial whose owner is gone
        states = {t.number: t.state.name for t in study.get_trials()}
        assert states[mine.number] == states[peers.number] == "RUNNING"
    finally:
        looks.stop()
        peers_beats.stop()


def test_a_live_orchestrator_on_this_host_is_never_reaped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On this host, in this boot, the owner's pid decides both ways: alive (same start ticks), its
    trial is never reaped, however stale its heartbeat (SQLite busy, the owner stopped); gone, at once."""
    from sweep import _optuna
    from sweep.study.fleet import Owner, _start_ticks, reap_lost
    from sweep.study.storage import open_optuna_storage

    monkeypatch.setenv("SWEEP_HEARTBEAT_SECONDS", "1")
    monkeypatch.setenv("SWEEP_GRACE_SECONDS", "2")
    study = optuna.create_study(storage=open_optuna_storage(f"sqlite:///{tmp_path / 's.db'}"), study_name="s")
    me = Owner.me()
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        trial = study.ask()
        _owned(trial, {**me.to_dict(), "pid": owner.pid, "start_ticks": _start_ticks(owner.pid)})
        _optuna.storage(study).record_heartbeat(trial._trial_id)
        assert reap_lost(study, me) == []
        time.sleep(3.5)  # its heartbeat is older than the grace period
        assert reap_lost(study, me) == [], "a live orchestrator on this host was reaped"
    finally:
        owner.kill()
        owner.wait()
    assert reap_lost(study, me) == [trial.number]


def _holder(url: str) -> subprocess.Popen[str]:
    """A process that takes the schema lock, says so, and lets go when its stdin closes."""
    code = ("import sys\nfrom sweep.study.storage import schema_lock\n"
            f"with schema_lock({url!r}):\n    print('held', flush=True)\n    sys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    return proc


def test_a_stopped_holder_of_the_schema_lock_is_named_and_waited_for(pg_url: str, monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A holder SIGSTOPped inside the lock: the waiter says on stderr, at intervals, whom it waits for
    (its pid and host), keeps waiting, and takes the lock once the holder lets go."""
    import threading

    from sweep.study import storage

    monkeypatch.setattr(storage, "LOCK_SAY_S", 1.0)
    monkeypatch.setattr(storage, "LOCK_REPEAT_S", 2.0)
    holder = _holder(pg_url)
    took = threading.Event()

    def wait() -> None:
        with storage.schema_lock(pg_url):
            took.set()

    waiter = threading.Thread(target=wait, daemon=True)
    said = ""
    try:
        os.kill(holder.pid, signal.SIGSTOP)
        waiter.start()
        deadline = time.monotonic() + 8
        while said.count(f"sweep pid {holder.pid} on ") < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
            said += capsys.readouterr().err
        assert f"sweep pid {holder.pid} on " in said, f"the waiter said nothing about whom it waits for: {said!r}"
        assert said.count(f"sweep pid {holder.pid} on ") >= 2, said  # and says it again while it waits
        assert waiter.is_alive() and not took.is_set()  # a stopped holder may be continued: it waits on
    finally:
        os.kill(holder.pid, signal.SIGCONT)
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
    waiter.join(timeout=30)
    assert took.is_set()


@pytest.mark.parametrize("wrong", ["password", "database"])
def test_a_wrong_password_or_database_name_is_refused_at_once(wrong: str, isolated: Path, pg_url: str) -> None:
    """Bad input, not an outage: exit 2 at once, one line naming what is wrong, no password in it."""
    import uuid

    import sqlalchemy as sa

    from pgserver import password_role

    user = f"sweep_{uuid.uuid4().hex[:8]}"
    url = password_role(pg_url, user, "right-horse")
    if wrong == "password":
        url, says = url.replace("right-horse", "hunter2"), f'password authentication failed for user "{user}"'
    else:
        url = sa.engine.make_url(url).set(database="no_such_sweep_db").render_as_string(hide_password=False)
        says = 'database "no_such_sweep_db" does not exist'
    space = write_space(isolated / "s.yaml", TINY_SPACE)
    # A retry window longer than the test's bound: a run that retried instead of refusing at once
    # would not end in time (subprocess.TimeoutExpired), nor with exit 2.
    proc = sweep_cli("run", str(space), "--trials", "1", "--storage", url, env={"SWEEP_DB_RETRY_S": "600"},
                     timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-1500:])
    assert len(lines) == 1 and says in lines[0], lines
    assert "hunter2" not in proc.stderr + proc.stdout and "right-horse" not in proc.stderr + proc.stdout


SECRETS = [
    "postgresql://u@db.example/sweep?password=hunter2",
    "postgresql+psycopg://u:hunter2@db.example/sweep?sslmode=require&sslpassword=hunter2",
    "postgresql://u@db.example/sweep?sslmode=require&PASSWORD=hunter2",
    "postgresql:///sweep?host=/run/postgresql&password=hunter2",  # no "@": no userinfo at all
    "postgresql://u@db.example/sweep?api_token=hunter2&client_secret=hunter2&password=hunter2&password=hunter2",
    "mysql+pymysql://u@db.example/sweep?passwd=hunter2&my_secret_key=hunter2",
    "postgresql://u@db.example:notaport/sweep?password=hunter2",  # a URL SQLAlchemy cannot parse
]


@pytest.mark.parametrize("url", SECRETS)
def test_no_secret_in_a_url_query_survives_safe_url_or_redact_argv(url: str) -> None:
    from sweep.study.storage import redact_argv, safe_url

    shown = safe_url(url)
    assert "hunter2" not in shown, shown
    assert "/sweep" in shown  # the rest is still there to read
    for argv in (["sweep", "run", "s.yaml", "--storage", url], ["sweep", "run", f"--storage={url}"]):
        assert "hunter2" not in " ".join(redact_argv(argv)), redact_argv(argv)
    assert safe_url("postgresql://u@h/db?sslmode=require") == "postgresql://u@h/db?sslmode=require"
