"""A stand-in for systemd, where none runs as PID 1: start a unit's service as systemd would.

It reads the [Service] section sweep's systemd export writes and applies each directive to the
process it starts: CPUAffinity=, Nice=, CPUSchedulingPolicy= and Environment= before the exec
(systemd applies them to the forked child before it runs ExecStart), ExecStartPre= before
ExecStart (a failure ends the start), then ExecStartPost= with $MAINPID set. A directive it does
not know is an error, never skipped: a knob the export learns must be taught here before a test
can call the unit "run".

What it cannot stand in for is listed in ``NOT_APPLIED`` with the reason; the tests that start a
unit say so.
"""

from __future__ import annotations

import ctypes  # here, not after the switch to the service's user, who cannot read root's interpreter
import os
import shlex
import subprocess
from pathlib import Path
from typing import Any

_POLICIES = {"other": os.SCHED_OTHER, "batch": os.SCHED_BATCH, "idle": os.SCHED_IDLE}
# What the stand-in does not do, and why that leaves the comparison with the trial intact: the
# I/O weight, and the sandbox, which systemd builds from mount,
# user and network namespaces and a seccomp filter. The sandbox takes away what llama-server never
# uses (systemd-analyze verify and security check the directives themselves).
_SANDBOX = {"ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "PrivateUsers", "PrivateIPC",
            "ProtectHostname", "ProtectClock", "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs",
            "ProtectControlGroups", "ProtectProc", "ProcSubset", "CapabilityBoundingSet", "AmbientCapabilities",
            "RestrictAddressFamilies", "RestrictNamespaces", "IPAddressDeny", "IPAddressAllow", "SystemCallFilter",
            "SystemCallArchitectures", "LockPersonality", "MemoryDenyWriteExecute", "RestrictRealtime",
            "RestrictSUIDSGID", "RemoveIPC", "UMask", "DevicePolicy", "KeyringMode"}
NOT_APPLIED = {"IOWeight": "an I/O weight (the trials set none)",
               "Restart": "no restarts in a test", **{k: "the sandbox (namespaces, seccomp)" for k in _SANDBOX}}
APPLIED = {"ExecStart", "ExecStartPre", "ExecStartPost", "CPUAffinity", "Nice", "CPUSchedulingPolicy",
           "Environment", "DynamicUser", "User", "LoadCredential", "NoNewPrivileges",
           # The kernel limits: a cgroup made as systemd makes the service's, with sweep's own code
           # (the trial's), beneath this process's cgroup; the service starts inside it.
           "CPUQuota", "CPUQuotaPeriodSec", "CPUWeight", "MemoryHigh", "MemoryMax"}
DYNAMIC_UID = 61999  # in systemd's range for dynamic users (61184-65519), unused here


def service(text: str) -> dict[str, list[str]]:
    """The [Service] section's directives, each with its values in order (a key may repeat)."""
    out: dict[str, list[str]] = {}
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    unknown = sorted(set(out) - APPLIED - set(NOT_APPLIED))
    if unknown:
        raise ValueError(f"the unit stand-in does not know {', '.join(unknown)}: teach tests/unitrun.py")
    return out


def _command(value: str, credentials: str) -> tuple[list[str], bool]:
    """A command line as systemd reads what sweep writes (single quotes, ``$$`` for ``$``, ``%d`` for
    the credentials directory), and whether a failure is ignored (a leading ``-``)."""
    ignore = value.startswith("-")
    return shlex.split(value.lstrip("-").replace("$$", "$").replace("%d", credentials)), ignore


def _uid(s: dict[str, list[str]]) -> int:
    if "User" in s:
        import pwd

        return pwd.getpwnam(s["User"][-1]).pw_uid
    return DYNAMIC_UID if s.get("DynamicUser", ["no"])[-1] == "yes" else 0


def limits(s: dict[str, list[str]], ncpu: int | None = None) -> dict[str, Any]:
    """The unit's cgroup directives as sweep's cgroup knobs (CPUQuota= is a share of one CPU)."""
    ncpu = ncpu or os.cpu_count() or 1
    out: dict[str, Any] = {}
    if "CPUQuota" in s:
        out["cpu_quota_pct"] = float(s["CPUQuota"][-1].rstrip("%")) / ncpu
    if "CPUQuotaPeriodSec" in s:
        out["cpu_period_ms"] = float(s["CPUQuotaPeriodSec"][-1].removesuffix("ms"))
    if "CPUWeight" in s:
        w = s["CPUWeight"][-1]
        out["cpu_weight"] = w if w == "idle" else int(w)
    for directive, knob in (("MemoryHigh", "memory_high_gb"), ("MemoryMax", "memory_max_gb")):
        if directive in s:
            value = s[directive][-1]
            scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(value[-1], 1)
            out[knob] = float(value.rstrip("KMG")) * scale / 2**30
    return out


