"""The measurement lock is one per host, whoever measures: two users share it."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from sweep.hostlock import holder, measurement_lock

OTHER_UID = 61998  # a user with no account here, as a second user of the machine

_CHILD = """
import fcntl, os, sys
from sweep.hostlock import _open_lock, measurement_lock
fd, writable = _open_lock(sys.argv[1])
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("free", flush=True)
except BlockingIOError:
    print("busy", flush=True)
os.close(fd)  # a second descriptor of this process would wait for the first's lock
if sys.argv[2] == "take":
    with measurement_lock("the other user's trial"):
        print("held", flush=True)
        sys.stdin.readline()
"""


SYSTEM_PYTHON = "/usr/bin/python3"  # the other user cannot reach this session's interpreter under /root


def _as_other_user(path: Path, mode: str) -> subprocess.Popen[str]:
    """The lock's own module, run by another user: copied beside the lock, since the checkout and
    its interpreter may lie where that user cannot read."""
    import shutil

    import sweep

    code = path.parent / "code" / "sweep"
    if not code.exists():
        code.mkdir(parents=True)
        (code / "__init__.py").write_text("")
        for name in ("hostlock.py", "errors.py", "platforms/__init__.py"):
            (code / name).parent.mkdir(exist_ok=True)
            shutil.copy(Path(sweep.__file__).parent / name, code / name)
        for p in (code.parent, code, *code.iterdir(), *code.glob("*/*")):
            p.chmod(0o755)

    def drop() -> None:
        os.setgroups([])
        os.setgid(OTHER_UID)
        os.setuid(OTHER_UID)

    return subprocess.Popen([SYSTEM_PYTHON, "-c", _CHILD, str(path), mode], stdin=subprocess.PIPE, cwd="/",
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=drop,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(code.parent), "SWEEP_LOCK_FILE": str(path)})


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists(SYSTEM_PYTHON),
                    reason="needs root to run a second user, and a python3 every user can run")
def test_two_users_share_one_measurement_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    shared = Path(tempfile.mkdtemp(prefix="sweep-locks-"))
    shared.chmod(0o1777)  # as /tmp: anyone may create, only the owner may remove
    path = shared / "measurement.lock"
    monkeypatch.setenv("SWEEP_LOCK_FILE", str(path))
    with measurement_lock("root's trial"):
        probe = _as_other_user(path, "probe")
        out, err = probe.communicate(timeout=60)
        assert probe.returncode == 0, err  # before: PermissionError, the file was the creator's 0644
        assert out.split() == ["busy"]
    other = _as_other_user(path, "take")
    try:
        assert other.stdout.readline().strip() == "free" and other.stdout.readline().strip() == "held"
        assert holder(str(path))["pid"] == other.pid  # the other user could write who holds it
        assert path.stat().st_mode & 0o777 == 0o666
    finally:
        other.communicate("\n", timeout=60)
    assert other.returncode == 0


def test_the_lock_never_follows_a_symlink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "victim"
    target.write_text("keep me")
    link = tmp_path / "measurement.lock"
    link.symlink_to(target)
    monkeypatch.setenv("SWEEP_LOCK_FILE", str(link))
    from sweep.errors import SweepError

    with pytest.raises(SweepError, match="symbolic link"):
        with measurement_lock("a trial"):
            pass
    assert target.read_text() == "keep me"


_HOG = """
import os, sys, time
from pathlib import Path
from sweep.hostlock import measurement_lock
for i in range(60):  # takes the lock again the moment it lets go, as an orchestrator between trials does
    with measurement_lock("a study that never pauses"):
        Path(sys.argv[1] + ".new").write_text(str(i))
        os.replace(sys.argv[1] + ".new", sys.argv[1])  # whole, for a reader
        time.sleep(0.5)
"""


def test_a_holder_that_asks_again_at_once_lets_a_waiter_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Waiters take turns: ``flock`` alone would let the hog win the lock back at every release."""
    import sys
    import time

    monkeypatch.setenv("SWEEP_LOCK_FILE", str(tmp_path / "host.lock"))
    rounds = tmp_path / "rounds"
    hog = subprocess.Popen([sys.executable, "-c", _HOG, str(rounds)])
    try:
        while not rounds.exists():
            time.sleep(0.05)
        seen: list[int] = []
        with measurement_lock("the second study", on_wait=lambda _: seen.append(int(rounds.read_text()))):
            after = int(rounds.read_text())
            assert hog.poll() is None
            time.sleep(0.5)  # the hog has let go and asked again by now
            assert list(tmp_path.glob(f"host.lock.queue.*.{hog.pid}"))  # it waits its turn in line
        assert after - seen[0] <= 2  # the round it was in, and one it may have begun before this waiter lined up
        assert not list(tmp_path.glob(f"host.lock.queue.*.{os.getpid()}"))  # a place is given up once served
    finally:
        hog.kill()
        hog.wait()


_WAITER = """
import sys, time
from sweep.hostlock import _Place
place = _Place(sys.argv[1])
place.join()
print("in line", flush=True)
while True:
    place.refresh()
    time.sleep(0.2)
"""


def test_a_new_waiter_names_those_already_in_line_not_only_the_last_holder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lock file names its last holder, who may have let go while another process still waits
    its turn: a newcomer waits behind that one, and must say so."""
    import sys

    from sweep.hostlock import LockWaitStopped

    lock = tmp_path / "host.lock"
    monkeypatch.setenv("SWEEP_LOCK_FILE", str(lock))
    with measurement_lock("the study that measured last"):
        pass  # the lock is free again; the file still names this process
    waiter = subprocess.Popen([sys.executable, "-c", _WAITER, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert waiter.stdout is not None and waiter.stdout.readline() == "in line\n"
        said: list[str] = []
        with pytest.raises(LockWaitStopped):
            with measurement_lock("a newcomer", on_wait=said.append, should_stop=lambda: bool(said)):
                pytest.fail("it measured ahead of a process already waiting")
        assert said == [f"waiting for the measurement lock behind 1 process already in line (pid {waiter.pid}, "
                        f"first in line first); last taken by pid {os.getpid()} (the study that measured last)"]
    finally:
        waiter.kill()
        waiter.wait()
    assert not list(tmp_path.glob(f"host.lock.queue.*.{os.getpid()}"))  # the newcomer gave its place up
