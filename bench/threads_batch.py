"""The seed study's spike, explained: ``python bench/threads_batch.py [REPEATS]``.

SmolLM2 with n_threads=1, once with n_threads_batch at llama-cpp-python's default
(every logical CPU) and once with n_threads_batch=1, no affinity, 9 prompts.
Prints active CPU p99 and peak (% of the machine), CPU in windows wholly inside
a prefill or a decode (% of one core), p95 latency, and the foreground probe's
p95 ratio (answering / baseline) with its baseline sample count.
"""

from __future__ import annotations

import sys

from sweep.correctness.tasks import load_tasks, stratified_subset
from sweep.measure.host import machine_cpus
from sweep.models.registry import Registry
from sweep.records import TrialConfig, TrialSettings
from sweep.trial.runner import run_trial


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    model = Registry().resolve("smollm2-135m", "Q4_1")
    settings = TrialSettings(prompts=9, idle_seconds=2, noise_retries=0)
    tasks = stratified_subset(load_tasks(), 9)
    print("n_threads_batch        active p99  peak   (% of machine)  prefill  decode  (% of one core)  p95 latency  N"
          "   probe p95 ratio (baseline N)")
    for _ in range(repeats):
        for batch, label in ((machine_cpus(), f"{machine_cpus()} (the default)"), (1, "1")):
            config = TrialConfig(model="smollm2-135m", quant="Q4_1", model_path=str(model.path), chat_format=None,
                                 n_threads=1, n_threads_batch=batch, n_batch=512, n_ubatch=512, n_ctx=1024,
                                 max_tokens=32)
            f = run_trial(config, settings, tasks).figures
            print(f"{label:22s} {f['cpu_active_p99_share_pct']:10.1f}  {f['cpu_active_peak_share_pct']:5.1f}"
                  f"                   {f.get('cpu_prefill_mean_core_pct', float('nan')):7.1f}  "
                  f"{f.get('cpu_decode_mean_core_pct', float('nan')):6.1f}                   "
                  f"{f['latency_p95_s']:9.2f} s  {f['n_windows_active']:.0f}   "
                  f"{f.get('fg_p95_ratio', float('nan')):.2f} ({f.get('n_fg_baseline', 0):.0f})")


if __name__ == "__main__":
    from sweep.hostlock import measurement_lock

    with measurement_lock("bench/threads_batch.py", on_wait=print):  # never beside another measurement
        main()
