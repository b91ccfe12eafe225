"""The politeness knobs: CPU affinity, nice, scheduling policy and OpenMP's spin, in one place.

What the worker applies, what the runner reads back and checks, and what the exports
write come from here, so the three cannot drift apart. Affinity, nice and policy are
per thread on Linux and inherited by threads created later, so they are applied on the
worker's only thread before ``llama_cpp`` is imported; OpenMP reads its variables when
the library loads, so they are in the worker's environment from the start.

This is the Linux path's implementation. On the portable path (``sweep.platforms``) ``apply`` and
``read_threads`` go through psutil: affinity and nice on the process, read back once for the
process (no thread's own is visible), and no policy or autogroup, which the knob table refuses
there (``Param.needs``).
"""

from __future__ import annotations

import os
import shlex
from typing import Any

from sweep.platforms import is_portable, portable

POLICIES = {"normal": os.SCHED_OTHER, "batch": os.SCHED_BATCH, "idle": os.SCHED_IDLE}
POLICY_NAMES = {v: k for k, v in POLICIES.items()}
_OS_POLICY = {"batch": "SCHED_BATCH", "idle": "SCHED_IDLE"}  # names in Python's os module


def environment(c: dict[str, Any]) -> dict[str, str]:
    """Variables that must be set before ``llama_cpp`` is imported (OpenMP reads them at load)."""
    env: dict[str, str] = {}
    if c.get("omp_wait_policy"):
        env["OMP_WAIT_POLICY"] = c["omp_wait_policy"].upper()
    if c.get("gomp_spincount") is not None:
        env["GOMP_SPINCOUNT"] = str(c["gomp_spincount"])
    return env


def apply(c: dict[str, Any]) -> None:
    """Set affinity, nice and policy on the calling (only) thread.

    ``SWEEP_TEST_SKIP_KNOBS=affinity,nice,sched_policy`` (a test hook) leaves the named ones unset.
    """
    skip = set(filter(None, os.environ.get("SWEEP_TEST_SKIP_KNOBS", "").split(",")))
    if is_portable():
        portable.apply_knobs(c.get("cpus") if "affinity" not in skip else None,
                             c.get("nice", 0) if "nice" not in skip else 0)
        return
    if c.get("cpus") is not None and "affinity" not in skip:
        os.sched_setaffinity(0, c["cpus"])
    if c.get("nice") and "nice" not in skip:
        os.setpriority(os.PRIO_PROCESS, 0, c["nice"])
        set_autogroup_nice(c["nice"])
    policy = c.get("sched_policy", "normal")
    if policy != "normal" and "sched_policy" not in skip:
        os.sched_setscheduler(0, POLICIES[policy], os.sched_param(0))


def set_autogroup_nice(nice: int) -> None:
    """Give the process's autogroup the same nice, where the kernel groups by session.

    With autogroup (``/proc/sys/kernel/sched_autogroup_enabled``), the scheduler first shares the
    CPU fairly between sessions, and a thread's nice only weighs inside its own session. A worker
    in its own session at nice 19 then still takes half the machine from a user's build in
    another session; the autogroup's nice is what makes it yield.
    """
    try:
        with open("/proc/self/autogroup", "w") as f:
            f.write(str(nice))
    except OSError:
        pass  # no autogroup here (or not ours to change): the thread's nice is all there is


def read_autogroup(pid: int | str = "self") -> int | None:
    """The nice of the process's autogroup, or None where the kernel has none (or the portable
    path, which neither sets nor reads it)."""
    if is_portable():
        return None
    try:
        with open(f"/proc/{pid}/autogroup") as f:
            return int(f.read().rsplit("nice", 1)[1])
    except (OSError, IndexError, ValueError):
        return None


def read_threads(pid: int | str = "self") -> list[dict[str, Any]]:
    """Affinity, policy and nice of every thread of ``pid``, as the kernel reports them (on the
    portable path, one entry for the whole process, policy None: see ``portable.read_knobs``)."""
    if is_portable():
        return portable.read_knobs(os.getpid() if pid == "self" else int(pid))
    threads = []
    base = f"/proc/{pid}/task"
    for tid in sorted(os.listdir(base), key=int):
        try:
            with open(f"{base}/{tid}/stat") as f:
                stat = f.read()
            with open(f"{base}/{tid}/status") as f:
                status = f.read()
        except FileNotFoundError:
            continue  # the thread exited between listing and reading
        rest = stat[stat.rindex(")") + 2 :].split()
        # Fields after the command name, 0-based: nice is field 19 of stat, policy field 41.
        nice, policy = int(rest[16]), int(rest[38])
        cpus = next(line.split(":", 1)[1].strip() for line in status.splitlines() if line.startswith("Cpus_allowed_list"))
        threads.append({"tid": int(tid), "nice": nice, "policy": POLICY_NAMES.get(policy, str(policy)), "cpus": cpus})
    return threads


