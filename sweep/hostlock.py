"""One measurement at a time per host: a host-wide ``flock`` (portalocker's on the portable path)
held from the noise guard until the worker is reaped.

Two trials measured at once on one machine spoil each other's CPU figures, so every
measuring process (``sweep run``, ``sweep verify``, ``sweep trial``, the bench scripts)
takes this lock. The lock file holds the holder's pid and what it measures, so a
waiter can say whom it waits for. The lock is re-entrant within a process: the
orchestrator holds it across ask-and-measure, and ``run_trial`` inside takes it again.
Waiters are served first come, first served (``_Place``): two studies on one host take turns.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
import tempfile
import threading
import time
from typing import Callable, Iterator

from sweep.platforms import is_portable
from sweep.procs import owner_gone, owner_tag

# One path per host, whoever asks: not the user's TMPDIR, which would give each user a lock of their own.
DEFAULT_LOCK = os.path.join("/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir(), "sweep-measurement.lock")
_POLL_S = 0.25
_STALE_S = 10.0  # a waiter refreshes its place every _POLL_S
_HOLDER_MAX = 64 * 1024  # a holder's note is a line: what is longer is not one

_held = threading.local()


def lock_path() -> str:
    """``SWEEP_LOCK_FILE``, or one well-known path per machine."""
    return os.environ.get("SWEEP_LOCK_FILE") or DEFAULT_LOCK


def holder(path: str | None = None) -> dict[str, object]:
    """Who holds (or last held) the lock, as written in the lock file: its pid, what it measures and
    since when. Anyone may write the file, so only those fields, of those types, are taken from it:
    anything else reads as no holder."""
    try:
        raw = _read_regular(path or lock_path(), _HOLDER_MAX)
        held = json.loads(raw) if raw else {}
    except (OSError, ValueError, RecursionError):  # RecursionError: "[[[[..." nested past the parser's depth
        return {}
    if not isinstance(held, dict):
        return {}
    types: dict[str, tuple[type, ...]] = {"pid": (int,), "what": (str,), "since": (int, float)}
    return {k: v for k, v in held.items()
            if k in types and isinstance(v, types[k]) and not isinstance(v, bool)}


def _read_regular(path: str, limit: int) -> bytes:
    """At most ``limit`` bytes of a regular file, never through a symlink, nor waiting on a FIFO
    someone put in its place (OSError for either)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, f"{path}: not a regular file")
        return os.read(fd, limit)
    finally:
        os.close(fd)


def held_here() -> bool:
    return getattr(_held, "depth", 0) > 0


@contextlib.contextmanager
def measurement_lock(what: str, on_wait: Callable[[str], None] | None = None,
                     should_stop: Callable[[], bool] | None = None, enabled: bool = True) -> Iterator[float]:
    """Hold the host's measurement lock for the block; yields the seconds spent waiting for it.

    Args:
        what: what this process measures (a study name, say), for a waiter's message.
        on_wait: told once, in words, whom this process waits for.
        should_stop: polled while waiting; when it returns True, waiting ends with ``LockWaitStopped``.
        enabled: False measures without the lock (``--no-lock``): nothing is taken.
    """
    if not enabled or held_here():
        _held.depth = getattr(_held, "depth", 0) + 1
        try:
            yield 0.0
        finally:
            _held.depth -= 1
        return
    path = lock_path()
    fd, writable = _open_lock(path)
    started = time.monotonic()
    place = _Place(path)
    try:
        ahead = place.ahead()
        if ahead or not _try(fd):
            if on_wait:
                on_wait(_whom(path, ahead))
            place.join()
            while place.ahead() or not _try(fd):
                if should_stop and should_stop():
                    raise LockWaitStopped()
                time.sleep(_POLL_S)
                place.refresh()
    except BaseException:
        os.close(fd)
        raise
    finally:
        place.leave()
    try:
        if writable:  # who holds it, for a waiter's message (a file another user left read-only: no message)
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "what": what, "since": time.time()}).encode(), 0)
        _held.depth = 1
        try:
            yield time.monotonic() - started
        finally:
            _held.depth = 0
            _unlock(fd)
    finally:
        os.close(fd)


def _try(fd: int) -> bool:
    if is_portable():
        from sweep.platforms import portable

        return portable.lock(fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _unlock(fd: int) -> None:
    if is_portable():
        from sweep.platforms import portable

        portable.unlock(fd)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)


