"""Kernel limits for a trial: a cgroup of its own, beneath the one sweep itself runs in.

A quota, a weight or a memory ceiling measured by the sweep is only a promise if the kernel keeps
it. Each trial's process tree (the worker, and llama-server on the server backend) runs in a cgroup
made for it, per controller, as a child of the cgroup the orchestrator is in (``/proc/self/cgroup``):
never at another place in a hierarchy, so that whatever limits a user or a service manager put on
sweep still hold over its trials. cgroup v1 (a hierarchy per controller) and v2 (one hierarchy)
are both handled; the files each limit becomes are in ``_files``.

``_own_dirs``, ``_files`` and ``make`` use nothing but the standard library: the python and
llama-server exports paste their source, so an exported service confines itself with the code
the trial was measured under.
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass
from typing import Any

from sweep.params import CGROUP_KNOBS
from sweep.procs import owner_gone, owner_tag


def _own_dirs(controllers, pid="self"):
    """Each controller's (version, directory of the cgroup this process (or ``pid``) is in), or a
    reason string where it cannot be had: ``{"cpu": (1, "/sys/fs/cgroup/cpu/x"), "memory": "..."}``."""
    v1, v2 = {}, None
    with open(f"/proc/{pid}/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, (fstype, _src, opts) = left.split(), right.split()[:3]
            root, mount = fields[3], fields[4]
            if fstype == "cgroup2":
                v2 = (root, mount)
            elif fstype == "cgroup":
                for name in opts.split(","):
                    v1[name] = (root, mount)
    paths = {}
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _hid, names, path = line.rstrip("\n").split(":", 2)
            for name in names.split(",") if names else [""]:
                paths[name] = path

    def under(mount_root, mount, path):
        rel = os.path.relpath(path, mount_root) if path.startswith(mount_root) else None
        return None if rel is None or rel.startswith("..") else os.path.normpath(os.path.join(mount, rel))

    if os.path.basename(paths.get("", "")) == f"sweep-self-{os.getpid()}":
        paths[""] = os.path.dirname(paths[""])  # the leaf _enable moved this process into (v2)

    out = {}
    for name in controllers:
        if name in v1 and name in paths:
            d = under(*v1[name], paths[name])
            out[name] = (1, d) if d else f"the {name} cgroup this process is in is outside its mount"
        elif v2 and "" in paths:
            d = under(*v2, paths[""])
            try:
                with open(os.path.join(d or "", "cgroup.controllers")) as f:
                    offered = f.read().split()
            except OSError:
                offered = []
            out[name] = (2, d) if d and name in offered else \
                f"the {name} controller is not offered to this process's cgroup ({paths['']})"
        else:
            out[name] = f"no {name} controller is mounted"
    return out


def _files(version, limits, ncpu):
    """The files to write, per controller, in order: ``{"cpu": [("cpu.max", "50000 100000")], ...}``.
    Every file of a controller in use is written, at the kernel's default where its knob is unset,
    so a cgroup kept from an earlier start holds no stale limit. A quota is a share of the whole
    machine (``ncpu`` CPUs); a weight is systemd's CPUWeight= (100 is a normal share; cgroup v1 has
    shares, 1024 for 100). cgroup v1 refuses new shares while cpu.idle is 1: idle goes first to 0."""
    period_us = int(round(float(limits.get("cpu_period_ms") or 100) * 1000))
    pct, weight = limits.get("cpu_quota_pct"), limits.get("cpu_weight")
    quota_us = max(1000, int(round(pct / 100 * ncpu * period_us))) if pct is not None else None
    idle = weight == "idle"
    normal = 100 if weight is None or idle else weight
    # Without a quota the period means nothing: it is left as it is.
    if version == 2:
        cpu = [("cpu.idle", "0"), ("cpu.weight", str(normal)),
               ("cpu.max", f"{quota_us} {period_us}" if quota_us else "max")]
    else:
        cpu = [("cpu.idle", "0"), ("cpu.shares", str(max(2, int(round(normal * 1024 / 100)))))]
        cpu += [("cpu.cfs_period_us", str(period_us)), ("cpu.cfs_quota_us", str(quota_us))] if quota_us else \
            [("cpu.cfs_quota_us", "-1")]
    if idle:
        cpu.append(("cpu.idle", "1"))
    memory = []
    for knob, v2_file, v1_file in (("memory_max_gb", "memory.max", "memory.limit_in_bytes"),
                                   ("memory_high_gb", "memory.high", "memory.soft_limit_in_bytes")):
        gb = limits.get(knob)
        size = str(int(gb * 2**30) // 4096 * 4096) if gb is not None else ("max" if version == 2 else "-1")
        memory.append((v2_file if version == 2 else v1_file, size))
    out = {}
    if pct is not None or weight is not None:
        out["cpu"] = cpu
    if limits.get("memory_max_gb") is not None or limits.get("memory_high_gb") is not None:
        out["memory"] = memory
    return out


def make(limits, name, ncpu=None, exist_ok=False):
    """Make the cgroup ``name`` beneath this process's own, per controller the limits need, and
    write the limits. Returns ``{controller: directory}``; raises OSError naming what failed (the
    cgroups made so far are removed). ``exist_ok``: a service's fixed cgroup, kept between starts."""
    ncpu = ncpu or os.cpu_count() or 1
    wanted = _files(2, limits, ncpu)
    sites = _own_dirs(sorted(wanted))
    for controller, site in sites.items():
        if isinstance(site, str):
            raise OSError(errno.ENOENT, site)
    made: dict[str, str] = {}
    try:
        for controller in sorted(wanted):
            version, parent = sites[controller]
            d = os.path.join(parent, name)
            if version == 2:
                if any(m == d for m in made.values()):
                    made[controller] = d
                    continue
                _enable(parent, sorted(wanted))
            try:
                os.mkdir(d)
            except FileExistsError:
                if not exist_ok:
                    raise
            made[controller] = d
        for controller, d in made.items():
            for fname, value in _files(sites[controller][0], limits, ncpu)[controller]:
                path = os.path.join(d, fname)
                if fname == "cpu.idle" and value == "0" and not os.path.exists(path):
                    continue  # a kernel before 5.15 has no cpu.idle: nothing to reset
                with open(path, "w") as f:
                    f.write(value)
    except OSError:
        for d in sorted(set(made.values())) if not exist_ok else ():
            try:
                os.rmdir(d)
            except OSError:
                pass
        raise
    return made


