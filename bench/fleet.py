"""Trials per hour with 1 and 2 orchestrators on one PostgreSQL study, and what the database and
the measurement lock add to a trial: ``python bench/fleet.py [TRIALS_PER_ORCHESTRATOR] [--storage URL]``.

On this 2-core machine two "hosts" are two orchestrators with their own host id and lock file,
each pinned to one CPU (a space with ``cores: 1``), on one study in a throwaway PostgreSQL server
(or the server at ``--storage``, a URL template with ``{db}``). Every trial is measured
(``duplicates: repeat``). Two simulated hosts on one machine share its memory bus and caches,
so their trials are each a little slower than one host's; the noise guard is relaxed for the
same reason (each sees the other as load).

Overhead per trial: the time between the end of one trial's measurement and the start of the
next on the same orchestrator (``measured_at``): recording, reaping, counting, asking, sampling,
the lock; as a share of a trial's measured time. ``storage_s`` (reap, count, ask) and
``lock_wait_s`` are also recorded per trial and printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _harness

SPACE = """\
version: 1
name: fleet
models:
  smollm2-135m: [Q4_1]
params:
  n_batch: [64, 128, 256, 512]
  nice: [0, 19]
  max_tokens: [8, 16]
fixed:
  cores: 1
  n_threads: 1
  n_threads_batch: 1
  n_ctx: 512
trial:
  prompts: 4
  idle_seconds: 0.5
  baseline_seconds: 0.2
  noise_max_pct: 95
  noise_retries: 0
  duplicates: repeat
sampler:
  name: random
  seed: 11
"""


def run(space: Path, url: str, per: int, hosts: int, tmp: Path) -> dict[str, float]:
    import optuna

    procs = []
    t0 = time.monotonic()
    for i in range(hosts):
        env = {**os.environ, "SWEEP_STORAGE": url, "SWEEP_HOST_ID": f"host{i}",
               "SWEEP_LOCK_FILE": str(tmp / f"host{i}.lock")}
        cpu = sorted(os.sched_getaffinity(0))[i]
        procs.append(subprocess.Popen([sys.executable, "-m", "sweep", "run", str(space), "--trials", str(per * hosts),
                                       "--quiet"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      preexec_fn=lambda cpu=cpu: os.sched_setaffinity(0, {cpu})))
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            sys.exit(f"an orchestrator failed: {err.decode()[-500:]}")
    wall = time.monotonic() - t0
    trials = optuna.load_study(study_name="fleet", storage=url).get_trials()
    spans: dict[str, list[tuple[float, float]]] = {}
    for t in trials:
        spans.setdefault(t.user_attrs["owner"]["host"], []).append(tuple(t.user_attrs["measured_at"]))
    # Between two trials of one orchestrator: recording, reaping, counting, asking, sampling, the lock.
    gaps = [b[0] - a[1] for v in spans.values() for a, b in zip(sorted(v), sorted(v)[1:])]
    trial_s = statistics.median(b - a for v in spans.values() for a, b in v)
    return {"trials": len(trials), "wall_s": wall, "per_hour": 3600 * len(trials) / wall, "trial_s": trial_s,
            "gap_s": statistics.median(gaps), "gap_share": statistics.median(gaps) / trial_s,
            "storage_s": statistics.median(t.user_attrs["storage_s"] for t in trials),
            "lock_wait_s": statistics.median(t.user_attrs["lock_wait_s"] for t in trials),
            "failed": sum(t.state.name != "COMPLETE" for t in trials)}


def main(args: argparse.Namespace) -> dict[str, Any]:
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("needs two CPUs: one per simulated host")
    from _pg import new_database, throwaway_postgres

    with tempfile.TemporaryDirectory() as d, (throwaway_postgres() if args.storage is None
                                              else _given(args.storage)) as template:
        tmp = Path(d)
        space = tmp / "fleet.yaml"
        space.write_text(SPACE)
        one = run(space, new_database(template), args.per, 1, tmp)
        two = run(space, new_database(template), args.per, 2, tmp)
    print(f"SmolLM2 Q4_1, 1 CPU per host, {args.per} trials per orchestrator, PostgreSQL "
          f"({'throwaway, Unix socket' if args.storage is None else 'given'})")
    print("hosts  trials  wall s  trials/hour  trial s  between trials s  (% of a trial)  storage_s  lock_wait_s  failed")
    for n, r in ((1, one), (2, two)):
        print(f"{n:5d}  {r['trials']:6d}  {r['wall_s']:6.1f}  {r['per_hour']:11.0f}  {r['trial_s']:7.2f}  "
              f"{r['gap_s']:16.3f}  {100 * r['gap_share']:13.2f}%  {r['storage_s']:9.3f}  {r['lock_wait_s']:11.3f}  "
              f"{r['failed']:6d}")
    print("(medians; wall s includes each orchestrator's start-up and final summary)")
    print(f"2 orchestrators / 1: {two['per_hour'] / one['per_hour']:.2f}x the trials per hour")
    # Not the --storage URL: the results file keeps the command, with its password removed.
    return {"per": args.per, "postgres": "throwaway" if args.storage is None else "given",
            "hosts": {"1": one, "2": two}}


class _given:
    def __init__(self, template: str) -> None:
        self.template = template

    def __enter__(self) -> str:
        return self.template

    def __exit__(self, *exc: object) -> None:
        pass


if __name__ == "__main__":
    ap = _harness.options(__doc__)
    ap.add_argument("per", nargs="?", type=int, default=8, help="trials per orchestrator [8]")
    ap.add_argument("--storage", default=None, help="a PostgreSQL URL template with {db} [a throwaway server]")
    # The orchestrators it starts have lock files of their own (SWEEP_LOCK_FILE): none waits for this one.
    _harness.run(main, ap)
