"""Kernel limits as knobs: a real cgroup per trial beneath the test's own, read back, counted, removed.

These run on the machine's real cgroup hierarchy (v1 here: the cpu and memory controllers under
/sys/fs/cgroup). The refusals run sweep in a mount namespace of its own in which the hierarchy is
read-only or not mounted at all (``unshare -m``), as on a host where cgroups are not delegated.
"""

from __future__ import annotations

import builtins
import errno
import io
import os
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import pytest
from test_runner import config

from sweep.correctness.tasks import load_tasks, stratified_subset
from sweep.procs import owner_tag
from sweep.records import TrialSettings
from sweep.trial import cgroups
from sweep.trial.runner import run_trial

from conftest import stray_processes, sweep_cli, write_space
from test_hostlock import _again, _in_another_pid_namespace, needs_pid_control

TASKS = stratified_subset(load_tasks(), 4)
SETTINGS = TrialSettings(prompts=4, idle_seconds=0.5, baseline_seconds=0.2, timeout_seconds=120, noise_retries=0,
                         probe="off")

if cgroups.problem(["cpu", "memory"]):
    pytest.skip(f"no cgroup can be made here: {cgroups.problem(['cpu', 'memory'])}", allow_module_level=True)


def _trial_cgroups() -> list[str]:
    """The trial cgroups of this process still present beneath its own."""
    found = []
    for site in cgroups._own_dirs(["cpu", "memory"]).values():
        found += [name for name in os.listdir(site[1]) if name.startswith(f"sweep-trial-{owner_tag()}-")]
    return found


@pytest.mark.slow
def test_a_quota_caps_the_trial_and_the_kernel_counts_the_throttling(smollm2_path: Path) -> None:
    # A quarter of the machine over 100 ms periods, for a worker that would take two whole CPUs.
    outcome = run_trial(config(smollm2_path, n_threads=2, n_threads_batch=2, cpu_quota_pct=25.0, cpu_period_ms=100),
                        SETTINGS, TASKS)
    assert outcome.ok, (outcome.reason, outcome.detail, outcome.stderr_tail)
    f = outcome.figures
    assert f["cg_periods"] > 10 and f["cg_throttled_share"] > 0.2 and f["cg_throttled_s"] > 0
    # A quota caps the average over each period: the mean over the answers cannot exceed it by more
    # than the monitor's own rounding on a loaded machine.
    assert f["cpu_active_mean_share_pct"] <= 25 + 5
    assert _trial_cgroups() == [] and not stray_processes()


@pytest.mark.slow
def test_the_cgroup_holds_the_worker_and_a_limit_that_did_not_hold_is_refused(smollm2_path: Path) -> None:
    limits = {"cpu_quota_pct": 40.0, "cpu_period_ms": 10, "cpu_weight": "idle", "memory_high_gb": 1.5,
              "memory_max_gb": 2.0}
    cg = cgroups.TrialCgroup.create(limits)
    try:
        assert cg.check_applied() == []
        proc = subprocess.Popen(cg.join(["sleep", "30"]))
        try:
            deadline = time.monotonic() + 10
            while cg.check_applied(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.01)  # the shell moves itself in, then becomes sleep
            assert cg.check_applied(proc.pid) == []
            quota_file = "cpu.max" if cg.version["cpu"] == 2 else "cpu.cfs_quota_us"
            with open(os.path.join(cg.dirs["cpu"], quota_file), "w") as f:
                f.write("-1" if cg.version["cpu"] == 1 else "max 10000")
            assert any(quota_file in p for p in cg.check_applied(proc.pid))
        finally:
            proc.kill()
            proc.wait()
    finally:
        cg.remove()
    assert _trial_cgroups() == []


@pytest.mark.slow
def test_the_oom_killer_ends_a_trial_over_its_ceiling_by_the_kernels_count(smollm2_path: Path) -> None:
    # 40 MB: less than the interpreter, llama_cpp and the model's buffers need.
    outcome = run_trial(config(smollm2_path, memory_max_gb=0.04), SETTINGS, TASKS)
    assert (outcome.ok, outcome.reason) == (False, "memory_budget")
    assert "OOM killer" in outcome.detail and outcome.figures["cg_oom_kills"] >= 1
    assert outcome.figures["memory_limit_sampled"] == 0.0
    assert _trial_cgroups() == [] and not stray_processes()


