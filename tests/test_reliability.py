"""The fault-injection suite: real sweeps through the real CLI, with faults injected.

In every case the faulty trial is recorded with its reason, the next trial
completes on the real SmolLM2 model, the study holds as many finished trials as
were asked for, no worker or probe survives, and SQLite's integrity check passes.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import TINY_SPACE, stray_processes, sweep_cli, wait_for, write_space

FAULT_SPACE = TINY_SPACE.replace("  timeout_seconds: 120\n", "  timeout_seconds: 120\n  progress_timeout_seconds: 5\n"
                                 "  memory_limit_gb: 1.0\n")

# Every test here runs real sweeps, servers or calibrated loads; make test runs them on both measurement paths.
# The faults are the runner's to handle, so the trials run the fake worker (sweep.testing), but for
# the truncated model, which is the real bindings' to refuse.
pytestmark = [pytest.mark.slow, pytest.mark.portable, pytest.mark.usefixtures("fake_worker")]


def trials(db: Path) -> list[tuple[int, str, str | None]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT t.number, t.state, a.value_json FROM trials t LEFT JOIN trial_user_attributes a "
            "ON a.trial_id = t.trial_id AND a.key = 'fail_reason' ORDER BY t.number").fetchall()
    return [(n, state, json.loads(reason) if reason else None) for n, state, reason in rows]


def attr(db: Path, number: int, key: str):
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT a.value_json FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
                           "WHERE t.number = ? AND a.key = ?", (number, key)).fetchone()
    return json.loads(row[0]) if row else None


def integrity_ok(db: Path) -> bool:
    with sqlite3.connect(db) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


@pytest.fixture
def db(isolated: Path) -> Path:
    return isolated / "studies.db"


@pytest.mark.parametrize("mode, reason, detail", [
    ("segfault", "crashed", "SIGSEGV"),
    ("abort", "crashed", "SIGABRT"),
    ("hang", "timeout", "no progress for 5 s"),
    ("garbage", "protocol", "garbage instead of a result"),
    ("memory", "memory_budget", "over 1 GB"),
    ("memory_spike", "memory_budget", "over 1 GB"),  # faster than a window: the high-water mark catches it
])
def test_fault_is_recorded_and_the_sweep_goes_on(mode: str, reason: str, detail: str, isolated: Path, db: Path) -> None:
    space = write_space(isolated / "s.yaml", FAULT_SPACE)
    proc = sweep_cli("run", str(space), "--trials", "2", env={"SWEEP_TEST_FAULT": f"{mode}:{isolated / 'flag'}"})
    assert proc.returncode == 0, proc.stderr
    assert trials(db) == [(0, "FAIL", reason), (1, "COMPLETE", None)]
    assert detail in attr(db, 0, "fail_detail")
    assert attr(db, 1, "correctness") is not None
    assert integrity_ok(db)
    assert not stray_processes()


def test_truncated_model_fails_to_load_and_the_real_one_completes(isolated: Path, db: Path, smollm2_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SWEEP_TEST_WORKER")  # the real bindings refuse the truncated file
    data = smollm2_path.read_bytes()
    cut = isolated / "cut.gguf"
    cut.write_bytes(data[: len(data) * 6 // 10])  # the header survives; the tensors do not
    body = FAULT_SPACE.replace("models:\n  smollm2-135m: [Q4_1]",
                               f"model_paths:\n  cut: {{path: {cut}}}\nmodels:\n  cut: [Q4_1]\n  smollm2-135m: [Q4_1]")
    space = write_space(isolated / "s.yaml", body)
    proc = sweep_cli("run", str(space), "--trials", "4")
    assert proc.returncode == 0, proc.stderr
    rows = trials(db)
    assert len(rows) == 4
    by_model = {n: attr(db, n, "config")["model"] for n, _, _ in rows}
    assert set(by_model.values()) == {"cut", "smollm2-135m"}  # the seed gives both
    for n, state, reason in rows:
        expected = ("FAIL", "model_load_failed") if by_model[n] == "cut" else ("COMPLETE", None)
        assert (state, reason) == expected
    # The model vanishes between two runs: the next run refuses the space and leaves the study as it was.
    cut.unlink()
    again = sweep_cli("run", str(space), "--trials", "5")
    assert again.returncode == 2 and "does not exist" in again.stderr
    assert trials(db) == rows and integrity_ok(db)


def _running_trial(db: Path) -> bool:
    try:
        return any(state == "RUNNING" for _, state, _ in trials(db))
    except sqlite3.Error:
        return False


def _workers_of(pid: int) -> list[int]:
    """The sweep workers whose parent is ``pid``."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
        except (OSError, ValueError):
            continue
        if ppid == pid and (b"sweep.trial.worker" in cmd or b"sweep.testing.worker" in cmd):
            found.append(int(entry))
    return found


