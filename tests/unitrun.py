"""A stand-in for systemd, where none runs as PID 1: start a unit's service as systemd would.

It reads the [Service] section sweep's systemd export writes and applies each directive to the
process it starts: CPUAffinity=, Nice=, CPUSchedulingPolicy= and Environment= before the exec
(systemd applies them to the forked child before it runs ExecStart), then ExecStartPost= with
$MAINPID set. A directive it does not know is an error, never skipped: a knob the export learns
must be taught here before a test can call the unit "run".

What it cannot stand in for is listed in ``NOT_APPLIED`` with the reason; the tests that start a
unit say so.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path
from typing import Any

_POLICIES = {"other": os.SCHED_OTHER, "batch": os.SCHED_BATCH, "idle": os.SCHED_IDLE}
# Resource limits systemd enforces through the unit's cgroup. The trials these units come from ran
# without them, so leaving them out does not change what is compared with the trial.
NOT_APPLIED = {"CPUQuota": "a cgroup limit", "MemoryMax": "a cgroup limit", "Restart": "no restarts in a test"}
APPLIED = {"ExecStart", "ExecStartPost", "CPUAffinity", "Nice", "CPUSchedulingPolicy", "Environment"}


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


def _command(value: str) -> tuple[list[str], bool]:
    """A command line as systemd reads what sweep writes (single quotes, ``$$`` for ``$``), and
    whether a failure is ignored (a leading ``-``)."""
    ignore = value.startswith("-")
    return shlex.split(value.lstrip("-").replace("$$", "$")), ignore


def start(unit: Path, *extra: str, **popen: Any) -> subprocess.Popen[bytes]:
    """Start the unit's ExecStart (with ``extra`` arguments), its directives applied, then run
    its ExecStartPost commands. The service leads a session of its own, as under systemd."""
    s = service(unit.read_text())
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}  # systemd starts from an almost empty environment
    for assignment in s.get("Environment", []):
        for pair in shlex.split(assignment):
            key, _, value = pair.partition("=")
            env[key] = value
    cpus = {int(c) for c in s["CPUAffinity"][-1].split()} if "CPUAffinity" in s else None
    nice = int(s["Nice"][-1]) if "Nice" in s else 0
    policy = _POLICIES[s.get("CPUSchedulingPolicy", ["other"])[-1]]

    def apply() -> None:
        if cpus is not None:
            os.sched_setaffinity(0, cpus)
        if nice:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
        if policy != os.SCHED_OTHER:
            os.sched_setscheduler(0, policy, os.sched_param(0))

    argv, _ = _command(s["ExecStart"][-1])
    proc = subprocess.Popen([*argv, *extra], env=env, preexec_fn=apply, start_new_session=True, **popen)
    for post in s.get("ExecStartPost", []):
        cmd, ignore = _command(post)
        done = subprocess.run(cmd, env={**env, "MAINPID": str(proc.pid)}, capture_output=True, text=True, timeout=30)
        if done.returncode and not ignore:
            proc.kill()
            raise RuntimeError(f"ExecStartPost {post!r} failed: {done.stderr.strip()}")
    return proc