def test_stale_trial_cgroups_of_a_dead_orchestrator_are_swept() -> None:
    dead = 2**22 + 17  # above the kernel's default pid_max: no such process
    assert not os.path.exists(f"/proc/{dead}")
    made = [os.path.join(site[1], f"sweep-trial-{dead}-1") for site in cgroups._own_dirs(["cpu", "memory"]).values()]
    for d in made:
        os.mkdir(d)
    assert cgroups.sweep_stale() == len(made)
    assert not any(os.path.exists(d) for d in made)


SPACE = """
version: 1
name: limited
models: {smollm2-135m: [Q4_1]}
params:
  cpu_quota_pct: [null, 50]
trial: {prompts: 2, idle_seconds: 0.5}
"""


def _cpu_mount() -> str:
    for line in open("/proc/self/mountinfo"):
        left, _, right = line.partition(" - ")
        fstype, _src, opts = right.split()[:3]
        if fstype == "cgroup" and "cpu" in opts.split(","):
            return left.split()[4]
    pytest.skip("the cpu controller is not on a cgroup v1 hierarchy here")


def _sweep_without_cgroups(how: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI in a mount namespace of its own, in which the cpu hierarchy was made read-only or
    taken away (``how``); the machine's own mounts are untouched."""
    shell = f"{how.format(cpu=_cpu_mount())} && exec \"$0\" \"$@\""
    return subprocess.run(["unshare", "-m", "sh", "-c", shell, sys.executable, "-m", "sweep", *args],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("how, says", [
    ("mount -o remount,bind,ro {cpu}", "Read-only file system"),
    # v1's cpu hierarchy gone, cgroup2 is all there is, and it offers no cpu controller here.
    ("umount {cpu}", "(no cpu controller is mounted|the cpu controller is not offered)"),
])
def test_a_space_with_limits_is_refused_where_no_cgroup_can_be_made(how: str, says: str, tmp_path: Path) -> None:
    space = write_space(tmp_path / "limited.yaml", SPACE)
    proc = _sweep_without_cgroups(how, "run", str(space), "--study", "limited", "--trials", "1")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "params.cpu_quota_pct" in lines[0] and re.search(says, lines[0]) and "Delegate=yes" in lines[0]
    assert not (tmp_path / "studies.db").exists()  # the study is left untouched: none was made


@pytest.mark.slow
def test_a_space_without_limits_runs_where_none_can_be_made(smollm2_path: Path, tmp_path: Path) -> None:
    space = write_space(tmp_path / "plain.yaml", SPACE.replace("cpu_quota_pct: [null, 50]", "nice: [0, 19]"))
    proc = _sweep_without_cgroups("umount {cpu}", "run", str(space), "--study", "plain", "--trials", "1")
    assert proc.returncode == 0, proc.stderr


def test_figures_from_the_cgroup_need_a_limit(tmp_path: Path) -> None:
    space = write_space(tmp_path / "plain.yaml", SPACE.replace("cpu_quota_pct: [null, 50]", "nice: [0, 19]") +
                        "constraints: {cg_throttled_share: {max: 0.5}}\n")
    proc = sweep_cli("run", str(space), "--study", "x", "--trials", "1")
    assert proc.returncode == 2 and "cg_throttled_share is counted in a trial's own cgroup" in proc.stderr


@pytest.mark.slow
def test_llama_server_runs_inside_the_trials_cgroup(server_tools: Path, smollm2_path: Path) -> None:
    # The server backend: the quota holds over the worker and the llama-server it starts.
    events: list[dict] = []
    outcome = run_trial(config(smollm2_path, n_threads=2, n_threads_batch=2, backend="server", cpu_quota_pct=25.0,
                               memory_max_gb=2.0), SETTINGS, TASKS, on_event=events.append)
    assert outcome.ok, (outcome.reason, outcome.detail, outcome.stderr_tail)
    assert [e for e in events if e["type"] == "server"]  # read back with the server's pid (TrialCgroup.verify)
    f = outcome.figures
    assert f["cg_throttled_share"] > 0.2 and f["cpu_active_mean_share_pct"] <= 25 + 5
    assert f["cg_oom_kills"] == 0 and f["cg_memory_peak_gb"] > 0.05 and f["memory_limit_sampled"] == 0.0
    assert _trial_cgroups() == []


@pytest.mark.slow
def test_a_trial_runs_in_a_cgroup_of_its_own_and_the_foreground_in_a_sibling(smollm2_path: Path) -> None:
    seen: dict[str, str] = {}

    def where(event: dict) -> None:  # read while the worker is loaded, and the foreground runs
        if event["type"] == "knobs" and "fg" not in seen:
            for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
                try:
                    cmdline = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
                    own = open(f"/proc/{pid}/cgroup").read()
                except OSError:
                    continue
                if b"sweep.measure.foreground" in cmdline:
                    seen["fg"] = own
                elif b"sweep.trial.worker" in cmdline:
                    seen["worker"] = own

    settings = TrialSettings(prompts=2, idle_seconds=0.3, baseline_seconds=0.2, noise_retries=0, probe="cpu",
                             early_abort=False, contended_timeout_seconds=20)
    outcome = run_trial(config(smollm2_path), settings, TASKS[:2], on_event=where)
    assert outcome.ok, (outcome.reason, outcome.detail)
    assert outcome.figures["cgroup_own"] == 1.0 and outcome.series["cgroup"] == {"topology": "own"}
    assert f"/sweep-trial-{owner_tag()}-" in _cpu_path(seen["worker"])
    assert f"/sweep-fg-{owner_tag()}-" in _cpu_path(seen["fg"])
    shared = run_trial(config(smollm2_path), TrialSettings(prompts=2, idle_seconds=0.3, baseline_seconds=0.2,
                                                            noise_retries=0, probe="off", cgroup="shared"), TASKS[:2])
    assert shared.ok and shared.figures["cgroup_own"] == 0.0 and shared.series["cgroup"] == {"topology": "shared"}
    assert _trial_cgroups() == [] and not stray_processes()


def _cpu_path(proc_cgroup: str) -> str:
    """The cpu controller's cgroup in a /proc/PID/cgroup text (v1's cpu hierarchy, else v2's)."""
    paths = {}
    for line in proc_cgroup.splitlines():
        _, names, path = line.split(":", 2)
        paths.update({name: path for name in names.split(",")})
    return paths.get("cpu", paths.get("", ""))


def _slowdown_beside(drive, seconds: float = 6.0) -> float:
    """The CPU-bound foreground's slowdown (median unit while ``drive`` keeps the service busy, over
    the median unit before), the foreground in a cgroup of its own at normal weight, as a user's session."""
    import statistics
    import threading

    from sweep.measure.foreground import CpuLoad

    fg_cg = cgroups.TrialCgroup.create(dict(cgroups.NORMAL_WEIGHT), kind="fg")
    load = CpuLoad(os.cpu_count() or 1, 16, fg_cg.join)
    try:
        time.sleep(1.0)
        t0 = time.monotonic()
        time.sleep(3.0)
        t1 = time.monotonic()
        stop = threading.Event()
        busy = threading.Thread(target=drive, args=(stop,), daemon=True)
        busy.start()
        time.sleep(1.0)
        t2 = time.monotonic()
        time.sleep(seconds)
        t3 = time.monotonic()
        stop.set()
        busy.join(timeout=60)
    finally:
        samples = load.stop()
        fg_cg.remove()
    before = [dt for t, dt, _, _ in samples if t >= t0 and t + dt <= t1]
    during = [dt for t, dt, _, _ in samples if t >= t2 and t + dt <= t3]
    assert len(before) >= 3 and len(during) >= 3, (len(before), len(during))
    return statistics.median(during) / statistics.median(before)


@pytest.mark.slow
def test_a_polite_trial_measured_in_its_own_cgroup_slows_the_user_as_its_unit_does(
        smollm2_path: Path, server_tools: Path, tmp_path: Path) -> None:
    """sched_policy idle and nice 19 hold beside the user in one cgroup; as a service, in a cgroup of
    its own at normal weight, they do not. The trial (trial.cgroup: own, the default) must report what
    the exported unit then does to a CPU-bound user; the shared measurement reads lower."""
    import json
    import tempfile
    import urllib.request

    from sweep.results.export import API_KEY_SOURCE, install, llama_server_command, render

    import unitrun
    from conftest import api_key, serving

    if os.geteuid() != 0:
        pytest.skip("the unit stand-in runs the service as another user: run the tests as root")
    polite = config(smollm2_path, n_threads=2, n_threads_batch=2, backend="server", sched_policy="idle", nice=19,
                    max_tokens=32, output="grammar")
    settings = TrialSettings(prompts=8, idle_seconds=0.5, baseline_seconds=0.5, noise_retries=2, probe="cpu",
                             early_abort=False, contended_timeout_seconds=30, busy_trials="repeat")
    tasks = stratified_subset(load_tasks(), 8)
    own = run_trial(polite, settings, tasks)
    shared = run_trial(polite, replace(settings, cgroup="shared"), tasks)
    assert own.ok and shared.ok, (own.reason, own.detail, shared.reason, shared.detail)
    assert own.figures["cgroup_own"] == 1.0 and shared.figures["cgroup_own"] == 0.0

    opt = Path(tempfile.mkdtemp(prefix="sweep-opt-"))
    opt.chmod(0o755)
    args = llama_server_command(polite, str(server_tools))
    record = {"config": polite.to_dict(), "provenance": {"study": "s", "trial": 0}, "meets_all_budgets": True,
              "budgets": {}, "metrics": own.figures, "llama_server_args": args, "llama_server": args}
    unit = tmp_path / "polite.service"
    unit.write_text(render(install(record, opt), "systemd"))
    key = api_key(tmp_path / "api-key")
    body = json.dumps({"messages": [{"role": "user", "content": "Classify: whoami /all"}], "max_tokens": 32,
                       "temperature": 0, "cache_prompt": False}).encode()

    with serving(lambda port: unitrun.start(unit, "--port", str(port), credentials={API_KEY_SOURCE: key},
                                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)) as (_, port):
        def drive(stop) -> None:  # requests back to back, as the trial's contended pass sends them
            headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key.read_text().strip()}"}
            while not stop.is_set():
                req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body, headers=headers)
                urllib.request.urlopen(req, timeout=120).read()

        unit_slowdown = _slowdown_beside(drive)
    trial, beside = own.figures["fg_cpu_slowdown"], shared.figures["fg_cpu_slowdown"]
    # The own-cgroup trial reads what the unit does to the user, within what a loaded 2-core machine
    # allows; the trial measured beside the user, in one cgroup, reads clearly less.
    assert abs(trial - unit_slowdown) <= 0.35, (trial, unit_slowdown, beside)
    assert unit_slowdown - beside >= 0.25, (trial, unit_slowdown, beside)


