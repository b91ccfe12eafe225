"""Who wins when the user's program wants the CPU: ``python bench/contention.py [--models ...] [--rounds N]``.

For each model, crosses nice 0 / 19, scheduling policy normal / batch / idle and 1 / 2 threads
(both thread counts alike, no affinity: the user's machine as it is). Each combination runs two
real trials, interleaved:
- ``probe: interactive``: the LLM's active p99 CPU (% of the machine) and the light probe's p95 ratio;
- ``probe: cpu``: the CPU-bound foreground's slowdown (``fg_cpu_slowdown``, how much longer a
  build on every CPU takes), and the model's p95 latency without and with that foreground.
A contended pass cut at its deadline (``--contended-timeout``) gives a lower bound, marked ``>=``.
The rows are the results (``--json``, ``-o FILE``).
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from dataclasses import replace
from typing import Any

from sweep.correctness.tasks import load_tasks, stratified_subset
from sweep.measure.host import machine_cpus
from sweep.records import TrialSettings
from sweep.trial.runner import run_trial

import _harness


def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    tasks = stratified_subset(load_tasks(), args.prompts)
    base = TrialSettings(prompts=args.prompts, idle_seconds=1, noise_retries=2, busy_trials="repeat", early_abort=False,
                         timeout_seconds=900, contended_timeout_seconds=args.contended_timeout)
    threads = sorted({1, machine_cpus()})
    rows = []
    started = time.monotonic()
    for spec in args.models.split(","):
        name, quant = spec.split(":")
        for _, nice, policy, n in itertools.product(range(args.rounds), (0, 19), ("normal", "batch", "idle"), threads):
            config = _harness.config(name, quant, n_threads=n, nice=nice, sched_policy=policy, output="grammar")
            light = run_trial(config, replace(base, probe="interactive"), tasks)
            heavy = run_trial(config, replace(base, probe="cpu"), tasks)
            a, b = light.figures, heavy.figures
            rows.append({"model": f"{name}:{quant}", "nice": nice, "sched": policy, "threads": n,
                         "ok": light.ok and heavy.ok, "reason": light.reason or heavy.reason,
                         "cpu_active_p99_share_pct": a.get("cpu_active_p99_share_pct"),
                         "fg_p95_ratio": a.get("fg_p95_ratio"), "fg_cpu_slowdown": b.get("fg_cpu_slowdown"),
                         "fg_cpu_slowdown_p95": b.get("fg_cpu_slowdown_p95"),
                         "latency_p95_s": b.get("latency_p95_s"),
                         "latency_p95_contended_s": b.get("latency_p95_contended_s"),
                         "contended_cut": bool(b.get("contended_cut")),
                         "contended_answers_same": b.get("contended_answers_same")})
            print(_line(rows[-1]) if len(rows) > 1 else _header() + "\n" + _line(rows[-1]), flush=True)
    print(f"({len(rows)} rows, {time.monotonic() - started:.0f} s; {args.prompts} prompts, max_tokens 32, "
          f"0-shot grammar, no affinity, {machine_cpus()} CPUs)")
    return rows


def _header() -> str:
    return ("| model | nice | sched | threads | LLM active p99 % of machine | probe p95 ratio | fg_cpu_slowdown | "
            "fg p95 unit ratio | p95 latency s | contended p95 latency s |\n|---|---|---|---|---|---|---|---|---|---|")


def _f(x: float | None, fmt: str = ".2f") -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _line(r: dict) -> str:
    contended = ("≥ " if r["contended_cut"] else "") + _f(r["latency_p95_contended_s"])
    failed = "" if r["ok"] else f" (failed: {r['reason']})"
    return (f"| {r['model']} | {r['nice']} | {r['sched']} | {r['threads']} | {_f(r['cpu_active_p99_share_pct'], '.1f')} "
            f"| {_f(r['fg_p95_ratio'])} | {_f(r['fg_cpu_slowdown'])} | {_f(r['fg_cpu_slowdown_p95'])} "
            f"| {_f(r['latency_p95_s'])} | {contended}{failed} |")


if __name__ == "__main__":
    ap = _harness.options(__doc__, rounds=1)
    ap.add_argument("--models", default="smollm2-135m:Q4_1")
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--contended-timeout", type=float, default=60.0)
    _harness.run(main, ap)
