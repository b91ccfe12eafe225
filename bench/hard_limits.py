"""What a kernel quota does, measured: ``python bench/hard_limits.py [--models ...] [--prompts N]``.

A CPU quota caps the trial's average over each period, not each moment. For each model, with 2
threads (both thread counts), this runs real trials under: no limit; cgroup quotas of 50% and 35%
of the machine at periods of 100 ms and 10 ms; ``cores=1`` (affinity); and nice 19. Each prints:
- the LLM's active CPU p99 (% of the machine) over windows of W = 100 ms and W = 20 ms (one trial
  sampled at 20 ms; the 100 ms windows are five 20 ms windows merged, by CPU time over wall time);
- the share of quota periods in which the trial was throttled (``cg_throttled_share``);
- latency p95 and p99/p50.
Then, under the CPU-bound foreground (``probe: cpu``), for no limit, the quotas at 100 ms,
``cpu_weight: idle`` (``cpu.idle = 1``) and nice 19 (on its session's autogroup, as a trial sets it):
``fg_cpu_slowdown`` (how much longer the user's build on every CPU takes) and the contended p95.
The rows are the results: ``-o bench/data/hard_limits.json`` is what docs/deploy.md's tables are
rendered from (``make tables``).
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import replace
from typing import Any

from sweep.correctness.tasks import load_tasks, stratified_subset
from sweep.measure.host import machine_cpus
from sweep.measure.metrics import ACTIVE_TAGS
from sweep.records import TrialSettings
from sweep.trial.runner import run_trial

import _harness

QUIET = [("none", {}),
         ("quota 50% / 100 ms", {"cpu_quota_pct": 50.0, "cpu_period_ms": 100}),
         ("quota 50% / 10 ms", {"cpu_quota_pct": 50.0, "cpu_period_ms": 10}),
         ("quota 35% / 100 ms", {"cpu_quota_pct": 35.0, "cpu_period_ms": 100}),
         ("quota 35% / 10 ms", {"cpu_quota_pct": 35.0, "cpu_period_ms": 10}),
         ("cores=1", {"cpus": (0,)}),
         ("nice 19", {"nice": 19})]
CONTENDED = [QUIET[0], QUIET[1], QUIET[3], ("cpu.idle = 1", {"cpu_weight": "idle"}), QUIET[6]]


def p99_at(series: dict[str, Any], merge: int) -> float | None:
    """The active p99 (% of the machine) over windows of ``merge`` consecutive sampled windows."""
    active = [(c * d, d) for c, d, p in zip(series["tree_core_pct"], series["dt"], series["phase"]) if p in ACTIVE_TAGS]
    merged = [active[i:i + merge] for i in range(0, len(active) - merge + 1, merge)]
    pcts = sorted(sum(c for c, _ in w) / sum(d for _, d in w) / series["ncpu"] for w in merged if sum(d for _, d in w))
    if not pcts:
        return None
    return pcts[min(len(pcts) - 1, math.ceil(0.99 * len(pcts)) - 1)]


def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    tasks = stratified_subset(load_tasks(), args.prompts)
    base = TrialSettings(prompts=args.prompts, idle_seconds=1, noise_retries=2, busy_trials="repeat", early_abort=False,
                         timeout_seconds=1800, contended_timeout_seconds=args.contended_timeout, window_ms=20,
                         # A starved contended pass sends nothing for a while: it is cut at its deadline
                         # (a lower bound, marked >=), not failed for want of progress.
                         progress_timeout_seconds=args.contended_timeout + 300)
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    print(_header(), flush=True)
    for spec in args.models.split(","):
        name, quant = spec.split(":")
        config = _harness.config(name, quant, n_threads=2, output="grammar")
        for probe, conditions in (("off", QUIET), ("cpu", CONTENDED)):
            for label, knobs in conditions:
                outcome = run_trial(replace(config, **knobs), replace(base, probe=probe), tasks)
                f = outcome.figures
                row = {"model": spec, "limit": label, "probe": probe, "ok": outcome.ok, "reason": outcome.reason,
                       "p99_w100": p99_at(outcome.series, 5) if outcome.series.get("t") else None,
                       "p99_w20": p99_at(outcome.series, 1) if outcome.series.get("t") else None,
                       **{k: f.get(k) for k in ("cg_throttled_share", "cg_throttled_s", "cpu_active_mean_share_pct",
                                                "latency_p50_s", "latency_p95_s", "latency_p99_p50_ratio",
                                                "fg_cpu_slowdown", "latency_p95_contended_s", "contended_cut",
                                                "machine_busy_active", "correctness")}}
                rows.append(row)
                print(_line(row), flush=True)
    print(f"({len(rows)} trials, {time.monotonic() - started:.0f} s; {args.prompts} prompts, max_tokens 32, "
          f"grammar output, 2 threads, {machine_cpus()} CPUs, sampled at W = 20 ms)")
    return rows


def _header() -> str:
    return ("| model | limit | probe | ok | active p99 % W=100ms | active p99 % W=20ms | mean % | throttled share | "
            "p95 s | p99/p50 | fg_cpu_slowdown | contended p95 s |\n|---|---|---|---|---|---|---|---|---|---|---|---|")


def _f(x: Any, fmt: str = ".2f") -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _line(r: dict[str, Any]) -> str:
    cut = ">=" if r.get("contended_cut") else ""
    busy = " (busy)" if r.get("machine_busy_active") else ""
    return (f"| {r['model']} | {r['limit']} | {r['probe']} | {'yes' if r['ok'] else r['reason']}{busy} | "
            f"{_f(r['p99_w100'], '.0f')} | {_f(r['p99_w20'], '.0f')} | {_f(r['cpu_active_mean_share_pct'], '.0f')} | "
            f"{_f(r['cg_throttled_share'])} | {_f(r['latency_p95_s'])} | {_f(r['latency_p99_p50_ratio'])} | "
            f"{_f(r['fg_cpu_slowdown'])} | {cut}{_f(r['latency_p95_contended_s'])} |")


if __name__ == "__main__":
    ap = _harness.options(__doc__)
    ap.add_argument("--models", default="smollm2-135m:Q4_1,qwen2.5-coder-1.5b:Q4_K_M")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--contended-timeout", type=float, default=60.0)
    _harness.run(main, ap)