# ---- issue 34 §9 d: on cgroup v2 a trial's cgroups are made before any process of the trial starts


class _Written(io.StringIO):
    """A file of the hierarchy, taken (or refused) whole when it is closed, as the kernel takes a write."""

    def __init__(self, take: Callable[[str], None]) -> None:
        super().__init__()
        self._take = take

    def close(self) -> None:
        if not self.closed:
            text = self.getvalue()
            super().close()
            self._take(text)


class _CgroupV2:
    """A cgroup v2 hierarchy in a temp directory, as the kernel keeps it for the ``open`` of
    sweep.trial.cgroups (with the /proc/self/mountinfo and /proc/self/cgroup that point at it): a new
    cgroup is offered what its parent hands down; a pid written into cgroup.procs moves there; and a
    cgroup other than the root cannot hand controllers down while it holds a process, nor take a
    process once it does (the "no internal processes" rule: EBUSY)."""

    def __init__(self, tmp: Path) -> None:
        self.root = tmp / "sys" / "fs" / "cgroup"
        self.scope = self.root / "user.slice" / "sweep.scope"  # the delegated cgroup sweep was started in
        self.scope.mkdir(parents=True)
        (self.root / "cgroup.controllers").write_text("cpu io memory pids\n")
        (self.root / "cgroup.subtree_control").write_text("cpu memory\n")
        (self.root / "user.slice" / "cgroup.subtree_control").write_text("cpu memory\n")
        self.where: dict[int, Path] = {os.getpid(): self.scope}

    def procs(self, d: Path) -> list[int]:
        return [pid for pid, at in self.where.items() if at == d]

    def handed_down(self, d: Path) -> list[str]:
        f = d / "cgroup.subtree_control"
        return f.read_text().split() if f.exists() else []

    def move(self, pid: int, d: Path) -> None:
        if d != self.root and self.handed_down(d):
            raise OSError(errno.EBUSY, f"{d} hands controllers down: it cannot hold a process")
        self.where[pid] = d

    def hand_down(self, d: Path, text: str) -> None:
        if d != self.root and self.procs(d):
            raise OSError(errno.EBUSY, f"{d} holds processes {self.procs(d)}: it cannot hand controllers down")
        wanted = set(self.handed_down(d)) | {c.lstrip("+") for c in text.split()}
        (d / "cgroup.subtree_control").write_text(" ".join(sorted(wanted)) + "\n")

    def open(self, path: str, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        me = (f"/proc/self/", f"/proc/{os.getpid()}/")
        if path in [m + "mountinfo" for m in me]:
            return io.StringIO(f"35 24 0:30 / {self.root} rw,nosuid,nodev,relatime shared:9 - cgroup2 cgroup2 rw\n")
        if path in [m + "cgroup" for m in me]:
            return io.StringIO(f"0::/{self.where[os.getpid()].relative_to(self.root)}\n")
        p = Path(path)
        if self.root in p.parents and p.name == "cgroup.procs":
            return _Written(lambda text: self.move(int(text), p.parent)) if "w" in mode else \
                io.StringIO("".join(f"{pid}\n" for pid in self.procs(p.parent)))
        if self.root in p.parents and p.name == "cgroup.subtree_control":
            return _Written(lambda text: self.hand_down(p.parent, text)) if "w" in mode else \
                io.StringIO(" ".join(self.handed_down(p.parent)) + "\n")
        if self.root in p.parents and p.name == "cgroup.controllers" and not p.exists():
            return io.StringIO(" ".join(self.handed_down(p.parent.parent)) + "\n")
        return builtins.open(path, mode, *args, **kwargs)


FG_PID = 2**22 + 23  # the foreground stand-in's pid, as the fake hierarchy knows it


@pytest.mark.parametrize("mode, limits", [
    ("shared", {"cpu_quota_pct": 50.0}),  # sweep verify / sweep trial of a limited config, trial.cgroup: shared
    ("shared", {"memory_max_gb": 1.0, "cpu_weight": 50}),
    ("own", {"memory_max_gb": 1.0}),  # the foreground's cgroup hands cpu down, the model's memory too
    ("own", {}),
])
def test_on_cgroup_v2_a_trials_cgroups_are_made_before_its_foreground_starts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str, limits: dict[str, Any]) -> None:
    """A foreground started beside the orchestrator, in its cgroup, forbids that cgroup to hand
    controllers down (EBUSY), so the trial's cgroup must be made, and this process moved into a leaf
    of its own, first. ``sweep run`` escaped only because its load-time check moved it already."""
    from sweep.trial import runner

    tree = _CgroupV2(tmp_path)
    started: list[Path] = []

    class Foreground:
        def __init__(self, settings: TrialSettings, wrap: Callable[[list[str]], list[str]] | None = None) -> None:
            tree.where[FG_PID] = tree.where[os.getpid()]  # a child starts in its parent's cgroup
            argv = wrap(["foreground"]) if wrap else []
            for procs in argv[argv.index("sweep-cgroup") + 1:argv.index("--")] if wrap else []:
                with tree.open(procs, "w") as f:  # as the shell of TrialCgroup.join moves itself
                    f.write(str(FG_PID))
            started.append(tree.where[FG_PID])
            self.samples: list[Any] = []

        def stop(self) -> list[Any]:
            tree.where.pop(FG_PID, None)
            return []

    class Spawn(Exception):
        """The worker would start now."""

    def spawn(*_: Any) -> int:
        raise Spawn

    monkeypatch.setattr(cgroups, "open", tree.open, raising=False)
    monkeypatch.setattr(runner, "Probe", Foreground)
    monkeypatch.setattr(runner, "sweep_dead", spawn)  # called just before the worker's spawn
    settings = TrialSettings(prompts=1, baseline_seconds=0, noise_retries=0, probe="interactive", cgroup=mode)
    watch = runner._Watch(config(tmp_path / "model.gguf", **limits), settings, [], None, None)
    with pytest.raises(Spawn):
        watch.observe(False)
    # before (shared): "its cgroup could not be made (.../sweep.scope holds other processes too, ...)"
    assert watch.cgroup_problems == [] and watch.topology == ("own", "")
    assert watch.cgroup is not None and all(tree.root in Path(d).parents for d in watch.cgroup.dirs.values())
    assert tree.where[os.getpid()] == tree.scope / f"sweep-self-{os.getpid()}" and tree.procs(tree.scope) == []
    assert started == [Path(watch.fg_cgroup.dirs["cpu"]) if watch.fg_cgroup else tree.where[os.getpid()]]


