"""The python and server backends side by side: ``python bench/backends.py [--rounds N] [--model NAME:QUANT]``.

On the demo's model (SmolLM2-135M Q4_1 by default), at 1 and 2 threads (pinned to the last CPUs),
interleaved round by round: a python-backend trial, a server-backend trial at llama.cpp's default
``--poll 50``, and one at ``--poll 0``. Prints active p99 CPU and idle CPU (% of the machine), p95
latency, decode rate and the foreground probe's p95 ratio, medians over the rounds. On an OpenMP
build (the bindings' default, and the tools', see ``sweep tools list``) ``--poll`` is expected to
change nothing: OpenMP's own wait policy decides.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Any

from sweep.correctness.tasks import load_tasks, stratified_subset
from sweep.measure.host import allowed_cpus
from sweep.records import TrialConfig, TrialSettings
from sweep.trial.runner import run_trial

import _harness

FIGURES = (("cpu_active_p99_share_pct", "active p99 %"), ("cpu_idle_share_pct", "idle %"),
           ("latency_p95_s", "p95 s"), ("decode_tps", "decode t/s"), ("fg_p95_ratio", "probe p95 ratio"))


def main(a: argparse.Namespace) -> dict[str, Any]:
    name, quant = a.model.split(":")
    settings = TrialSettings(prompts=a.prompts, idle_seconds=2.0, baseline_seconds=1.0, noise_retries=0)
    tasks = stratified_subset(load_tasks(), a.prompts)
    arms: dict[str, TrialConfig] = {}
    for threads in (1, 2):
        base = _harness.config(name, quant, n_threads=threads, cpus=tuple(allowed_cpus()[-threads:]))
        arms[f"python  t={threads}"] = base
        arms[f"server  t={threads}"] = TrialConfig.from_dict({**base.to_dict(), "backend": "server"})
        arms[f"server  t={threads} poll 0"] = TrialConfig.from_dict({**base.to_dict(), "backend": "server", "poll": 0})
    seen: dict[str, list[dict[str, float]]] = {k: [] for k in arms}
    for i in range(a.rounds):
        for label, config in arms.items():
            o = run_trial(config, settings, tasks)
            if not o.ok:
                print(f"round {i + 1} {label}: failed: {o.reason}: {o.detail[:200]}", file=sys.stderr)
                continue
            seen[label].append(o.figures)
            print(f"round {i + 1} {label}: " + ", ".join(f"{h} {o.figures.get(k, float('nan')):.3g}" for k, h in FIGURES),
                  file=sys.stderr)
    print(f"{name}:{quant}, {a.prompts} prompts x 32 tokens, {a.rounds} round(s), medians")
    print(f"{'arm':22s} " + "  ".join(f"{h:>15s}" for _, h in FIGURES))
    medians = {}
    for label, runs in seen.items():
        cells = [statistics.median(r[k] for r in runs if k in r) if any(k in r for r in runs) else float("nan")
                 for k, _ in FIGURES] if runs else [float("nan")] * len(FIGURES)
        print(f"{label:22s} " + "  ".join(f"{c:15.3g}" for c in cells))
        medians[label] = dict(zip((k for k, _ in FIGURES), cells))
    return {"model": f"{name}:{quant}", "prompts": a.prompts, "medians": medians, "runs": seen}


if __name__ == "__main__":
    ap = _harness.options(__doc__, rounds=3)
    ap.add_argument("--model", default="smollm2-135m:Q4_1")
    ap.add_argument("--prompts", type=int, default=6)
    _harness.run(main, ap)
