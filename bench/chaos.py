"""A chaos soak: two orchestrators on one PostgreSQL study while faults are injected, then a check
that nothing was lost: ``python bench/chaos.py [--minutes 20] [--seed 1] [--json]``.

Two simulated hosts (their own host id, lock file and spool, each pinned to one CPU, as in
``bench/fleet.py``) measure SmolLM2 trials on a throwaway PostgreSQL server. At random moments
(a fixed seed) one fault at a time is injected, drawn from a shuffled deck of every kind, until
the time is up and every kind has been injected at least once:

- ``kill``: SIGKILL of an orchestrator, which is then restarted;
- ``pg_restart``: PostgreSQL stopped (``-m fast``: connections cut) and started again;
- ``db_outage``: PostgreSQL down for 90 s (``--outage``), far past the heartbeat grace period and within the
  retry window, while both orchestrators measure: neither may reap the other's live trial once
  it is back (no heartbeat could land meanwhile);
- ``pg_down``: PostgreSQL down for longer than the retry window (``SWEEP_DB_RETRY_S``), so that
  the orchestrators stop with exit 5 and are restarted once it is back;
- ``stop_worker``: SIGSTOP of a worker past the trial's progress timeout;
- ``stop_orchestrator``: SIGSTOP of a whole orchestrator past the heartbeat grace period (the
  other host reaps its trial), then SIGCONT;
- ``spool_full``: the host's spool (a small tmpfs) filled to the last byte for a while;
- ``term``: SIGTERM (the trial in flight finishes and is recorded), then a restart.

An orchestrator that exits is restarted. When the time is up, each is stopped with SIGTERM, and
then each host runs what its user would run next, ``sweep run`` (which replays its spool and reaps
its dead trials). What was measured is known without the database: every measurement is written to
its host's spool before the database, and an inotify watch on the spools records each id as its
file appears. The check, in one line:

- lost: a measurement seen in a spool that no trial in the database carries;
- measured twice: a spool id on two trials; a configuration measured (not reused) on two complete
  trials, late records included; or one trial's parameters measured twice, as its late record and
  as the run they were re-queued for (the reaped trial, its late record and that run all count
  towards --trials). A reaped trial's owner that this soak had SIGSTOPped past the grace period
  looked lost by design: its double is counted apart (``measured_twice_after_stop``), not as a fault;
- RUNNING left, stray processes (workers, probes, orchestrators of this soak), files left in a spool;
- integrity: every complete trial has its values, series and figures; every failed one a reason.

``spool_full`` needs root (it mounts a tmpfs); without it that kind is left out, and the line says so.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

HEARTBEAT_S, GRACE_S = 2, 8
OUTAGE_S = 90  # db_outage: past the grace period, within the retry window (--outage)
RETRY_S = OUTAGE_S + 30  # the database retry window the orchestrators get; pg_down outlasts it
PROGRESS_TIMEOUT_S = 8
SPOOL_BYTES = 8 << 20  # each host's spool tmpfs

SPACE = f"""\
version: 1
name: chaos
models:
  smollm2-135m: [Q4_1]
params:
  n_batch: [32, 64, 128, 256, 512]
  nice: [0, 10, 19]
  max_tokens: {{low: 4, high: 24}}
fixed:
  cores: 1
  n_threads: 1
  n_threads_batch: 1
  n_ctx: 512
trial:
  prompts: 3
  idle_seconds: 0.3
  baseline_seconds: 0.2
  noise_max_pct: 95
  noise_retries: 0
  progress_timeout_seconds: {PROGRESS_TIMEOUT_S}
sampler:
  name: random
  seed: 5