class _Place:
    """A waiter's place in the line, as a file beside the lock: ``<lock>.queue.<ticket>.<pid>``,
    holding its owner (``procs.owner_tag``: pid, start ticks, host and boot).

    ``flock`` itself is not fair: on release the kernel wakes the waiters, and a holder that
    asks again at once (an orchestrator between two trials) may win every time, so a second
    study on the host would never measure. So whoever asks first looks for places taken before
    its own, and while one is there it waits behind it, even with the lock free. A place is
    kept fresh while its process waits; one not refreshed within ``_STALE_S`` (its process
    stopped, say), or dated more than that ahead of now (anyone can date a file), is passed over.
    One whose owner is gone (``procs.owner_gone``: a pid given out again counts as gone; another
    host's never does) is removed. Where no file can be made beside the lock, the wait is unordered.
    """

    def __init__(self, lock: str) -> None:
        self.folder, self.prefix = os.path.dirname(lock) or ".", os.path.basename(lock) + ".queue."
        self.ticket: int | None = None
        self.path: str | None = None

    def join(self) -> None:
        self.ticket = time.time_ns()
        path = os.path.join(self.folder, f"{self.prefix}{self.ticket:020d}.{os.getpid()}")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        except OSError:
            self.path = None
            return
        try:
            os.write(fd, owner_tag().encode())
        except OSError:
            pass  # a place without its owner is judged by its pid alone
        finally:
            os.close(fd)
        self.path = path

    def refresh(self) -> None:
        if self.path:
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def leave(self) -> None:
        if self.path:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            self.path = None

    def ahead(self) -> list[int]:
        """The pids of the live places taken before this one (before now, for one not in line), first first."""
        try:
            names = sorted(n for n in os.listdir(self.folder) if n.startswith(self.prefix))
        except OSError:
            return []
        now = time.time()
        pids = []
        for name in names:
            try:
                ticket, pid = (int(x) for x in name[len(self.prefix):].split("."))
            except ValueError:
                continue
            if pid <= 0 or pid == os.getpid() or (self.ticket is not None and ticket >= self.ticket):
                continue
            path = os.path.join(self.folder, name)
            try:
                changed = os.lstat(path).st_mtime
                tag = _read_regular(path, 100).decode(errors="replace")
            except OSError:
                continue  # it left just now, or it is no place (a symlink, a FIFO)
            gone = owner_gone(tag, changed) if tag.split(".")[0] == str(pid) else None
            if gone is None:
                gone = not _alive(pid)  # a place that names no owner (an older sweep's): its pid alone
            if gone:
                with contextlib.suppress(OSError):
                    os.unlink(path)  # its process died waiting (another user's stays)
            elif abs(now - changed) < _STALE_S:
                pids.append(pid)
        return pids


def _whom(path: str, ahead: list[int]) -> str:
    """Whom a new waiter waits for: the places in line before it, or else the lock's holder. The
    lock file names its last holder, who may have let go already while others still wait their turn."""
    h = holder(path)
    last = f"pid {h.get('pid', '?')} ({h.get('what', '?')})"
    if ahead:
        return (f"waiting for the measurement lock behind {len(ahead)} process{'es' if len(ahead) > 1 else ''} "
                f"already in line (pid {', '.join(map(str, ahead))}, first in line first); last taken by {last}")
    return f"waiting for the measurement lock held by {last}"


def _alive(pid: int) -> bool:
    if is_portable():
        from sweep.platforms import portable

        return portable.alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process
    return True


def _open_lock(path: str) -> tuple[int, bool]:
    """The lock file, shared by every user of the host: created once, world-writable (the creator's
    umask would leave it 0644, and a second user could not open it), and opened without O_CREAT
    when it exists (``fs.protected_regular`` refuses O_CREAT on another user's file in a sticky
    directory such as /tmp). Never through a symlink. Returns the descriptor and whether it is
    writable: ``flock`` needs only a read descriptor, so a file another user left 0644 still locks.

    World-writable on purpose: the file's content is only the holder's note for a waiter's message
    (``holder`` reads any content safely, and nothing is decided on it), and a holder of any user
    should be able to write it, or a waiter would name another user's earlier trial as the holder.
    The line itself (``_Place``) is kept in files of their own beside the lock, which need no write
    access to it."""
    from sweep.errors import SweepError

    def refused(why: str) -> SweepError:
        try:
            owner = str(os.lstat(path).st_uid)
        except OSError:
            owner = "?"
        return SweepError(f"{path}: the measurement lock {why}: ask its owner (uid {owner}) or root to remove it, "
                          "or set SWEEP_LOCK_FILE to another path every user of this host can reach")

    for _ in range(3):
        try:  # O_NONBLOCK: a FIFO put in its place must not hang the open
            fd, writable = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK), True
        except PermissionError:
            try:
                fd, writable = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK), False
            except PermissionError:
                raise refused("cannot be read") from None
        except FileNotFoundError:
            fd = -1
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise SweepError(f"{path}: the measurement lock is a symbolic link, which sweep never follows: "
                                 "remove it") from None
            if exc.errno == errno.EISDIR:
                raise refused("is a directory") from None
            raise
        if fd >= 0:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise refused("is not a regular file")
            return fd, writable
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
        except FileExistsError:
            continue  # another process made it just now: open theirs
        os.fchmod(fd, 0o666)
        return fd, True
    raise OSError(f"{path}: the measurement lock file keeps appearing and vanishing")


class LockWaitStopped(Exception):
    """Waiting for the measurement lock ended because the user asked to stop."""
