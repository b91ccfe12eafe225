"""Many orchestrators on one study: who runs each trial, heartbeats, lost trials, hardware classes.

A RUNNING trial is never taken for an orphan on its state alone: it may belong to a
live orchestrator on another host. It is lost only when

- it was run on this host (hostname, machine id and PID namespace alike), in this boot, by a
  pid that is gone: then it is reaped at once, without waiting out the grace period. Its pid
  decides both ways: a live owner on this host is never reaped, however old its heartbeat, or
- its heartbeat is older than the storage's grace period (Optuna's RDB heartbeat), and a
  heartbeat could have landed all that while: this process has seen the database answer for
  a full grace period (``Witness``). After the database was away, or slower to answer than a
  heartbeat interval, and in a process that has only just begun to look, every owner gets a
  full grace period before its heartbeat is judged; or
- it carries no owner (asked, its owner not yet written, or a sweep before heartbeats): the first
  reaper to see it gives it a heartbeat, at the database's clock, and it is lost once that is
  older than the grace period. Optuna's ``datetime_start`` is never compared with a clock here:
  it is the asking host's local time, in its own time zone.

Whoever sees a lost trial first fails it as ``orchestrator_lost`` and re-queues its
parameters once; the storage lets only one of several reapers win.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import socket
import threading
import time
import weakref
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import Any, Callable, Iterator

from sweep import _optuna, platforms
from sweep.errors import StudyError
from sweep.measure.host import cpu_model, machine_cpus, mem_total_gb
from sweep.study.storage import heartbeat_settings


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def _machine_id() -> str:
    """/etc/machine-id (systemd's, else D-Bus's), or an id made once and kept in sweep's cache."""
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            with open(path) as f:
                value = f.read().strip()
            if value:
                return value
        except OSError:
            pass
    from sweep.models.registry import cache_dir

    kept = cache_dir() / "host-id"
    try:
        return kept.read_text().strip()
    except OSError:
        import uuid

        kept.parent.mkdir(parents=True, exist_ok=True)
        value = uuid.uuid4().hex
        kept.write_text(value + "\n")
        return value


def _pid_namespace() -> str:
    """The PID namespace: containers on one kernel share its boot id, not their pids."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return "unknown"


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot: a pid reused later has another."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


@dataclass(frozen=True)
class Owner:
    """Who runs a trial. ``SWEEP_HOST_ID`` names a simulated host (tests, benches): two of them
    on one machine are as two hosts to each other."""

    host: str
    boot_id: str
    pid: int
    start_ticks: int | None
    machine_id: str | None = None
    pid_namespace: str | None = None

    @classmethod
    def me(cls) -> Owner:
        pid = os.getpid()
        return cls(os.environ.get("SWEEP_HOST_ID") or socket.gethostname(), _boot_id(), pid, _start_ticks(pid),
                   _machine_id(), _pid_namespace())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def same_host(self, other: dict[str, Any]) -> bool:
        """The same hostname, machine id and PID namespace: cloned VMs and containers that share a
        hostname are not taken for one host (an owner recorded without the ids never is)."""
        return (other.get("host"), other.get("machine_id"), other.get("pid_namespace")) == \
            (self.host, self.machine_id, self.pid_namespace)

    def this_boot(self, other: dict[str, Any]) -> bool:
        """Whether ``other`` ran on this host in this boot, where its pid tells whether it still runs."""
        return self.same_host(other) and other.get("boot_id") == self.boot_id

    def gone(self, other: dict[str, Any]) -> bool:
        """Whether ``other`` (an owner on this host, in this boot) can no longer be running. Another
        boot id proves nothing: a clone of this machine booted too. Its heartbeat decides then."""
        if other.get("boot_id") != self.boot_id:
            return False
        pid = other.get("pid")
        return not isinstance(pid, int) or _start_ticks(pid) != other.get("start_ticks")


def hardware_fingerprint() -> dict[str, Any]:
    """What makes figures comparable between hosts: CPU model, logical CPUs, memory, llama.cpp build,
    and the measurement path where it is not Linux's own (``sweep.platforms``).

    ``SWEEP_TEST_HARDWARE`` (a JSON object) overrides fields, to simulate another class.
    """
    try:
        llama = metadata.version("llama_cpp_python")
    except metadata.PackageNotFoundError:
        llama = "absent"
    fp = {"cpu_model": cpu_model(), "logical_cpus": machine_cpus(), "mem_gb": round(mem_total_gb()),
          "llama_cpp_python": llama}
    path = platforms.name()
    if path != "linux":  # a field only off the Linux path, so the classes of studies made before it stand
        fp["measurement_path"] = path
    override = os.environ.get("SWEEP_TEST_HARDWARE")
    if override:
        fp.update(json.loads(override))
    return fp


def class_hash(fingerprint: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:10]


def hardware_class(name: str | None = None) -> dict[str, Any]:
    """This host's class: ``{"name", "hash", "fingerprint"}``; the name defaults to a readable one."""
    fp = hardware_fingerprint()
    h = class_hash(fp)
    return {"name": name or f"{fp['logical_cpus']}cpu-{fp['mem_gb']}gb-{h[:6]}", "hash": h, "fingerprint": fp}


