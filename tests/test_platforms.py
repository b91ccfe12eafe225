"""The portable path's process control, proven on Linux by forcing it (``SWEEP_PLATFORM=portable``):
knobs set and read back through psutil, the knobs it lacks refused at load time, a child that
dies with its parent by a watching thread, the foreground paused by psutil, and the lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from sweep.errors import SpaceError
from sweep.hostlock import measurement_lock
from sweep.measure.host import allowed_cpus
from sweep.study.space import load_space
from sweep.trial.runner import run_trial

from conftest import QUICK_TAIL, sweep_cli, wait_for, write_space
from test_runner import QUICK, TASKS, config

PORTABLE = {"SWEEP_PLATFORM": "portable"}


@pytest.fixture
def portable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWEEP_PLATFORM", "portable")


def _space(extra: str) -> str:
    return f"""\
version: 1
name: plat
models:
  smollm2-135m: [Q4_1]
fixed:
  n_threads: 1
  n_threads_batch: 1
  n_ctx: 512
  max_tokens: 8
{extra}""" + QUICK_TAIL


@pytest.mark.parametrize("extra, key, words", [
    ("  sched_policy: idle\n", "fixed.sched_policy", "scheduling policies"),
    ("  cpu_quota_pct: 25\n", "fixed.cpu_quota_pct", "cgroups"),
    ("  backend: server\n  prio: -1\n", "fixed.prio", "per-thread read-back"),
])
def test_a_knob_the_portable_path_lacks_is_refused_naming_knob_and_path(extra: str, key: str, words: str,
                                                                       isolated: Path) -> None:
    space = write_space(isolated / "p.yaml", _space(extra))
    proc = sweep_cli("run", str(space), "--trials", "1", env=PORTABLE)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"p.yaml: {key}:" in lines[0] and words in lines[0] and "portable measurement path" in lines[0]
    assert not (isolated / "studies.db").exists()  # nothing made, nothing changed


def test_the_same_knobs_load_on_the_linux_path(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWEEP_PLATFORM", "linux")
    load_space(write_space(isolated / "p.yaml", _space("  sched_policy: idle\n")))  # no refusal


def test_a_budget_on_psi_is_refused_on_the_portable_path(isolated: Path, portable: None) -> None:
    space = write_space(isolated / "p.yaml", _space("constraints:\n  psi_cpu_some_active_peak_pct: {max: 50}\n"))
    with pytest.raises(SpaceError, match="constraints.psi_cpu_some_active_peak_pct: .*portable"):
        load_space(space)


@pytest.mark.slow
@pytest.mark.skipif(len(allowed_cpus()) < 2, reason="needs two CPUs")
def test_affinity_and_nice_are_set_and_read_back_through_psutil(smollm2_path: Path, portable: None) -> None:
    cpu = allowed_cpus()[-1]
    outcome = run_trial(config(smollm2_path, cpus=(cpu,), nice=7), QUICK, TASKS)
    assert outcome.ok, outcome.detail
    (entry,) = outcome.knobs["threads"]  # one reading for the whole process: psutil has no thread's own
    assert entry["scope"] == "process" and entry["nice"] == 7 and entry["cpus"] == str(cpu)
    assert entry["policy"] is None  # not readable on this path, so not claimed
    assert outcome.knobs["autogroup"] is None


@pytest.mark.slow
def test_a_nice_that_did_not_apply_fails_the_trial_on_the_portable_path(smollm2_path: Path, portable: None,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWEEP_TEST_SKIP_KNOBS", "nice")
    outcome = run_trial(config(smollm2_path, nice=7), replace(QUICK, prompts=1), TASKS[:1])
    assert outcome.reason == "knob_not_applied"
    assert "has nice 0, not 7" in outcome.detail


_PARENT = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], start_new_session=True,
                         env={**os.environ, "SWEEP_PARENT_PID": str(os.getpid())})
print(child.pid, flush=True)
time.sleep(600)
"""
_CHILD = """
import sys, time
from sweep.procs import die_with_parent
if sys.argv[-1] == "watch":
    die_with_parent()
time.sleep(600)
"""


@pytest.mark.parametrize("watch", [True, False])
def test_a_child_dies_with_its_parent_by_a_watching_thread(watch: bool) -> None:
    """No PR_SET_PDEATHSIG on the portable path: a thread sees the parent gone. Without it the
    child, in a session of its own, would live on (the second case, which shows the test can fail)."""
    code = _CHILD.replace('sys.argv[-1] == "watch"', str(watch))
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, code], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, **PORTABLE})
    child = int(parent.stdout.readline())
    try:
        time.sleep(1.0)  # the child is up and watching
        assert psutil.pid_exists(child)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + (10 if watch else 2)  # the watcher polls every 0.2 s
        while psutil.pid_exists(child) and psutil.Process(child).status() != psutil.STATUS_ZOMBIE \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        gone = not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE
        assert gone == watch
    finally:
        parent.kill()
        if psutil.pid_exists(child):
            os.kill(child, signal.SIGKILL)