def _start(space: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "sweep", "run", str(space), "--trials", "3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_of_the_orchestrator_then_resume(isolated: Path, db: Path) -> None:
    space = write_space(isolated / "s.yaml", FAULT_SPACE)
    orchestrator = _start(space)
    wait_for(lambda: _running_trial(db))
    wait_for(lambda: bool(_workers_of(orchestrator.pid)))  # into the trial: the worker is up
    orchestrator.kill()
    orchestrator.wait()
    assert not stray_processes()  # the worker died with its parent
    assert integrity_ok(db)
    resumed = sweep_cli("run", str(space), "--trials", "3")
    assert resumed.returncode == 0, resumed.stderr
    rows = trials(db)
    assert len([r for r in rows if r[1] in ("COMPLETE", "FAIL")]) == 3
    assert rows[0] == (0, "FAIL", "orchestrator_lost")
    requeued = [n for n, _, _ in rows if attr(db, n, "requeued_from") == 0]
    assert len(requeued) == 1
    with sqlite3.connect(db) as conn:
        params = conn.execute("SELECT t.number, p.param_name, p.param_value FROM trial_params p JOIN trials t "
                              "ON t.trial_id = p.trial_id WHERE t.number IN (0, ?)", (requeued[0],)).fetchall()
    assert {(k, v) for n, k, v in params if n == 0} == {(k, v) for n, k, v in params if n == requeued[0]}
    assert integrity_ok(db) and not stray_processes()


def _interrupt(isolated: Path, db: Path, times: int) -> str:
    """Start a sweep, press Ctrl-C ``times`` during its first trial; return its stderr."""
    orchestrator = _start(write_space(isolated / "s.yaml", FAULT_SPACE))
    wait_for(lambda: _running_trial(db))
    for _ in range(times):
        time.sleep(0.4)
        orchestrator.send_signal(signal.SIGINT)
    _, err = orchestrator.communicate(timeout=120)
    assert orchestrator.returncode == 130
    return err


def test_one_ctrl_c_finishes_the_trial_in_flight(isolated: Path, db: Path) -> None:
    err = _interrupt(isolated, db, 1)
    assert "stopping after the trial in flight" in err
    assert trials(db) == [(0, "COMPLETE", None)]
    assert integrity_ok(db) and not stray_processes()


def test_two_ctrl_c_abort_the_trial_and_record_it(isolated: Path, db: Path) -> None:
    _interrupt(isolated, db, 2)
    assert trials(db) == [(0, "FAIL", "interrupted")]
    assert integrity_ok(db) and not stray_processes()


def test_dashboard_reading_during_a_sweep_does_not_break_it(isolated: Path, db: Path) -> None:
    from test_e2e import _free_port

    space = write_space(isolated / "s.yaml", FAULT_SPACE)
    assert sweep_cli("run", str(space), "--trials", "1", "--quiet").returncode == 0  # the study exists
    port = _free_port()
    dashboard = subprocess.Popen([str(Path(sys.executable).with_name("optuna-dashboard")), f"sqlite:///{db}",
                                  "--host", "127.0.0.1", "--port", str(port)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    answers: list[int] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/1", timeout=5) as r:
                    answers.append(r.status)
            except OSError:
                pass
            time.sleep(0.05)

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        proc = sweep_cli("run", str(space), "--trials", "3")
    finally:
        stop.set()
        reader.join()
        dashboard.terminate()
        dashboard.wait(timeout=10)
    assert proc.returncode == 0, proc.stderr
    assert answers and set(answers) == {200}
    assert [s for _, s, _ in trials(db)] == ["COMPLETE"] * 3
    assert integrity_ok(db)