def _parse_cpu_list(text: str) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def check_applied(c: dict[str, Any], threads: list[dict[str, Any]], autogroup: int | None = None,
           nice_and_policy: bool = True) -> list[str]:
    """What did not hold, thread by thread, against what ``read_threads`` found (and the
    autogroup's nice, where the kernel has autogroups). ``nice_and_policy=False`` leaves the
    threads' nice and policy to a caller that judges them otherwise (llama-server's ``--prio``)."""
    problems = []
    if autogroup is not None and autogroup != c.get("nice", 0):
        problems.append(f"the autogroup has nice {autogroup}, not {c.get('nice', 0)}")
    want_cpus = set(c["cpus"]) if c.get("cpus") is not None else None
    for t in threads:
        if want_cpus is not None and t["cpus"] is not None and _parse_cpu_list(t["cpus"]) != want_cpus:
            problems.append(f"thread {t['tid']} may run on CPUs {t['cpus']}, not {sorted(want_cpus)}")
        if not nice_and_policy:
            continue
        if t["nice"] != c.get("nice", 0):
            problems.append(f"thread {t['tid']} has nice {t['nice']}, not {c.get('nice', 0)}")
        if t["policy"] is not None and t["policy"] != c.get("sched_policy", "normal"):  # None: not readable here
            problems.append(f"thread {t['tid']} has policy {t['policy']}, not {c.get('sched_policy', 'normal')}")
    return problems


def shell_prefix(c: dict[str, Any]) -> str:
    """A shell prefix that applies the knobs to a program that does not set them itself.

    The environment goes through ``env``: after ``exec`` (as the llama-server script runs it) a
    shell takes a leading ``NAME=value`` for a program's name, and exits 127."""
    env = [f"{k}={shlex.quote(v)}" for k, v in environment(c).items()]
    parts = ["env", *env] if env else []
    if c.get("cpus"):  # inherited by every thread, as in the worker (llama.cpp's own mask misses some)
        parts += ["taskset", "-c", ",".join(map(str, c["cpus"]))]
    if c.get("sched_policy", "normal") != "normal":
        parts += ["chrt", f"--{c['sched_policy']}", "0"]
    if c.get("nice"):
        parts += ["nice", "-n", str(c["nice"])]
    return " ".join(parts)


def python_lines(c: dict[str, Any]) -> list[str]:
    """Python that applies the knobs, to run before ``llama_cpp`` is imported."""
    lines = ["# OpenMP reads these when llama_cpp loads; affinity, nice and policy are inherited by its threads."]
    lines += [f"os.environ[{k!r}] = {v!r}" for k, v in environment(c).items()]
    if c.get("cpus"):
        lines.append(f"os.sched_setaffinity(0, {set(c['cpus'])!r})")
    if c.get("nice"):
        lines.append(f"os.setpriority(os.PRIO_PROCESS, 0, {c['nice']})")
        lines += ["# Where the kernel groups by session (autogroup), the session's nice is what yields to the",
                  "# user's programs. Only a session of its own is ours to renice (under systemd, say).",
                  "if os.getsid(0) == os.getpid() and os.path.exists('/proc/self/autogroup'):",
                  "    with open('/proc/self/autogroup', 'w') as f:",
                  f"        f.write('{c['nice']}')"]
    if c.get("sched_policy", "normal") != "normal":
        lines.append(f"os.sched_setscheduler(0, os.{_OS_POLICY[c['sched_policy']]}, os.sched_param(0))")
    return lines


def systemd_lines(c: dict[str, Any]) -> list[str]:
    """The knobs as systemd [Service] directives."""
    lines = []
    if c.get("cpus"):
        lines.append("CPUAffinity=" + " ".join(map(str, c["cpus"])))
    if c.get("nice"):
        lines.append(f"Nice={c['nice']}")
        # A service is its own session; where the kernel groups by session (autogroup) the
        # session's nice is what yields to the user's programs, as in the trial (set_autogroup_nice).
        lines.append(f"ExecStartPost=-/bin/sh -c 'echo {c['nice']} > /proc/$$MAINPID/autogroup'")
    policy = c.get("sched_policy", "normal")
    lines.append(f"CPUSchedulingPolicy={'other' if policy == 'normal' else policy}")
    lines += [f"Environment={k}={v}" for k, v in environment(c).items()]
    return lines