def check_hardware(study: Any, mine: dict[str, Any], allow_name: str | None) -> None:
    """Refuse a host of another class than the study's, unless the user named the study's class.

    Raises:
        StudyError: one line naming each field that differs.
    """
    theirs = study.user_attrs.get("hardware_class")
    if not theirs or theirs["hash"] == mine["hash"] or allow_name == theirs["name"]:
        return
    ours, study_fp = mine["fingerprint"], theirs["fingerprint"]
    diffs = [f"{k} {ours.get(k)!r} here, {study_fp.get(k)!r} in the study"
             for k in [*study_fp, *(k for k in ours if k not in study_fp)] if ours.get(k) != study_fp.get(k)]
    raise StudyError(f"this host is of another hardware class than study {study.study_name!r} "
                     f"(class {theirs['name']!r}): {'; '.join(diffs)}. Its figures would not be comparable; "
                     f"pass --hardware-class {theirs['name']} if you know they are")


def hosts(study: Any) -> list[str]:
    """The hosts that measured the study's trials (the creating host for a study from before
    per-trial owners)."""
    named = {t.user_attrs["owner"]["host"] for t in study.get_trials(deepcopy=False) if "owner" in t.user_attrs}
    return sorted(named) or [str((study.user_attrs.get("host") or {}).get("hostname", "?"))]


def describe_class(study: Any) -> str:
    """One line: the hosts and the hardware class they share."""
    hc = study.user_attrs.get("hardware_class")
    if not hc:
        h = study.user_attrs.get("host") or {}
        return f"{h.get('hostname', '?')} ({h.get('cpu_model', '?')}, {h.get('logical_cpus', '?')} CPUs)"
    fp = hc["fingerprint"]
    return (f"{', '.join(hosts(study))}: hardware class {hc['name']} ({fp['cpu_model']}, {fp['logical_cpus']} "
            f"logical CPUs, {fp['mem_gb']} GB, llama-cpp-python {fp['llama_cpp_python']})")


class Witness:
    """What this process has seen of one database: since when it has answered every request, each
    within a heartbeat interval. Only then could every owner's heartbeats have landed."""

    def __init__(self, interval: float, grace: float) -> None:
        self.interval, self.grace = interval, grace
        self.watched = False  # a DatabaseWatch asks every interval: a longer silence is this process not looking
        self._since: float | None = None  # None: not seen answering since the last failure (or ever)
        self._last: float | None = None  # the last answer
        self._asked: dict[int, float] = {}  # the requests in flight, and when each was sent
        self._ids = itertools.count()
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def asking(self) -> Iterator[None]:
        """Around one request to the database: its answer, or its failure, is what was seen."""
        key, started = next(self._ids), time.monotonic()
        with self._lock:
            self._asked[key] = started
        try:
            yield
        except Exception:
            self._saw(key, answered=False)
            raise
        self._saw(key, answered=True)

    def _saw(self, key: int, answered: bool) -> None:
        now = time.monotonic()
        with self._lock:
            started = self._asked.pop(key)
            if not answered or now - started > self.interval:  # away, or too slow for a heartbeat to land
                self._since = None
                return
            if self._since is None or self._silent(now):
                self._since = now
            self._last = now

    def _silent(self, now: float) -> bool:
        """A watched database unasked for two intervals: this process was stopped (or starved) meanwhile."""
        return self.watched and self._last is not None and now - self._last > 2 * self.interval

    def vouches(self) -> bool:
        """Whether the database has answered for a full grace period, and answers now: a heartbeat older
        than that is evidence. A request still unanswered after an interval says it may be away."""
        now = time.monotonic()
        with self._lock:
            if any(now - started > self.interval for started in self._asked.values()) or self._silent(now):
                return False
            return self._since is not None and now - self._since >= self.grace


