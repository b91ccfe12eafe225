"""Child processes of a trial: kill a whole process group, reap with a bounded wait, keep the
orchestrator's own threads off the trial's CPUs, read the tail of a log, and collect what a
reporting child (the probe, the CPU-bound foreground) prints.

A worker or probe runs in its own session and process group, so one ``killpg``
reaches everything it started.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Generic, Iterator, TypeVar

T = TypeVar("T")

_TERM_GRACE_S = 2.0


@contextlib.contextmanager
def killer(proc: subprocess.Popen[bytes]) -> Iterator[None]:
    """Make sure no process of the worker's group outlives the block, whatever happens."""
    try:
        yield
    finally:
        kill_group(proc.pid)
        reap(proc.pid)


def reap(pid: int, timeout_s: float = 10.0) -> tuple[int, Any] | None:
    """Collect a killed child's status and rusage, waiting at most ``timeout_s``; None if it was
    already collected or would not go (a process stuck in the kernel: then it is left, not waited on
    forever). A thread-group leader reads as a zombie while its other threads still exit, so the
    group can look dead a moment before the child can be collected."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            pid_, status, rusage = os.wait4(pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if pid_:
            return status, rusage
        if time.monotonic() > deadline:
            return None
        time.sleep(0.01)


def group_alive(pgid: int) -> bool:
    """Whether the process group has a member that is not a zombie.

    ``killpg(pgid, 0)`` cannot tell: it succeeds while an unreaped zombie remains.
    """
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def kill_group(pgid: int) -> None:
    """SIGTERM the whole process group, then SIGKILL whatever is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + _TERM_GRACE_S
        while time.monotonic() < deadline:
            if not group_alive(pgid):
                return
            time.sleep(0.02)


@contextlib.contextmanager
def stay_off(cpus: tuple[int, ...] | None) -> Iterator[None]:
    """Keep this process's threads (and those they start) off the trial's CPUs, where others exist.

    The monitor, the pipe reader and the wait loop must not steal time from the
    worker they measure. Affinity is per thread on Linux, so every thread is moved. On the portable
    path it is the process's (psutil), and where the OS has none (macOS) nothing moves.
    """
    from sweep.platforms import is_portable, portable

    if is_portable():
        with portable.stay_off(cpus):
            yield
        return
    allowed = os.sched_getaffinity(0)
    others = allowed - set(cpus) if cpus else set()
    if not others:
        yield
        return
    tids = [int(t) for t in os.listdir("/proc/self/task")]
    for tid in tids:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(tid, others)
    try:
        yield
    finally:
        for tid in (int(t) for t in os.listdir("/proc/self/task")):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, allowed)


def tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Reporter(Generic[T]):
    """``python -m MODULE ARGS`` in a session of its own, as a user's program would run, with each
    line it prints parsed into ``samples`` by a reader thread; ``stop`` ends its whole group."""

    def __init__(self, module: str, args: list[str], parse: Callable[[str], T],
                 wrap: Callable[[list[str]], list[str]] | None = None) -> None:
        """``wrap``: the command line as it must start (in a cgroup of its own, say)."""
        self.samples: list[T] = []
        self._parse = parse
        argv = [sys.executable, "-m", module, *args]
        self.proc = subprocess.Popen(wrap(argv) if wrap else argv, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, start_new_session=True, text=True)
        self._thread = threading.Thread(target=self._read, name=module, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.samples.append(self._parse(line))

    def stop(self) -> list[T]:
        if self.proc.poll() is None:
            kill_group(self.proc.pid)  # SIGKILL ends a stopped (SIGSTOP) group too
            self.proc.wait()
        self._thread.join(timeout=5)
        return self.samples


def signal_name(number: int) -> str:
    """A signal's name, for the real-time ones too (SIGRTMIN+3), which ``signal.Signals`` lacks."""
    import signal

    try:
        return signal.Signals(number).name
    except ValueError:
        low, high = signal.SIGRTMIN, signal.SIGRTMAX
        return f"SIGRTMIN+{number - low}" if low <= number <= high else f"signal {number}"


def start_ticks(pid: int) -> int | None:
    """The process's start in clock ticks since boot (/proc/PID/stat field 22): a pid given out
    again later has another. None where it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _read_id(*paths: str) -> str:
    for path in paths:
        try:
            with open(path) as f:
                value = f.read().strip()
        except OSError:
            continue
        if value:
            return value
    return ""


_NO_MACHINE = "0" * 8  # the host field where the machine id is unknown: never taken for this machine's


@functools.lru_cache(maxsize=1)
def _this_host() -> tuple[str, str] | None:
    """This host and this boot as two short fields: the machine id with the PID namespace (containers
    on one kernel share its boot id, not their pids), and the boot id. None where /proc cannot tell."""
    boot = _read_id("/proc/sys/kernel/random/boot_id")
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    if not boot:
        return None
    machine = _read_id("/etc/machine-id", "/var/lib/dbus/machine-id")

    def short(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()[:8]

    return short(f"{machine}\0{namespace}") if machine else _NO_MACHINE, short(boot)


def _booted() -> float:
    """When this boot began (``btime``, seconds since the epoch); 0 where it cannot be read."""
    try:
        with open("/proc/stat") as f:
            return float(next(line.split()[1] for line in f if line.startswith("btime ")))
    except (OSError, StopIteration, IndexError, ValueError):
        return 0.0


def owner_tag() -> str:
    """This process as the owner field of a name: ``PID.TICKS.HOST.BOOT``, so that whoever comes next
    can tell whether it is gone (``owner_gone``), on this host and only here. Where /proc cannot tell
    (the portable path), the pid alone."""
    pid, host = os.getpid(), _this_host()
    ticks = start_ticks(pid)
    return f"{pid}.{ticks}.{host[0]}.{host[1]}" if host and ticks is not None else str(pid)


_TAG = re.compile(r"(\d{1,10})(?:\.(\d{1,20})\.([0-9a-f]{8})\.([0-9a-f]{8}))?", re.ASCII)


def owner_gone(tag: str, changed: float | None = None) -> bool | None:
    """Whether the process an owner field names (``owner_tag``) has ended; None for what is not one.

    One of another machine or PID namespace is never judged: its pid means nothing here (a home on
    NFS, containers sharing /tmp). One of an earlier boot of this machine is gone when its file was
    last ``changed`` (mtime) before this boot; one of this boot, when its pid is gone or now belongs
    to a process started at another tick. A pid alone (a name made before the start ticks) is judged
    by the pid, as it always was.
    """
    m = _TAG.fullmatch(tag)
    if not m:
        return None
    pid = int(m[1])
    if m[2] is None:
        if os.path.isdir("/proc/self"):
            return not os.path.exists(f"/proc/{pid}")
        from sweep.platforms import portable

        return not portable.alive(pid)
    here = _this_host()
    if here is None or m[3] != here[0]:
        return False
    if m[4] != here[1]:
        return here[0] != _NO_MACHINE and changed is not None and changed < _booted()
    now = start_ticks(pid)
    if now is None:
        return not os.path.exists(f"/proc/{pid}")  # there but unreadable (hidepid): another user's, alive
    return now != int(m[2])


def owned_prefix(prefix: str) -> str:
    """A temp name's prefix that names this process, so that whoever comes next can tell whether
    its owner is gone (``sweep_dead``): ``sweep-trial-`` becomes ``sweep-trial-1234.5678.HOST.BOOT-``
    (``owner_tag``)."""
    return f"{prefix}{owner_tag()}-"


def sweep_dead(directory: str | os.PathLike[str], prefix: str) -> int:
    """Remove what processes that are gone left in ``directory`` under ``owned_prefix(prefix)``
    names (a SIGKILL or a power loss skips their clean-up), judged by ``owner_gone``: never what a
    process of another host left. Returns how many were removed."""
    import shutil

    removed = 0
    try:
        entries = os.listdir(directory)
    except OSError:
        return 0
    for entry in entries:
        tag = entry[len(prefix):].split("-", 1)[0] if entry.startswith(prefix) else ""
        if tag == str(os.getpid()):
            continue
        path = os.path.join(directory, entry)
        try:
            changed = os.lstat(path).st_mtime
        except OSError:
            continue  # gone already
        if not owner_gone(tag, changed):
            continue
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
            removed += 1
        except OSError:
            pass  # another user's, or gone already
    return removed


def write_atomically(path: str | os.PathLike[str], text: str, durable: bool = False) -> None:
    """``text`` into ``path`` whole or not at all: a temp file beside it under this process's
    ``owned_prefix(".partial-")`` (so ``sweep_dead`` removes one a SIGKILL left), renamed over it.
    ``durable``: the file and then its directory are fsync'd before this returns, so the rename
    survives a power loss."""
    import tempfile

    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=owned_prefix(".partial-"), suffix=os.path.splitext(path)[1])
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def die_with_parent(parent: int | None = None) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux PR_SET_PDEATHSIG); on the
    portable path (or where prctl is absent), a thread that watches the parent does it.

    A worker or probe runs in its own session, so without this an orchestrator
    killed with SIGKILL would leave it running, unsupervised.
    """
    import ctypes

    from sweep.platforms import is_portable, portable

    # The parent the spawner named (SWEEP_PARENT_PID), not the one seen now: a parent killed during
    # this interpreter's start-up has already been replaced by init, and getppid() would hide it.
    parent = parent or int(os.environ.get("SWEEP_PARENT_PID") or os.getppid())
    if os.getppid() != parent:  # the parent died before this interpreter got here
        os._exit(1)
    if is_portable():
        portable.watch_parent(parent)
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        portable.watch_parent(parent)
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)
