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
        for name in ("hostlock.py", "procs.py", "errors.py", "platforms/__init__.py"):
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


# ---- issue 34 §9: a lock file anyone can write, and whose files are whose


@pytest.mark.parametrize("content", [b"[]", b'"a string"', b"42", b"null", b'{"pid": [1], "what": {"a": 1}}',
                                     b"\xff\xfe not UTF-8", b"[" * 100_000, b""],
                         ids=["list", "string", "number", "null", "wrong-types", "not-utf8", "deep", "empty"])
def test_a_lock_file_of_any_content_names_no_holder_and_never_crashes_a_waiter(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: bytes) -> None:
    """The lock file is world-writable: whatever another user wrote into it reads as no holder."""
    import fcntl

    from sweep.hostlock import LockWaitStopped

    lock = tmp_path / "host.lock"
    monkeypatch.setenv("SWEEP_LOCK_FILE", str(lock))
    lock.write_bytes(content)
    other = os.open(lock, os.O_RDWR)  # a second open file holds the lock, as another process's would
    fcntl.flock(other, fcntl.LOCK_EX)
    try:
        said: list[str] = []
        with pytest.raises(LockWaitStopped):  # before: AttributeError ('list' object has no attribute 'get')
            with measurement_lock("a waiter", on_wait=said.append, should_stop=lambda: bool(said)):
                pytest.fail("it measured while the lock was held")
        assert said == ["waiting for the measurement lock held by pid ? (?)"]
    finally:
        os.close(other)
    assert holder(str(lock)) == {}
    with measurement_lock("the next holder"):
        pass
    assert holder(str(lock))["what"] == "the next holder"  # written over whole


def test_a_place_in_line_dated_in_the_future_holds_no_one_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A place another user made, dated a year ahead, named for a live process that is not waiting:
    freshness by mtime alone kept it ahead of everyone for good."""
    import time

    from sweep.hostlock import LockWaitStopped

    lock = tmp_path / "host.lock"
    monkeypatch.setenv("SWEEP_LOCK_FILE", str(lock))
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        place = tmp_path / f"host.lock.queue.{1:020d}.{bystander.pid}"
        place.write_text("")
        future = time.time() + 365 * 86400
        os.utime(place, (future, future))
        gave_up = time.monotonic() + 3
        try:
            with measurement_lock("a waiter", should_stop=lambda: time.monotonic() > gave_up) as waited:
                assert waited < 2
        except LockWaitStopped:
            pytest.fail("a place dated in the future held the line")
    finally:
        bystander.kill()
        bystander.wait()


ABSENT = 2**22 + 17  # above the kernel's largest pid_max: no process here has it


def test_a_place_in_line_of_another_host_is_kept_and_waited_for_while_fresh(tmp_path: Path) -> None:
    """A lock directory shared between hosts (NFS, containers sharing /tmp): a waiter's place records
    its host, and one of another host is never removed for its pid, which means nothing here."""
    from sweep.hostlock import _Place

    lock = tmp_path / "host.lock"
    place = tmp_path / f"host.lock.queue.{1:020d}.{ABSENT}"
    place.write_text(f"{ABSENT}.1234.ffffffff.ffffffff")  # pid.start ticks.host.boot of a waiter elsewhere
    assert _Place(str(lock)).ahead() == [ABSENT]  # before: removed, its pid being absent here
    assert place.exists()


def _again(pid: int) -> subprocess.Popen[bytes]:
    """A new process given ``pid``, which an ended process had: the kernel's next pid set by hand."""
    for _ in range(100):
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(pid - 1))
        proc = subprocess.Popen(["sleep", "60"])
        if proc.pid == pid:
            return proc
        proc.kill()
        proc.wait()
    pytest.skip(f"another process took pid {pid} each time")


needs_pid_control = pytest.mark.skipif(os.geteuid() != 0 or not os.access("/proc/sys/kernel/ns_last_pid", os.W_OK),
                                       reason="needs root, to give an ended process's pid to a new one")

_JOIN = """
import sys
from sweep.hostlock import _Place
_Place(sys.argv[1]).join()
"""


@needs_pid_control
def test_a_place_of_a_dead_waiter_whose_pid_was_given_again_is_removed(tmp_path: Path) -> None:
    import sys

    from sweep.hostlock import _Place

    lock = tmp_path / "host.lock"
    subprocess.run([sys.executable, "-c", _JOIN, str(lock)], check=True)  # it joined the line, then ended
    [place] = tmp_path.glob("host.lock.queue.*")
    pid = int(place.name.rsplit(".", 1)[1])
    again = _again(pid)
    try:
        assert _Place(str(lock)).ahead() == []  # before: [pid], kept by a stranger with its number
        assert not place.exists()
    finally:
        again.kill()
        again.wait()


