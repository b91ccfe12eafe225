"""The seed study's spike, explained: ``python bench/threads_batch.py [--rounds N]``.

SmolLM2 with n_threads=1, once with n_threads_batch at llama-cpp-python's default
(every logical CPU) and once with n_threads_batch=1, no affinity, 9 prompts.
Prints active CPU p99 and peak (% of the machine), CPU in windows wholly inside
a prefill or a decode (% of one core), p95 latency, and the foreground probe's
p95 ratio (answering / baseline) with its baseline sample count.
"""

from __future__ import annotations

import argparse
from typing import Any

from sweep.correctness.tasks import load_tasks, stratified_subset
from sweep.measure.host import machine_cpus
from sweep.records import TrialSettings
from sweep.trial.runner import run_trial

import _harness


def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    settings = TrialSettings(prompts=9, idle_seconds=2, noise_retries=0)
    tasks = stratified_subset(load_tasks(), 9)
    print("n_threads_batch        active p99  peak   (% of machine)  prefill  decode  (% of one core)  p95 latency  N"
          "   probe p95 ratio (baseline N)")
    rows = []
    for _ in range(args.rounds):
        for batch, label in ((machine_cpus(), f"{machine_cpus()} (the default)"), (1, "1")):
            f = run_trial(_harness.config("smollm2-135m", "Q4_1", n_threads_batch=batch), settings, tasks).figures
            rows.append({"n_threads_batch": batch, "figures": f})
            print(f"{label:22s} {f['cpu_active_p99_share_pct']:10.1f}  {f['cpu_active_peak_share_pct']:5.1f}"
                  f"                   {f.get('cpu_prefill_mean_core_pct', float('nan')):7.1f}  "
                  f"{f.get('cpu_decode_mean_core_pct', float('nan')):6.1f}                   "
                  f"{f['latency_p95_s']:9.2f} s  {f['n_windows_active']:.0f}   "
                  f"{f.get('fg_p95_ratio', float('nan')):.2f} ({f.get('n_fg_baseline', 0):.0f})")
    return rows


if __name__ == "__main__":
    _harness.run(main, _harness.options(__doc__, rounds=2))