# ---- issue 34 §9 c: a stale trial cgroup is judged by its owner's pid and start, on this host only

_MAKE = """
import sys
from sweep.trial.cgroups import TrialCgroup
cg = TrialCgroup.create({"cpu_weight": 100})
print(" ".join(sorted(set(cg.dirs.values()))), flush=True)
sys.stdin.readline()
"""


def _owner_pid(cgroup_dir: str) -> int:
    return int(os.path.basename(cgroup_dir).split("-")[2].split(".")[0])


@needs_pid_control
def test_a_stale_cgroup_whose_pid_was_given_to_another_process_is_swept() -> None:
    made = subprocess.run([sys.executable, "-c", _MAKE], input="\n", capture_output=True, text=True, check=True)
    dirs = made.stdout.split()  # its orchestrator was killed before it could remove them
    again = _again(_owner_pid(dirs[0]))
    try:
        cgroups.sweep_stale()
        assert not any(os.path.exists(d) for d in dirs)  # before: kept, for a stranger with the pid
    finally:
        again.kill()
        again.wait()
        for d in dirs:
            if os.path.exists(d):
                os.rmdir(d)


def test_a_cgroup_of_a_live_process_of_another_pid_namespace_is_kept() -> None:
    """A container beside this one in the same cgroup (its pids not this namespace's) keeps its cgroups."""
    other = _in_another_pid_namespace(_MAKE)
    assert other.stdout is not None
    dirs = other.stdout.readline().split()
    try:
        assert dirs and not os.path.exists(f"/proc/{_owner_pid(dirs[0])}")
        cgroups.sweep_stale()
        assert all(os.path.exists(d) for d in dirs)  # before: removed, the pid being absent here
    finally:
        other.communicate("\n", timeout=60)
        for d in dirs:
            if os.path.exists(d):
                os.rmdir(d)


def test_a_study_from_before_trial_cgroup_stays_shared_and_is_not_continued_the_other_way(tmp_path: Path) -> None:
    import optuna

    from sweep.records import StudyMeta

    old = optuna.create_study()
    old.set_user_attr("objectives", ["correctness"])
    old.set_user_attr("budgets", {})
    old.set_user_attr("settings", {"prompts": 10})  # written before trial.cgroup existed
    assert StudyMeta.of(old).settings.cgroup == "shared"
    old.set_user_attr("settings", {"prompts": 10, "cgroup": "own"})
    assert StudyMeta.of(old).settings.cgroup == "own"
