"""Open load, measured: response time with queueing, the duty cycle and the user's probe at five
arrival rates, and each configuration's capacity.

    .venv/bin/python bench/open_load.py [--models smollm2-135m:Q4_1,qwen2.5-coder-1.5b:Q4_K_M]
        [--backends python,server] [--parallel 1,2] [--rates 1,6,30,120,480] [--seconds 30] [--steps 2]
        -o bench/data/open_load.json

Each configuration (1 thread on CPU 0, 0-shot grammar, no prefix cache, 32 tokens; on the server,
``--parallel`` slots, one run each) runs one trial per rate: 4 items answered back to back, then a
Poisson open-loop phase of ``--seconds`` (``arrival_seed`` 1) under the interactive probe. Then its capacity under the seed's budgets read
on open load (response p95 <= 2.5 s, CPU mean over the phase <= 35% of the machine, not
saturated): bisected ``--steps`` times (geometrically) between the highest rate that held and
the lowest that did not, as ``sweep capacity`` does.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import replace
from typing import Any

from sweep.capacity import judge
from sweep.correctness.tasks import load_tasks, stratified_subset
from sweep.records import TrialSettings
from sweep.trial.runner import run_trial

import _harness

BUDGETS = {"response_p95_s": {"max": 2.5}, "cpu_mean_share_pct": {"max": 35.0}}
KEEP = ("response_p50_s", "response_p95_s", "response_p99_s", "response_lower_bound", "queue_wait_p95_s", "queue_max",
        "service_p95_s", "cpu_mean_share_pct", "cpu_p99_share_pct", "cpu_s_per_answer", "saturated", "open_events",
        "open_answered", "fg_open_p95_ratio", "cpu_active_mean_share_pct", "latency_p95_s")


def main(args: argparse.Namespace) -> dict[str, Any]:
    tasks = stratified_subset(load_tasks(), 4)
    base = TrialSettings(prompts=4, idle_seconds=1.0, baseline_seconds=0.5, noise_retries=1, timeout_seconds=600,
                         early_abort=False, arrival="poisson", arrival_seconds=args.seconds, arrival_seed=1)
    rates = [float(r) for r in args.rates.split(",")]
    out = []
    for spec in args.models.split(","):
        name, _, quant = spec.partition(":")
        arms = [(b, p) for b in args.backends.split(",")
                for p in (map(int, args.parallel.split(",")) if b == "server" else [None])]
        for backend, parallel in arms:
            config = _harness.config(name, quant, n_threads=1, n_threads_batch=1, cpus=(0,), shots=0, output="grammar",
                                     backend=backend, parallel=parallel)
            label = f"{config.model}:{config.quant} {backend}" + (f" parallel {parallel}" if parallel else "")
            runs: dict[float, dict[str, Any]] = {}

            def measure(rate: float) -> bool:
                o = run_trial(config, replace(base, rate_per_min=rate), tasks)
                broken = judge(o, BUDGETS)
                runs[rate] = {"rate_per_min": rate, "ok": o.ok, "reason": o.reason, "broken": broken,
                              "figures": {k: o.figures[k] for k in KEEP if k in o.figures}}
                f = o.figures
                print(f"{label} at {rate:.3g}/min: " + (
                    f"response p95 {f.get('response_p95_s', math.nan):.2f} s (service {f.get('service_p95_s', math.nan):.2f}"
                    f", wait {f.get('queue_wait_p95_s', math.nan):.2f}), queue max {f.get('queue_max', 0):.0f}, CPU mean "
                    f"{f.get('cpu_mean_share_pct', math.nan):.1f}%, probe x{f.get('fg_open_p95_ratio', math.nan):.2f}, "
                    f"{f.get('open_answered', 0):.0f}/{f.get('open_events', 0):.0f} answered"
                    + (", SATURATED" if f.get("saturated") else "") if o.ok else f"FAILED ({o.reason})")
                    + (" -> holds" if not broken else " -> breaks " + ", ".join(broken)), flush=True)
                return not broken

            held = [r for r in rates if measure(r)]
            good = max(held) if held else None
            bad = min((r for r in rates if r not in held and (good is None or r > good)), default=None)
            for _ in range(args.steps if good is not None and bad is not None else 0):
                mid = math.sqrt(good * bad)
                if measure(mid):
                    good = mid
                else:
                    bad = mid
            capacity = max((r for r, x in runs.items() if not x["broken"]), default=None)
            print(f"{label}: capacity {capacity if capacity is None else round(capacity, 1)} events/min", flush=True)
            out.append({"label": label, "model": f"{config.model}:{config.quant}", "backend": backend, "parallel": parallel,
                        "runs": [runs[r] for r in sorted(runs)], "capacity_per_min": capacity})
    return {"budgets": BUDGETS, "seconds": args.seconds, "rates": rates, "configs": out}


if __name__ == "__main__":
    ap = _harness.options(__doc__)
    ap.add_argument("--models", default="smollm2-135m:Q4_1,qwen2.5-coder-1.5b:Q4_K_M")
    ap.add_argument("--backends", default="python,server")
    ap.add_argument("--rates", default="1,6,30,120,480")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--parallel", default="1,2", help="llama-server's slots, one run of rates each [1,2]")
    _harness.run(main, ap)