_WITNESSES: weakref.WeakKeyDictionary[Any, Witness] = weakref.WeakKeyDictionary()


def witness(study: Any) -> Witness:
    """This process's witness of the study's database (one per storage it opened)."""
    storage = _optuna.storage(study)
    if storage not in _WITNESSES:
        _WITNESSES[storage] = Witness(*heartbeat_settings())
    return _WITNESSES[storage]


class _Beats:
    """Calls ``beat`` every heartbeat interval on a thread of its own, each under the study's witness,
    until stopped. A failed call (the database briefly away) is tried again at the next interval."""

    def __init__(self, study: Any, beat: Callable[[], object], name: str) -> None:
        self._witness = witness(study)
        self._beat = beat
        self._interval = _optuna.storage(study).get_heartbeat_interval() or self._witness.interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                with self._witness.asking():
                    self._beat()
            except Exception:  # noqa: BLE001 - the next beat may get through; the grace period allows it
                pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


class Heartbeat(_Beats):
    """Marks one trial alive in the storage every interval, until stopped."""

    def __init__(self, study: Any, trial: Any) -> None:
        storage, tid = _optuna.storage(study), _optuna.trial_id(trial)
        with witness(study).asking():
            storage.record_heartbeat(tid)  # at once: a trial with no beat is never judged stale
        super().__init__(study, lambda: storage.record_heartbeat(tid), "sweep-heartbeat")


class DatabaseWatch(_Beats):
    """Asks the database every heartbeat interval, for the whole of a sweep, so that its witness sees
    an outage between trials too (waiting for the host's lock, say), when no heartbeat would."""

    def __init__(self, study: Any) -> None:
        super().__init__(study, lambda: _optuna.stale_trial_ids(study), "sweep-database-watch")
        self._witness.watched = True

    def __enter__(self) -> DatabaseWatch:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._witness.watched = False
        self.stop()


def _lost(study: Any, t: Any, me: Owner, stale: set[int]) -> bool:
    owner = t.user_attrs.get("owner")
    tid = _optuna.trial_id(t)
    if owner is not None and me.this_boot(owner):
        return me.gone(owner)  # its pid decides, both ways, whatever its heartbeat says
    if tid in stale:
        return True
    if owner is None:
        # Its first heartbeat (ours, or its owner's) ages it by the database's clock; a storage
        # without heartbeats (never one sweep opens) judges no trial stale.
        _optuna.first_heartbeat(study, tid)
    return False


def reap_lost(study: Any, me: Owner) -> list[int]:
    """Fail every lost RUNNING trial as ``orchestrator_lost`` and re-queue its parameters once.

    Returns the numbers of the trials this call failed (another reaper may have won the rest).
    """
    from optuna.trial import TrialState

    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return []
    seen = witness(study)
    with seen.asking():
        stale = set(_optuna.stale_trial_ids(study))
    if not seen.vouches():
        stale = set()  # heartbeats that could not have landed prove nothing
    reaped = []
    for t in running:
        if not _lost(study, t, me, stale):
            continue
        if not _optuna.fail_if_running(study, _optuna.trial_id(t), {"fail_reason": "orchestrator_lost"}):
            continue
        reaped.append(t.number)
        # A promotion is not queued: its rung decides it again (sweep.study.promotion.NOT_ITS_FAULT).
        if t.params and "requeued_from" not in t.user_attrs and "promotes" not in t.user_attrs:
            study.enqueue_trial(t.params, user_attrs={"requeued_from": t.number})
    return reaped


def others_running(study: Any, me: Owner) -> list[Any]:
    """RUNNING trials that are not this orchestrator's."""
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if (t.user_attrs.get("owner") or {}).get("pid") != me.pid
            or not me.same_host(t.user_attrs.get("owner") or {})]