@pytest.mark.slow  # reads a paused process's CPU time: alone on the machine
def test_the_foreground_is_paused_and_resumed_by_psutil(portable: None) -> None:
    from sweep.measure.foreground import CpuLoad

    load = CpuLoad(1, 4)
    try:
        proc = psutil.Process(load.proc.pid)

        def tree() -> list[psutil.Process]:  # the workload's processes (it may compute in children)
            return [proc, *proc.children(recursive=True)]

        def cpu() -> float:
            return sum(sum(p.cpu_times()[:2]) for p in tree())

        time.sleep(1.0)
        assert cpu() > 0.2  # it computes
        load.pause()
        # SIGSTOP is delivered when the kernel next schedules each process: stopped soon, not at once.
        wait_for(lambda: all(p.status() == psutil.STATUS_STOPPED for p in tree()), timeout=10)
        before = cpu()
        time.sleep(0.5)
        assert cpu() - before < 0.02  # no CPU while paused
        load.resume()
        time.sleep(0.5)
        assert all(p.status() != psutil.STATUS_STOPPED for p in tree())
        assert cpu() - before > 0.1  # it computes again
    finally:
        load.stop()


_HOLD = """
import sys
from sweep.hostlock import measurement_lock
with measurement_lock("the linux path"):
    print("held", flush=True)
    sys.stdin.readline()
"""


@pytest.mark.parametrize("holder_path, waiter_path", [("linux", "portable"), ("portable", "linux")])
def test_the_two_paths_share_one_measurement_lock(holder_path: str, waiter_path: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """portalocker's lock is flock on POSIX: a sweep on either path waits for the other."""
    lock = tmp_path / "host.lock"
    monkeypatch.setenv("SWEEP_LOCK_FILE", str(lock))
    monkeypatch.setenv("SWEEP_PLATFORM", waiter_path)
    other = subprocess.Popen([sys.executable, "-c", _HOLD.replace("the linux path", f"the {holder_path} path")],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "SWEEP_PLATFORM": holder_path})
    try:
        assert other.stdout.readline().strip() == "held"
        told: list[str] = []
        stop_at = time.monotonic() + 1.0
        from sweep.hostlock import LockWaitStopped

        with pytest.raises(LockWaitStopped):
            with measurement_lock("waiter", on_wait=told.append, should_stop=lambda: time.monotonic() > stop_at):
                pass
        assert told and f"the {holder_path} path" in told[0]
        other.stdin.write("\n")
        other.stdin.flush()
        other.wait(timeout=10)
        with measurement_lock("waiter") as waited:  # free now
            assert waited < 1.0
    finally:
        other.kill()


HOST_FACTS = """
import json, os, sys
sys.modules["fcntl"] = None  # as on Windows: nothing below may lean on it
del os.sched_getaffinity, os.sched_setaffinity  # as on macOS and Windows
from sweep.measure.host import allowed_cpus, mem_total_gb
from sweep.procs import stay_off
import psutil
with stay_off((allowed_cpus()[0],)):
    inside = sorted(psutil.Process().cpu_affinity())
print(json.dumps({"cpus": allowed_cpus(), "mem_gb": mem_total_gb(), "inside": inside,
                  "after": sorted(psutil.Process().cpu_affinity())}))
"""


@pytest.mark.skipif(len(allowed_cpus()) < 2, reason="needs two CPUs")
def test_the_hosts_cpus_and_memory_are_read_without_linux_calls_on_the_portable_path() -> None:
    """allowed_cpus, the memory of the fingerprint and the orchestrator's step off the trial's CPUs,
    with Linux's own affinity calls deleted: a child held to two CPUs reads those two by psutil."""
    two = allowed_cpus()[-2:]
    out = subprocess.run([sys.executable, "-c", HOST_FACTS], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "SWEEP_PLATFORM": "portable"},
                         preexec_fn=lambda: os.sched_setaffinity(0, two))
    assert out.returncode == 0, out.stderr
    facts = json.loads(out.stdout)
    assert facts["cpus"] == two
    assert facts["inside"] == two[1:] and facts["after"] == two  # off the trial's CPU, then back
    with open("/proc/meminfo") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
    assert abs(facts["mem_gb"] - kb / 1024 ** 2) < 0.01  # the same MemTotal, read by psutil
