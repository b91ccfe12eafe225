"""Where the service will live: ``python bench/topology.py [--models M,..] [--backends B,..] [--prompts N] [-o FILE]``.

A systemd service always runs in a cgroup of its own, and a user's programs in another. Under CFS
group scheduling a thread's nice or ``SCHED_IDLE`` orders it only against the threads of its own
cgroup; between cgroups, the cgroups' weights decide (``cpu.weight``, and ``cpu.idle`` since Linux
5.15). So the same configuration can be polite beside the user in one cgroup and not as a service.

For each model and backend, four placements of the model's threads, each with ``sched_policy:
idle`` and nice 19, and with ``normal`` and nice 0, beside the CPU-bound foreground (``probe:
cpu``), one trial each:
- ``shared``: the orchestrator's cgroup, beside the foreground (``trial.cgroup: shared``: a script
  started from the user's terminal);
- ``own``: a cgroup of its own at normal weight, the foreground in a sibling one (``trial.cgroup:
  own``, the default: what a unit without a CPU directive gets);
- ``own, cpu_weight idle``: the same with ``cpu.idle`` (``CPUWeight=idle``);
- ``own, quota 35%``: the same with a 35% CPU quota of the machine (``CPUQuota=``).

Each row gives ``fg_cpu_slowdown`` (how much longer the foreground's fixed unit of work takes while
the model answers), the model's p95 latency alone and under the foreground (the contended pass; a
pass cut at its deadline is a lower bound, ``>=``), and which topology the trial recorded.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import replace
from typing import Any

from sweep.correctness.tasks import load_tasks, stratified_subset
from sweep.records import TrialSettings
from sweep.trial.runner import run_trial

import _harness

PLACEMENTS = (("shared", "shared", {}), ("own", "own", {}), ("own, cpu_weight idle", "own", {"cpu_weight": "idle"}),
              ("own, quota 35%", "own", {"cpu_quota_pct": 35.0}))
POLITENESS = (("idle, nice 19", {"sched_policy": "idle", "nice": 19}), ("normal, nice 0", {}))


def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    tasks = stratified_subset(load_tasks(), args.prompts)
    base = TrialSettings(prompts=args.prompts, idle_seconds=1, noise_retries=2, busy_trials="repeat",
                         early_abort=False, probe="cpu", timeout_seconds=1200,
                         contended_timeout_seconds=args.contended_timeout)
    rows = []
    started = time.monotonic()
    print(_header(), flush=True)
    for spec in args.models.split(","):
        name, quant = spec.split(":")
        for backend in args.backends.split(","):
            for (where, topology, limits), (polite, knobs) in ((p, k) for p in PLACEMENTS for k in POLITENESS):
                config = _harness.config(name, quant, n_threads=2, output="grammar", backend=backend, **knobs, **limits)
                o = run_trial(config, replace(base, cgroup=topology), tasks)
                f = o.figures
                rows.append({"model": spec, "backend": backend, "placement": where, "politeness": polite,
                             "ok": o.ok, "reason": o.reason, "cgroup_own": f.get("cgroup_own"),
                             "topology_why": (o.series.get("cgroup") or {}).get("why"),
                             "fg_cpu_slowdown": f.get("fg_cpu_slowdown"),
                             "fg_cpu_slowdown_p95": f.get("fg_cpu_slowdown_p95"),
                             "latency_p95_s": f.get("latency_p95_s"),
                             "latency_p95_contended_s": f.get("latency_p95_contended_s"),
                             "contended_cut": bool(f.get("contended_cut")),
                             "cpu_active_mean_share_pct": f.get("cpu_active_mean_share_pct")})
                print(_line(rows[-1]), flush=True)
    print(f"({len(rows)} rows, {time.monotonic() - started:.0f} s; {args.prompts} prompts, 2 threads, 0-shot grammar, "
          "no affinity; probe: cpu on every CPU)")
    return rows


def _header() -> str:
    return ("| model | backend | where the model runs | politeness | fg_cpu_slowdown | p95 latency s | "
            "contended p95 latency s | own cgroup |\n|---|---|---|---|---|---|---|---|")


def _f(x: float | None, fmt: str = ".2f") -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _line(r: dict[str, Any]) -> str:
    contended = ("≥ " if r["contended_cut"] else "") + _f(r["latency_p95_contended_s"])
    failed = "" if r["ok"] else f" (failed: {r['reason']})"
    return (f"| {r['model']} | {r['backend']} | {r['placement']} | {r['politeness']} | {_f(r['fg_cpu_slowdown'])} | "
            f"{_f(r['latency_p95_s'])} | {contended}{failed} | {'yes' if r['cgroup_own'] == 1.0 else 'no'} |")


if __name__ == "__main__":
    ap = _harness.options(__doc__)
    ap.add_argument("--models", default="smollm2-135m:Q4_1,qwen2.5-coder-1.5b:Q4_K_M")
    ap.add_argument("--backends", default="python,server")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--contended-timeout", type=float, default=60.0)
    _harness.run(main, ap)