"""

Groups = list[list[Any]]  # groups of trials that measured one configuration

KINDS = ("kill", "pg_restart", "db_outage", "pg_down", "stop_worker", "stop_orchestrator", "spool_full", "term")


class SpoolWatch:
    """The spool ids that appear in the watched directories (inotify, IN_MOVED_TO: a spool file is
    renamed into place once it is complete), read by a thread until ``stop``."""

    IN_MOVED_TO = 0x80

    def __init__(self, dirs: list[Path]) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._fd = self._libc.inotify_init1(os.O_NONBLOCK)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        for d in dirs:
            if self._libc.inotify_add_watch(self._fd, str(d).encode(), self.IN_MOVED_TO) < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {d}")
        self.ids: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not select.select([self._fd], [], [], 0.2)[0]:
                continue
            try:
                buf = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                continue
            off = 0
            while off < len(buf):
                _, _, _, n = struct.unpack_from("iIII", buf, off)
                name = buf[off + 16:off + 16 + n].rstrip(b"\0").decode()
                off += 16 + n
                if name.endswith(".json") and not name.startswith(".partial-"):
                    self.ids.add(name[:-5].rsplit("-", 1)[1])

    def stop(self) -> set[str]:
        time.sleep(0.5)  # events of the last renames
        self._stop.set()
        self._thread.join()
        os.close(self._fd)
        return self.ids


class Host:
    """One simulated host's orchestrator, restarted whenever it has exited."""

    def __init__(self, i: int, space: Path, url: str, tmp: Path, trials: int) -> None:
        self.i, self.space, self.trials = i, space, trials
        self.spool = tmp / f"spool{i}"
        self.spool.mkdir()
        self.env = {**os.environ, "SWEEP_STORAGE": url, "SWEEP_HOST_ID": f"host{i}",
                    "SWEEP_LOCK_FILE": str(tmp / f"host{i}.lock"), "SWEEP_SPOOL_DIR": str(self.spool),
                    "SWEEP_DB_RETRY_S": str(RETRY_S), "SWEEP_HEARTBEAT_SECONDS": str(HEARTBEAT_S),
                    "SWEEP_GRACE_SECONDS": str(GRACE_S)}
        self.cpu = sorted(os.sched_getaffinity(0))[i % len(os.sched_getaffinity(0))]
        self.log = open(tmp / f"host{i}.log", "ab")
        self.proc: subprocess.Popen[bytes] | None = None
        self.exits: dict[int, int] = {}
        self.stopped = False
        self.started = 0.0

    def run(self, *args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "sweep", *args], env=self.env, stdout=self.log,
                                stderr=subprocess.STDOUT, preexec_fn=lambda: os.sched_setaffinity(0, {self.cpu}))

    def start(self) -> None:
        self.started = time.monotonic()
        self.proc = self.run("run", str(self.space), "--study", "chaos", "--trials", str(self.trials), "--quiet")

    def tend(self) -> None:
        """Restart the orchestrator if it has exited (counting its exit code)."""
        if self.proc is not None and not self.stopped and self.proc.poll() is not None \
                and time.monotonic() - self.started > 2:  # not in a tight loop while the database is away
            self.exits[self.proc.returncode] = self.exits.get(self.proc.returncode, 0) + 1
            self.start()

    def workers(self) -> list[int]:
        import psutil

        if self.proc is None:
            return []
        try:
            kids = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        return [k.pid for k in kids if "sweep.trial.worker" in " ".join(_cmdline(k))]


def _cmdline(p: Any) -> list[str]:
    try:
        return p.cmdline()
    except Exception:  # noqa: BLE001 - gone meanwhile
        return []


class Disk:
    """A host's spool on a tmpfs of its own, which ``fill`` fills and ``free`` empties."""

    def __init__(self, path: Path) -> None:
        self.path = path
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SPOOL_BYTES}", "sweep-chaos", str(path)], check=True)
        self.filler = path / ".filler"

    def fill(self) -> None:
        """Write until the kernel says ENOSPC, in 64 KiB and then 1-byte steps: the last byte taken."""
        try:
            fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        except OSError:
            return  # full already
        try:
            for size in (65536, 1):
                try:
                    while True:
                        os.write(fd, b"\0" * size)
                except OSError:
                    pass
        finally:
            os.close(fd)

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False)


