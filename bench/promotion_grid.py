"""Record the grid that bench/promotion.py replays: every configuration answers every item once.

    .venv/bin/python bench/promotion_grid.py [--items 246] [--models smollm2-135m:Q4_1,qwen2.5-coder-1.5b:Q4_K_M]
        [--shots 0,3] [--threads 1,2] [--outputs grammar] -o bench/data/promotion_grid.json

Each configuration (a model, its worked examples, its output form and its threads; prefix cache
shared, 32 tokens) runs as one real trial through ``run_trial`` on the task set's first ``--items``
items of the stratified order (all 246 by default): the items a trial on fewer answers are the
first of them, as ``stratified_subset`` gives them. Kept per configuration: each item's id, kind,
score and latency, and the trial's load time, CPU figures and wall time, so the replay can cost a
trial on any number of items in seconds and score any sample of it.
"""

from __future__ import annotations

import argparse
from typing import Any

from sweep.correctness.tasks import load_tasks, stratified_subset
from sweep.records import TrialSettings
from sweep.trial.runner import run_trial

import _harness

SETTINGS = dict(idle_seconds=1.0, baseline_seconds=0.5, probe="interactive", early_abort=False, noise_retries=1,
                timeout_seconds=3600, progress_timeout_seconds=600)


def main(args: argparse.Namespace) -> dict[str, Any]:
    tasks = stratified_subset(load_tasks(), args.items)
    settings = TrialSettings(prompts=len(tasks), **SETTINGS)  # type: ignore[arg-type]
    configs = []
    for spec in args.models.split(","):
        name, _, quant = spec.partition(":")
        for shots in map(int, args.shots.split(",")):
            for output in args.outputs.split(","):
                for threads in map(int, args.threads.split(",")):
                    configs.append(_harness.config(name, quant, n_threads=threads, n_threads_batch=threads,
                                                   cpus=tuple(range(threads)), shots=shots, output=output,
                                                   prefix_cache="shared"))
    rows = []
    for i, c in enumerate(configs):
        label = f"{c.model}:{c.quant} {c.shots}-shot {c.output} t={c.n_threads}"
        out = run_trial(c, settings, tasks)
        row = {"label": label, "config": c.to_dict(), "ok": out.ok, "reason": out.reason,
               "wall_s": round(out.wall_seconds, 2),
               "figures": {k: v for k, v in out.figures.items() if isinstance(v, (int, float))},
               "items": [{"id": a["id"], "kind": a["kind"], "score": a["score"], "latency_s": round(a["latency_s"], 4)}
                         for a in out.answers]}
        rows.append(row)
        if out.ok:
            print(f"[{i + 1}/{len(configs)}] {label}: correctness {out.figures['correctness']:.3f} on {len(out.answers)} "
                  f"items, p95 {out.figures['latency_p95_s']:.2f} s, CPU p99 {out.figures['cpu_active_p99_share_pct']:.1f}%"
                  f", {out.wall_seconds:.0f} s", flush=True)
        else:
            print(f"[{i + 1}/{len(configs)}] {label}: FAILED ({out.reason}: {out.detail[:200]})", flush=True)
    return {"items": len(tasks), "settings": settings.to_dict(), "rows": rows}


if __name__ == "__main__":
    ap = _harness.options(__doc__)
    ap.add_argument("--items", type=int, default=246, help="items each configuration answers [246: every one]")
    ap.add_argument("--models", default="smollm2-135m:Q4_1,qwen2.5-coder-1.5b:Q4_K_M")
    ap.add_argument("--shots", default="0,3")
    ap.add_argument("--outputs", default="grammar")
    ap.add_argument("--threads", default="1,2")
    _harness.run(main, ap)
