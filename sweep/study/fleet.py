"""Many orchestrators on one study: who runs each trial, heartbeats, lost trials, hardware classes.

A RUNNING trial is never taken for an orphan on its state alone: it may belong to a
live orchestrator on another host. It is lost only when

- its heartbeat is older than the storage's grace period (Optuna's RDB heartbeat), or
- it was run on this host (hostname, machine id and PID namespace alike), in this boot, by a
  pid that is gone: then it is reaped at once, without waiting out the grace period, or
- it carries no owner (asked, its owner not yet written, or a sweep before heartbeats): the first
  reaper to see it gives it a heartbeat, at the database's clock, and it is lost once that is
  older than the grace period. Optuna's ``datetime_start`` is never compared with a clock here:
  it is the asking host's local time, in its own time zone.

Whoever sees a lost trial first fails it as ``orchestrator_lost`` and re-queues its
parameters once; the storage lets only one of several reapers win.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import Any

from sweep import _optuna, platforms
from sweep.errors import StudyError
from sweep.measure.host import cpu_model, machine_cpus, mem_total_gb


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


class Heartbeat:
    """Marks one trial alive in the storage every interval, until stopped. A failed beat (the
    database briefly away) is tried again at the next interval rather than ending the sweep."""

    def __init__(self, study: Any, trial: Any) -> None:
        self._storage = _optuna.storage(study)
        self._tid = _optuna.trial_id(trial)
        self._interval = self._storage.get_heartbeat_interval()
        self._stop = threading.Event()
        self._storage.record_heartbeat(self._tid)  # at once: a trial with no beat is never judged stale
        self._thread = threading.Thread(target=self._loop, name="sweep-heartbeat", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._storage.record_heartbeat(self._tid)
            except Exception:  # noqa: BLE001 - the next beat may get through; the grace period allows it
                pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _lost(study: Any, t: Any, me: Owner, stale: set[int]) -> bool:
    owner = t.user_attrs.get("owner")
    tid = _optuna.trial_id(t)
    if tid in stale:
        return True
    if owner is None:
        # Its first heartbeat (ours, or its owner's) ages it by the database's clock; a storage
        # without heartbeats (never one sweep opens) judges no trial stale.
        _optuna.first_heartbeat(study, tid)
        return False
    return me.same_host(owner) and owner.get("pid") != me.pid and me.gone(owner)


def reap_lost(study: Any, me: Owner) -> list[int]:
    """Fail every lost RUNNING trial as ``orchestrator_lost`` and re-queue its parameters once.

    Returns the numbers of the trials this call failed (another reaper may have won the rest).
    """
    from optuna.trial import TrialState

    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return []
    stale = set(_optuna.stale_trial_ids(study))
    reaped = []
    for t in running:
        if not _lost(study, t, me, stale):
            continue
        if not _optuna.fail_if_running(study, _optuna.trial_id(t), {"fail_reason": "orchestrator_lost"}):
            continue
        reaped.append(t.number)
        if t.params and "requeued_from" not in t.user_attrs:
            study.enqueue_trial(t.params, user_attrs={"requeued_from": t.number})
    return reaped


def others_running(study: Any, me: Owner) -> list[Any]:
    """RUNNING trials that are not this orchestrator's."""
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if (t.user_attrs.get("owner") or {}).get("pid") != me.pid
            or not me.same_host(t.user_attrs.get("owner") or {})]