def soak(minutes: float, seed: int, tmp: Path, template: str) -> dict[str, Any]:
    from pgserver import new_database, pg_ctl

    rnd = random.Random(seed)
    url = new_database(template)
    space = tmp / "chaos.yaml"
    space.write_text(SPACE)
    hosts = [Host(i, space, url, tmp, 100000) for i in range(2)]
    disks = [Disk(h.spool) for h in hosts] if os.geteuid() == 0 else []
    kinds = [k for k in KINDS if disks or k != "spool_full"]
    watch = SpoolWatch([h.spool for h in hosts])
    faults: dict[str, int] = {}
    stops: list[tuple[str, float, float]] = []  # stop_orchestrator: the host stopped, from and to (wall clock)
    deck: list[str] = []
    end = time.monotonic() + 60 * minutes

    def pause(seconds: float) -> None:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            for h in hosts:
                h.tend()
            time.sleep(0.2)

    try:
        for h in hosts:
            h.start()
        pause(15)  # both measuring before the first fault
        # Until the time is up and every kind has been injected once (a short soak on a slow
        # machine would otherwise end before its first deck is dealt), within a hard limit.
        while time.monotonic() < end or (set(faults) != set(kinds) and time.monotonic() < end + 600):
            if not deck:
                deck = list(kinds)
                rnd.shuffle(deck)
            kind, h = deck.pop(), rnd.choice(hosts)
            if _inject(kind, h, hosts, disks, url, pause, rnd, pg_ctl, stops):
                faults[kind] = faults.get(kind, 0) + 1
            else:
                deck.append(kind)  # not possible now (that host is restarting, say): it comes next
            pause(rnd.uniform(4, 10))
        for h in hosts:  # what a user does at the end: Ctrl-C (SIGTERM here), then waits
            h.stopped = True
            if h.proc and h.proc.poll() is None:
                h.proc.send_signal(signal.SIGTERM)
        for h in hosts:
            if h.proc:
                try:
                    h.proc.wait(timeout=180)
                except subprocess.TimeoutExpired:
                    h.proc.kill()
                    h.proc.wait()
                    h.exits[-9] = h.exits.get(-9, 0) + 1
        # The next run on each host replays its spool and reaps its dead trials; it measures nothing
        # more (the study already holds more finished trials than it asks for).
        for h in hosts:
            p = h.run("run", str(space), "--study", "chaos", "--trials", "1", "--quiet")
            p.wait(timeout=300)
            if p.returncode:
                raise SystemExit(f"host{h.i}'s last sweep run exited {p.returncode}: see {h.log.name}")
        seen = watch.stop()
        left_in_spool = sum(1 for h in hosts for f in h.spool.glob("*.json"))
    finally:
        for d in disks:
            d.free()
        for h in hosts:
            if h.proc and h.proc.poll() is None:
                os.kill(h.proc.pid, signal.SIGCONT)
                h.proc.kill()
        strays = _strays()
        for d in disks:
            d.unmount()
    return {**check(url, seen, stops), "faults": faults, "exits": [h.exits for h in hosts],
            "left_in_spool": left_in_spool,
            "stray_processes": len(strays), "strays": strays, "kinds": kinds, "minutes": minutes, "seed": seed}


def _inject(kind: str, h: Host, hosts: list[Host], disks: list[Disk], url: str, pause: Any, rnd: random.Random,
            pg_ctl: Any, stops: list[tuple[str, float, float]]) -> bool:
    """One fault, held as long as it needs, then undone. False: it could not be injected now."""
    if kind in ("kill", "term"):
        if h.proc is None or h.proc.poll() is not None:
            return False
        h.proc.send_signal(signal.SIGKILL if kind == "kill" else signal.SIGTERM)
    elif kind == "pg_restart":
        pg_ctl(url, "stop")
        pause(rnd.uniform(0.5, 3))
        pg_ctl(url, "start")
    elif kind == "db_outage":
        deadline = time.monotonic() + 60  # with a trial in flight on both hosts, as far as may be
        while not all(x.workers() for x in hosts) and time.monotonic() < deadline:
            pause(0.2)
        pg_ctl(url, "stop")
        pause(OUTAGE_S)
        pg_ctl(url, "start")
    elif kind == "pg_down":
        pg_ctl(url, "stop")
        pause(RETRY_S + 6)
        pg_ctl(url, "start")
    elif kind == "stop_worker":
        deadline = time.monotonic() + 30
        while not h.workers() and time.monotonic() < deadline:
            pause(0.2)
        workers = h.workers()
        if not workers:
            return False
        os.kill(workers[0], signal.SIGSTOP)
        pause(PROGRESS_TIMEOUT_S + 4)  # the orchestrator kills it as hung
        try:
            os.kill(workers[0], signal.SIGCONT)
        except ProcessLookupError:
            pass
    elif kind == "stop_orchestrator":
        if h.proc is None or h.proc.poll() is not None:
            return False
        h.stopped = True
        group = [h.proc.pid, *h.workers()]
        stopped = time.time()
        for pid in group:
            os.kill(pid, signal.SIGSTOP)
        pause(GRACE_S + 2 * HEARTBEAT_S + 3)  # the other host finds its heartbeat stale
        for pid in group:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        stops.append((f"host{h.i}", stopped, time.time()))
        h.stopped = False
    elif kind == "spool_full":
        d = disks[hosts.index(h)]
        d.fill()
        pause(rnd.uniform(10, 20))
        d.free()
    return True