def _enable(parent, controllers):
    """cgroup v2: hand the controllers to the parent's children. A cgroup with processes of its own
    cannot (the kernel's "no internal processes" rule): where the parent holds this process alone,
    as under ``systemd-run --scope``, the process moves into a leaf of its own first."""
    path = os.path.join(parent, "cgroup.subtree_control")
    with open(path) as f:
        have = f.read().split()
    need = [c for c in controllers if c not in have]
    if not need:
        return
    try:
        with open(path, "w") as f:
            f.write(" ".join("+" + c for c in need))
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            raise
        with open(os.path.join(parent, "cgroup.procs")) as f:
            procs = f.read().split()
        if procs != [str(os.getpid())]:
            raise OSError(errno.EBUSY, f"{parent} holds other processes too, so it cannot hand its "
                          "controllers to a child (start this under systemd-run --user --scope -p Delegate=yes)")
        leaf = os.path.join(parent, f"sweep-self-{os.getpid()}")
        os.makedirs(leaf, exist_ok=True)
        with open(os.path.join(leaf, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
        with open(path, "w") as f:
            f.write(" ".join("+" + c for c in need))


# ---- the exports: the same limits, made by the same code


def _standalone() -> str:
    import inspect

    return "\n\n".join(inspect.getsource(f) for f in (_own_dirs, _files, _enable, make))


def export_limits(config: dict[str, Any]) -> dict[str, Any]:
    """The limits an export applies: the trial's, with the period spelled out."""
    limits = limits_of(config)
    if "cpu_quota_pct" in limits:
        limits.setdefault("cpu_period_ms", 100)
    return limits


def python_lines(config: dict[str, Any]) -> list[str]:
    """Python that confines the running process as the trial was, before the model loads."""
    limits = export_limits(config)
    if not limits:
        return []
    return ["# Kernel limits, as the trial ran under them: a cgroup beneath this process's own, made by",
            "# sweep's own code (sweep/trial/cgroups.py). Needs root, or a delegated cgroup.",
            "import errno  # noqa: E402", "", _standalone(), "",
            f"for _d in sorted(set(make({limits!r}, 'sweep-llm', exist_ok=True).values())):",
            "    with open(os.path.join(_d, 'cgroup.procs'), 'w') as _f:",
            "        _f.write(str(os.getpid()))", ""]


def shell_lines(config: dict[str, Any]) -> list[str]:
    """Shell lines that move the script (and so the program it becomes) into the trial's limits."""
    limits = export_limits(config)
    if not limits:
        return []
    return ["# Kernel limits, as the trial ran under them: a cgroup beneath this shell's own, made by",
            "# sweep's own code (sweep/trial/cgroups.py); it needs root, or a delegated cgroup (systemd-run",
            "# --user --scope -p Delegate=yes). The shell moves in, then becomes llama-server.",
            "python3 - \"$$\" <<'SWEEP_CGROUP' || exit 2",
            "import errno, os, sys", "", _standalone(), "",
            "try:",
            f"    dirs = make({limits!r}, 'sweep-llm', exist_ok=True)",
            "    for d in sorted(set(dirs.values())):",
            "        with open(os.path.join(d, 'cgroup.procs'), 'w') as f:",
            "            f.write(sys.argv[1])",
            "except OSError as exc:",
            "    sys.exit(f'cannot apply the kernel limits: {exc}')",
            "SWEEP_CGROUP"]


def systemd_lines(config: dict[str, Any], ncpu: int | None = None) -> list[str]:
    """The limits as systemd directives. CPUQuota= is a share of one CPU: the trial's share of the
    machine times its CPUs."""
    limits = export_limits(config)
    ncpu = ncpu or os.cpu_count() or 1
    lines = []
    if limits.get("cpu_quota_pct") is not None:
        lines += [f"# cpu_quota_pct: {limits['cpu_quota_pct']:g}% of this {ncpu}-CPU machine",
                  f"CPUQuota={limits['cpu_quota_pct'] * ncpu:g}%",
                  f"CPUQuotaPeriodSec={limits['cpu_period_ms']:g}ms"]
    if limits.get("cpu_weight") is not None:
        lines.append(f"CPUWeight={limits['cpu_weight']}")
    sizes = dict(_files(2, limits, ncpu).get("memory", []))  # the bytes the trial's cgroup was given
    for file, directive in (("memory.high", "MemoryHigh"), ("memory.max", "MemoryMax")):
        if sizes.get(file, "max") != "max":
            lines.append(f"{directive}={sizes[file]}")
    return lines


# ---- the trial's side: limits from a config, a probe for the space, read-back, figures, removal


# A cgroup of its own at a normal weight: what a systemd service runs in when its unit sets no
# CPU directive, and what a user's session is in (user.slice): the topology a trial is measured in
# (trial.cgroup: own), so that its politeness is the one its service keeps.
NORMAL_WEIGHT: dict[str, Any] = {"cpu_weight": 100}


def limits_of(config: dict[str, Any]) -> dict[str, Any]:
    """The cgroup knobs a configuration sets (empty: the trial runs without a cgroup of its own)."""
    set_ = {k: config.get(k) for k in CGROUP_KNOBS if config.get(k) is not None}
    if set_.get("cpu_quota_pct") is None:
        set_.pop("cpu_period_ms", None)  # a period without a quota limits nothing
    return set_


def controllers_for(limits: dict[str, Any]) -> list[str]:
    return sorted(_files(2, limits, 1))


def problem(controllers: list[str]) -> str | None:
    """Why a trial's cgroup could not be made here for these controllers, or None. It tries: a
    cgroup is made beneath this process's own and removed again."""
    try:
        sites = _own_dirs(controllers)
    except OSError as exc:
        return f"cannot read this process's cgroups ({exc})"
    for controller, site in sites.items():
        if isinstance(site, str):
            return site
        version, parent = site
        probe = os.path.join(parent, f"sweep-probe-{os.getpid()}")
        try:
            if version == 2:
                _enable(parent, [controller])
            os.mkdir(probe)
            os.rmdir(probe)
        except OSError as exc:
            return f"cannot make a {controller} cgroup beneath {parent} ({exc.strerror or exc})"
    return None


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


@dataclass
class TrialCgroup:
    """The cgroup of one trial: made before the worker starts, read back, counted, removed."""

    limits: dict[str, Any]
    dirs: dict[str, str]
    version: dict[str, int]
    ncpu: int

    @classmethod
    def create(cls, limits: dict[str, Any], ncpu: int | None = None, kind: str = "trial") -> TrialCgroup:
        """A cgroup beneath this process's own: the trial's (``kind`` trial), or the foreground's (``fg``)."""
        ncpu = ncpu or os.cpu_count() or 1
        sweep_stale()
        name = f"sweep-{kind}-{owner_tag()}-{time.monotonic_ns()}"  # whose: for another's sweep_stale
        dirs = make(limits, name, ncpu)
        sites = _own_dirs(sorted(dirs))
        return cls(limits, dirs, {c: sites[c][0] for c in dirs}, ncpu)

    @classmethod
    def of_process(cls, config: dict[str, Any], pid: int, ncpu: int | None = None) -> TrialCgroup:
        """The cgroups ``pid`` is in, as the limits of ``config`` would be held (to read them back)."""
        limits = export_limits(config)
        sites = _own_dirs(controllers_for(limits), pid)
        dirs = {c: s[1] for c, s in sites.items() if not isinstance(s, str)}
        return cls(limits, dirs, {c: sites[c][0] for c in dirs}, ncpu or os.cpu_count() or 1)

    def procs_files(self) -> list[str]:
        return [os.path.join(d, "cgroup.procs") for d in sorted(set(self.dirs.values()))]

    def join(self, argv: list[str]) -> list[str]:
        """``argv`` started inside the cgroup: a shell writes its own pid into each cgroup, then
        becomes the program (same pid), so even interpreter start-up is confined."""
        script = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'
        return ["/bin/sh", "-c", script, "sweep-cgroup", *self.procs_files(), "--", *argv]

    def check_applied(self, *pids: int | None) -> list[str]:
        """What did not hold: each limit read back from its file, and each of ``pids`` inside the cgroup."""
        problems = []
        for controller, d in self.dirs.items():
            final = dict(_files(self.version[controller], self.limits, self.ncpu)[controller])  # the last write
            if final.get("cpu.idle") == "1":  # an idle group's weight is the kernel's own (v1 shows 3)
                final.pop("cpu.shares", None)
                final.pop("cpu.weight", None)
            for fname, want in final.items():
                want = _unlimited(fname, want)
                try:
                    got = _read(os.path.join(d, fname))
                except FileNotFoundError:
                    if fname == "cpu.idle" and want == "0":
                        continue
                    problems.append(f"{fname} is missing")
                    continue
                except OSError as exc:
                    problems.append(f"{fname} cannot be read back ({exc.strerror})")
                    continue
                if got.split()[:len(want.split())] != want.split():  # "max" alone leaves cpu.max's period
                    problems.append(f"{fname} reads {got!r}, not {want!r}")
        for pid in pids:
            try:
                own = _read(f"/proc/{pid}/cgroup")
            except (OSError, TypeError):
                continue  # gone (its outcome says why), or never started
            for controller, d in self.dirs.items():
                tail = "/" + os.path.basename(d)
                if not any(line.endswith(tail) for line in own.splitlines()):
                    problems.append(f"process {pid} of the trial is not in its {controller} cgroup")
        return problems

    def figures(self) -> dict[str, float]:
        """What the kernel counted: throttling (``cpu.stat``) and memory events, over the trial's life."""
        figs: dict[str, float] = {}
        cpu = self.dirs.get("cpu")
        if cpu:
            stat = _kv(os.path.join(cpu, "cpu.stat"))
            periods, throttled = stat.get("nr_periods", 0), stat.get("nr_throttled", 0)
            figs["cg_periods"] = float(periods)
            figs["cg_throttled_share"] = throttled / periods if periods else 0.0
            figs["cg_throttled_s"] = stat["throttled_usec"] / 1e6 if "throttled_usec" in stat else \
                stat.get("throttled_time", 0) / 1e9
        memory = self.dirs.get("memory")
        if memory:
            if self.version["memory"] == 2:
                events = _kv(os.path.join(memory, "memory.events"))
                figs["cg_memory_high_events"] = float(events.get("high", 0))
                figs["cg_memory_max_events"] = float(events.get("max", 0))
                figs["cg_oom_kills"] = float(events.get("oom_kill", 0))
                peak = os.path.join(memory, "memory.peak")
            else:
                figs["cg_memory_max_events"] = float(_read(os.path.join(memory, "memory.failcnt")))
                figs["cg_oom_kills"] = float(_kv(os.path.join(memory, "memory.oom_control")).get("oom_kill", 0))
                peak = os.path.join(memory, "memory.max_usage_in_bytes")
            try:
                figs["cg_memory_peak_gb"] = int(_read(peak)) / 2**30
            except (OSError, ValueError):
                pass
        return figs

    def remove(self) -> None:
        """Remove the cgroup once its processes are gone (a straggler of the trial's is killed)."""
        for d in sorted(set(self.dirs.values())):
            _remove(d)


def _unlimited(fname: str, value: str) -> str:
    """What the kernel reads back for "no limit": v1 shows -1 as the largest page-aligned size."""
    if value == "-1" and fname.startswith("memory."):
        return str(2**63 - 4096)
    return value


def _kv(path: str) -> dict[str, int]:
    out = {}
    try:
        for line in _read(path).splitlines():
            key, _, value = line.partition(" ")
            if value.strip().lstrip("-").isdigit():
                out[key] = int(value)
    except OSError:
        pass
    return out


def _remove(d: str, timeout_s: float = 3.0) -> None:
    import signal

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            os.rmdir(d)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                return  # left for the next run's sweep_stale
        try:
            for pid in _read(os.path.join(d, "cgroup.procs")).split():
                os.kill(int(pid), signal.SIGKILL)  # only the trial's processes are in its cgroup
        except (OSError, ValueError):
            pass
        time.sleep(0.05)


def sweep_stale(controllers: tuple[str, ...] = ("cpu", "memory")) -> int:
    """Remove the empty trial cgroups of orchestrators that are gone (killed before they could),
    judged by ``procs.owner_gone``: never one of another PID namespace (a container beside this one)."""
    removed = 0
    try:
        sites = _own_dirs(list(controllers))
    except OSError:
        return 0
    for site in sites.values():
        if isinstance(site, str):
            continue
        parent = site[1]
        try:
            names = os.listdir(parent)
        except OSError:
            continue
        for entry in names:
            parts = entry.split("-")
            if not (entry.startswith(("sweep-trial-", "sweep-fg-")) and len(parts) == 4):
                continue
            path = os.path.join(parent, entry)
            try:
                if owner_gone(parts[2], os.stat(path).st_mtime):
                    os.rmdir(path)
                    removed += 1
            except OSError:
                pass
    return removed