_LEAVE = """
import os, sys
from sweep.procs import owned_prefix
os.mkdir(os.path.join(sys.argv[1], owned_prefix("sweep-trial-") + "x"))
print("made", flush=True)
sys.stdin.readline()
"""


@needs_pid_control
def test_a_temp_name_whose_pid_was_given_to_another_process_is_swept(tmp_path: Path) -> None:
    import sys

    from sweep.procs import sweep_dead

    subprocess.run([sys.executable, "-c", _LEAVE, str(tmp_path)], input="\n", text=True, check=True)
    [left] = tmp_path.iterdir()
    pid = int(left.name[len("sweep-trial-"):].split("-")[0].split(".")[0])
    again = _again(pid)
    try:
        assert sweep_dead(tmp_path, "sweep-trial-") == 1  # before: 0, a stranger with its pid kept it
        assert not left.exists()
    finally:
        again.kill()
        again.wait()


def _in_another_pid_namespace(code: str, *args: str) -> subprocess.Popen[str]:
    """``code`` run as a container sharing this /tmp would run it: in a PID namespace of its own, its
    pid a number no process has here."""
    import shutil
    import sys

    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare, to run a process in a PID namespace of its own")
    for pid in range(30000, 32000):
        if not os.path.exists(f"/proc/{pid}"):
            break
    shell = f'echo {pid - 1} > /proc/sys/kernel/ns_last_pid && "$@"'  # not exec: the child is given {pid}
    return subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", shell, "sh",
                             sys.executable, "-c", code, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)


def test_a_live_process_of_another_pid_namespace_keeps_its_temp_files(tmp_path: Path) -> None:
    """Containers sharing /tmp: a pid of one is meaningless in another, so its files are never swept."""
    from sweep.procs import sweep_dead

    other = _in_another_pid_namespace(_LEAVE, str(tmp_path))
    try:
        assert other.stdout is not None and other.stdout.readline() == "made\n"
        [made] = tmp_path.iterdir()
        assert not os.path.exists(f"/proc/{made.name[len('sweep-trial-'):].split('-')[0].split('.')[0]}")
        assert sweep_dead(tmp_path, "sweep-trial-") == 0  # before: 1, the live container's directory
        assert made.exists()
    finally:
        other.communicate("\n", timeout=60)


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_a_lock_path_that_is_no_regular_file_is_refused_in_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """Anyone may put a FIFO or a directory at the well-known path first: refused with what to do,
    never a hang or a traceback."""
    from sweep.errors import SweepError

    lock = tmp_path / "host.lock"
    os.mkfifo(lock) if kind == "fifo" else lock.mkdir()
    monkeypatch.setenv("SWEEP_LOCK_FILE", str(lock))
    with pytest.raises(SweepError, match="measurement lock (is not a regular file|is a directory).*SWEEP_LOCK_FILE"):
        with measurement_lock("a trial"):
            pass
    assert holder(str(lock)) == {}


def test_what_an_earlier_boot_of_this_machine_left_is_swept_once_older_than_the_boot(tmp_path: Path) -> None:
    """Not a pid judgement: no process of an earlier boot runs now, but a clone of this machine (the
    same machine id, booted apart) might share the directory, so only what was last changed before
    this boot began is taken for the earlier boot's (a partial download a power loss left, say)."""
    import time

    from sweep.procs import _booted, owner_tag, sweep_dead

    if owner_tag().count(".") != 3 or owner_tag().split(".")[2] == "0" * 8:
        pytest.skip("needs /proc and a machine id to tell this machine's boots apart")
    pid, ticks, host, _boot = owner_tag().split(".")
    earlier = tmp_path / f"sweep-trial-{pid}.{ticks}.{host}.ffffffff-a"
    earlier.mkdir()
    os.utime(earlier, (_booted() - 60, _booted() - 60))
    recent = tmp_path / f"sweep-trial-{pid}.{ticks}.{host}.fffffffe-b"  # changed since: perhaps a clone's, running
    recent.mkdir()
    elsewhere = tmp_path / f"sweep-trial-{pid}.{ticks}.ffffffff.ffffffff-c"  # another machine's: never judged
    elsewhere.mkdir()
    os.utime(elsewhere, (time.time() - 10 * 365 * 86400,) * 2)
    assert sweep_dead(tmp_path, "sweep-trial-") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([recent.name, elsewhere.name])