def _strays() -> list[str]:
    """Command lines of this interpreter's sweep processes still alive."""
    import psutil

    me = os.getpid()
    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if p.info["pid"] != me and cmd.startswith(sys.executable) and \
                any(s in cmd for s in ("-m sweep ", "sweep.trial.worker", "sweep.measure.probe", "sweep.measure.foreground")):
            out.append(cmd)
    return out


def check(url: str, seen: set[str], stops: list[tuple[str, float, float]] | None = None) -> dict[str, Any]:
    """What the database holds against what was measured. ``stops``: the stop_orchestrator faults
    (host id, from, to; wall clock), whose reaped trials were reaped by design."""
    import optuna

    from sweep.study.storage import SeriesStore

    study = optuna.load_study(study_name="chaos", storage=url)
    trials = study.get_trials(deepcopy=False)
    series = SeriesStore(url)
    ids: dict[str, list[Any]] = {}
    # A failed trial whose figures were written before it was reaped, and whose measurement a late
    # trial holds (recorded_late_for it, the same spool id), recorded it once, not twice.
    moved = {(t.user_attrs["recorded_late_for"], t.user_attrs.get("spool_id")) for t in trials
             if "recorded_late_for" in t.user_attrs}
    for t in trials:
        a = t.user_attrs
        if "spool_id" in a and "reused_from" not in a and (t.number, a["spool_id"]) not in moved:  # a reuse measured nothing
            ids.setdefault(a["spool_id"], []).append(t)
    problems = []
    for t in trials:
        a = t.user_attrs
        if t.state.name == "COMPLETE":
            if not t.values or "config" not in a:
                problems.append(f"trial {t.number}: complete without values or config")
            if "reused_from" in a:
                continue
            if "spool_id" not in a or series.get(t._trial_id) is None:
                problems.append(f"trial {t.number}: complete without its spool id or series")
        elif t.state.name == "FAIL" and not a.get("fail_reason"):
            problems.append(f"trial {t.number}: failed without a reason")
    recorded = set(ids)
    doubles, after_stop = measured_twice(trials, stops or [])
    spool_doubles = [v for v in ids.values() if len(v) > 1]
    return {"measured": len(seen | recorded), "recorded": len(recorded), "lost": len(seen - recorded),
            "recorded_without_spool": len(recorded - seen),
            "measured_twice": sum(len(v) - 1 for v in [*spool_doubles, *doubles]),
            "measured_twice_after_stop": sum(len(v) - 1 for v in after_stop),
            "twice": [[_who(t, trials) for t in v] for v in [*doubles, *spool_doubles]],
            "twice_after_stop": [[_who(t, trials) for t in v] for v in after_stop],
            "running_left": sum(t.state.name == "RUNNING" for t in trials), "trials": len(trials),
            "complete": sum(t.state.name == "COMPLETE" for t in trials),
            "failed_by_reason": _count(t.user_attrs.get("fail_reason") for t in trials if t.state.name == "FAIL"),
            "late": sum("recorded_late_for" in t.user_attrs for t in trials), "problems": problems}


def measured_twice(trials: list[Any], stops: list[tuple[str, float, float]]) -> tuple[Groups, Groups]:
    """Configurations measured twice, as groups of complete trials that are not reuses: (faults, and
    the doubles of an owner this soak stopped past the grace period, which looked lost by design).

    Two such trials of one effective configuration should have been one and a reuse (late records
    included). One trial's parameters recorded late and measured again where they were re-queued
    are a double too, whichever host ran them (the hosts' CPUs differ, and with them the
    configuration): the reaped trial, its late record and the re-run all count towards --trials.
    """
    measured = [t for t in trials if t.state.name == "COMPLETE" and "reused_from" not in t.user_attrs]
    by_config: dict[str, list[Any]] = {}
    for t in measured:
        by_config.setdefault(json.dumps(t.user_attrs.get("config"), sort_keys=True), []).append(t)
    doubles = [v for v in by_config.values() if len(v) > 1]
    after_stop: Groups = []
    by_number = {t.number: t for t in trials}
    origins = {t.user_attrs["recorded_late_for"] for t in measured if "recorded_late_for" in t.user_attrs}
    for origin in sorted(origins):
        again = [t for t in measured if t.user_attrs.get("requeued_from") == origin]
        late = [t for t in measured if t.user_attrs.get("recorded_late_for") == origin]
        if not again or any({t.number for t in v} >= {t.number for t in [*late, *again]} for v in doubles):
            continue  # measured once, or counted already as one configuration
        (after_stop if _stopped(by_number.get(origin), stops) else doubles).append([*late, *again])
    return doubles, after_stop