CGROUP_NAME = "sweep-unit"


def _cgroup(s: dict[str, list[str]]) -> list[str]:
    """The unit's cgroup, made beneath ours with its limits: the cgroup.procs files to join. A service
    always runs in a cgroup of its own, at a normal weight where its unit sets no CPU directive."""
    from sweep.trial import cgroups

    wanted = cgroups.limits_of(limits(s)) or dict(cgroups.NORMAL_WEIGHT)
    dirs = cgroups.make(wanted, CGROUP_NAME, exist_ok=True)
    return [os.path.join(d, "cgroup.procs") for d in sorted(set(dirs.values()))]


def start(unit: Path, *extra: str, credentials: dict[str, Path] | None = None, **popen: Any) -> subprocess.Popen[bytes]:
    """Run the unit's ExecStartPre commands, start its ExecStart (with ``extra`` arguments), its
    directives applied, then run its ExecStartPost commands; a failed ExecStartPre raises
    RuntimeError before ExecStart, as systemd fails the start. The service leads a session of its
    own, as under systemd, as the unit's user (``DynamicUser=yes``: an unused uid), with no new
    privileges. ``credentials`` maps a LoadCredential= source to the file to read in its place;
    each is copied into a directory only the service's user can read, as systemd does."""
    import shutil
    import tempfile

    s = service(unit.read_text())
    uid = _uid(s)
    creds = tempfile.mkdtemp(prefix="sweep-creds-")
    for spec in s.get("LoadCredential", []):
        name, _, source = spec.partition(":")
        copy = Path(creds) / name
        shutil.copyfile((credentials or {}).get(source, source), copy)
        copy.chmod(0o400)
        os.chown(copy, uid, uid)
    os.chown(creds, uid, uid)
    os.chmod(creds, 0o500)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}  # systemd starts from an almost empty environment
    for assignment in s.get("Environment", []):
        for pair in shlex.split(assignment):
            key, _, value = pair.partition("=")
            env[key] = value
    cpus = {int(c) for c in s["CPUAffinity"][-1].split()} if "CPUAffinity" in s else None
    nice = int(s["Nice"][-1]) if "Nice" in s else 0
    policy = _POLICIES[s.get("CPUSchedulingPolicy", ["other"])[-1]]

    no_new_privileges = s.get("NoNewPrivileges", ["no"])[-1] == "yes"
    procs = _cgroup(s)

    def as_the_service() -> None:
        if uid:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        if no_new_privileges:
            ctypes.CDLL(None).prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS

    def apply() -> None:
        for path in procs:
            with open(path, "w") as f:
                f.write(str(os.getpid()))
        if cpus is not None:
            os.sched_setaffinity(0, cpus)
        if nice:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
        if policy != os.SCHED_OTHER:
            os.sched_setscheduler(0, policy, os.sched_param(0))
        as_the_service()

    env["CREDENTIALS_DIRECTORY"] = creds
    for pre in s.get("ExecStartPre", []):  # in the service's context, as systemd runs it
        cmd, ignore = _command(pre, creds)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30, preexec_fn=apply)
        if done.returncode and not ignore:
            raise RuntimeError(f"ExecStartPre {pre!r} failed: {done.stderr.strip()}")
    argv, _ = _command(s["ExecStart"][-1], creds)
    proc = subprocess.Popen([*argv, *extra], env=env, preexec_fn=apply, start_new_session=True, **popen)
    for post in s.get("ExecStartPost", []):
        cmd, ignore = _command(post, creds)
        done = subprocess.run(cmd, env={**env, "MAINPID": str(proc.pid)}, capture_output=True, text=True, timeout=30,
                              preexec_fn=as_the_service)
        if done.returncode and not ignore:
            proc.kill()
            raise RuntimeError(f"ExecStartPost {post!r} failed: {done.stderr.strip()}")
    return proc
