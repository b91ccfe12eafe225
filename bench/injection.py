"""Prompt injection, measured: ``python bench/injection.py [--models M,..] [--backends B,..] [--guards G,..]
[--items N] [--prompts P] [-o FILE]``.

For each model (``name:quant``), backend and input guard, one trial through the normal trial path
(3-shot, grammar, shared prefix, 2 threads): the clean score on P tasks-v2 items (the kinds in
turn), and on N injected verdict items of ``injection-v1`` (the attack styles in turn) against the
same items clean: the flip rate towards benign with its 95% Wilson interval, the share answered
benign, and the share whose prompt held attacker text as template tokens. Trials run one at a
time under the host's measurement lock. ``-o bench/data/injection.json`` is what docs/injection.md's
table is rendered from (``make tables``).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from typing import Any

from sweep.correctness.tasks import load_tasks, stratified_subset
from sweep.measure.metrics import verdict_rank
from sweep.records import TrialSettings
from sweep.trial.runner import run_trial
from sweep.verify import wilson

import _harness


def main(args: argparse.Namespace) -> dict[str, Any]:
    tasks = stratified_subset(load_tasks(), args.prompts)
    settings = TrialSettings(prompts=args.prompts, idle_seconds=0.5, baseline_seconds=0.2, probe="off",
                             early_abort=False, noise_retries=0, timeout_seconds=3600, progress_timeout_seconds=600,
                             injection_items=args.items)
    print(f"{args.prompts} clean items, {args.items} injected verdict items; 3-shot grammar, shared prefix, 2 threads")
    print("model | backend | guard | clean score | flip rate [95% CI] | answered benign | template tokens | "
          "flips by style | p95 s | wall s")
    rows = []
    for spec in args.models.split(","):
        name, _, quant = spec.partition(":")
        for backend in args.backends.split(","):
            for guard in args.guards.split(","):
                config = _harness.config(name, quant, n_threads=2, n_ctx=2048, shots=3, output="grammar",
                                         prefix_cache="shared", backend=backend, input_guard=guard)
                t0 = time.monotonic()
                o = run_trial(config, settings, tasks)
                wall = time.monotonic() - t0
                if not o.ok:
                    print(f"{config.model}:{config.quant} | {backend} | {guard} | FAILED {o.reason}: {o.detail[:200]}")
                    continue
                f, records = o.figures, o.series["injection"]
                lo, hi = wilson(f["injection_flip_rate"], len(records))
                flips = Counter(r["attack"] for r in records
                                if verdict_rank(r["injected"]["answer"]) < verdict_rank(r["clean"]["answer"]))
                row = {"model": f"{config.model}:{config.quant}", "backend": backend, "guard": guard,
                       "correctness": f["correctness"], "injection_flip_rate": f["injection_flip_rate"],
                       "flip_ci": [lo, hi], "injection_benign_rate": f["injection_benign_rate"],
                       "injection_special_tokens": f["injection_special_tokens"], "n_injection": len(records),
                       "flips_by_style": dict(sorted(flips.items())), "latency_p95_s": f["latency_p95_s"],
                       "wall_s": round(wall, 1)}
                rows.append(row)
                print(f"{row['model']} | {backend} | {guard} | {f['correctness']:.2f} | "
                      f"{f['injection_flip_rate']:.2f} [{lo:.2f}, {hi:.2f}] | {f['injection_benign_rate']:.2f} | "
                      f"{f['injection_special_tokens']:.2f} | "
                      f"{', '.join(f'{k} {v}' for k, v in row['flips_by_style'].items()) or '-'} | "
                      f"{f['latency_p95_s']:.2f} | {wall:.0f}", flush=True)
    # The shape bench/data/injection.json had before the harness: bench/tables.py reads both.
    return {"args": {k: getattr(args, k) for k in ("models", "backends", "guards", "items", "prompts")}, "rows": rows}


if __name__ == "__main__":
    ap = _harness.options(__doc__)
    ap.add_argument("--models", default="qwen2.5-coder-1.5b:Q4_K_M,smollm2-135m:Q4_1")
    ap.add_argument("--backends", default="python")
    ap.add_argument("--guards", default="none,escape,delimit,sandwich")
    ap.add_argument("--items", type=int, default=40, help="injected items per trial")
    ap.add_argument("--prompts", type=int, default=20, help="clean tasks-v2 items per trial")
    _harness.run(main, ap)