def _stopped(reaped: Any, stops: list[tuple[str, float, float]]) -> bool:
    """Whether the trial was reaped while (or just after) this soak held its owner SIGSTOPped."""
    if reaped is None or reaped.datetime_complete is None:
        return False
    host = (reaped.user_attrs.get("owner") or {}).get("host")
    when = reaped.datetime_complete.timestamp()  # the reaper's local clock: this machine's
    return any(host == h and start <= when <= end + 2 * HEARTBEAT_S for h, start, end in stops)


def _who(t: Any, trials: list[Any]) -> str:
    """One trial measured again, and the story around it: who ran it, when, where its parameters came from."""
    a = t.user_attrs
    history = [f"{o.number} {o.state.name} {o.user_attrs.get('fail_reason', '')}".strip() for o in trials
               if o.user_attrs.get("config") == a.get("config") and o.number != t.number]
    span = "-".join(f"{d:%H:%M:%S}" if d else "?" for d in (t.datetime_start, t.datetime_complete))
    return (f"trial {t.number} {t.state.name} {a.get('fail_reason', '')} by {(a.get('owner') or {}).get('host')} "
            f"pid {(a.get('owner') or {}).get('pid')} {span} requeued_from {a.get('requeued_from')} "
            f"late_for {a.get('recorded_late_for')} spool {a.get('spool_id')} measured_at {a.get('measured_at')}; "
            f"others with its config: {history}")


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in items:
        out[str(x)] = out.get(str(x), 0) + 1
    return out


def line(r: dict[str, Any]) -> str:
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(r["faults"].items()))
    absent = "" if "spool_full" in r["kinds"] else " (spool_full left out: not root)"
    by_design = f" (and {r['measured_twice_after_stop']} of owners stopped past the grace, by design)" \
        if r["measured_twice_after_stop"] else ""
    return (f"faults {sum(r['faults'].values())} ({kinds}){absent}, trials measured {r['measured']}, "
            f"recorded {r['recorded']}, lost {r['lost']}, measured twice {r['measured_twice']}{by_design}, "
            f"RUNNING left {r['running_left']}, stray processes {r['stray_processes']}, "
            f"integrity {'ok' if not r['problems'] and not r['left_in_spool'] else 'FAILED'}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=20.0, help="how long faults are injected [20]")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--outage", type=float, default=OUTAGE_S,
                    help=f"db_outage's length in s, past the {GRACE_S} s grace; pg_down outlasts it by 36 s [{OUTAGE_S}]")
    ap.add_argument("--json", action="store_true", help="print the whole result as JSON after the line")
    return ap.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    from pgserver import throwaway_postgres

    global OUTAGE_S, RETRY_S
    if args.outage <= GRACE_S + 2 * HEARTBEAT_S:
        sys.exit(f"--outage {args.outage:g}: must be past the heartbeat grace ({GRACE_S} s) and two beats")
    OUTAGE_S, RETRY_S = args.outage, args.outage + 30

    started = time.time()
    work = Path(tempfile.mkdtemp(prefix="sweep-chaos-"))
    with throwaway_postgres() as template:
        r = soak(args.minutes, args.seed, work, template)
    r["wall_s"] = time.time() - started
    r["outage_s"] = OUTAGE_S
    print(line(r))
    print(f"(wall {r['wall_s'] / 60:.1f} min; exits by host {r['exits']}; failed trials by reason "
          f"{r['failed_by_reason']}; late records {r['late']}; recorded with the spool full {r['recorded_without_spool']})")
    for p in r["problems"]:
        print("  " + p)
    for pair in r["twice"]:
        print("  measured twice: " + " | ".join(map(str, pair)) if isinstance(pair, list) else "  " + pair)
    for pair in r["twice_after_stop"]:
        print("  measured twice, its owner stopped past the grace: " + " | ".join(map(str, pair)))
    if args.json:
        print(json.dumps(r))
    if r["lost"] or r["measured_twice"] or r["running_left"] or r["stray_processes"] or r["problems"] \
            or r["left_in_spool"]:
        (work / "result.json").write_text(json.dumps(r, indent=1, default=str))
        print(f"the orchestrators' logs and the result (result.json) are kept in {work}")
        sys.exit(1)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    from sweep.hostlock import measurement_lock

    arguments = parse_args()  # --help and a bad flag answer at once, without waiting for the lock
    with measurement_lock("bench/chaos.py", on_wait=print):  # never beside another measurement
        main(arguments)
