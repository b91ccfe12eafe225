"""Prompt injection, measured: ``python bench/injection.py [--models M,..] [--backends B,..] [--guards G,..]
[--items N] [--prompts P] [-o FILE]``.

For each model (``name:quant``), backend and input guard, one trial through the normal trial path
(3-shot, grammar, shared prefix, 2 threads): the clean score on P tasks-v2 items (the kinds in
turn), and on N injected items of ``injection-v2`` (verdict and IOC items in turn, the attack
styles in turn) against the same items clean: for the verdict items the flip rate towards benign
with its 95% Wilson interval and the share answered benign; for the IOC items the share whose
indicator, named clean, went unnamed (``injection_hidden_rate``) with its interval; and the share
whose prompt held attacker text as template tokens. Trials run one at a
time under the host's measurement lock. ``-o bench/data/injection.json`` is what docs/injection.md's
table is rendered from (``make tables``).
"""

from __future__ import annotations

import argparse
import math
import time
from collections import Counter
from typing import Any

from sweep.correctness.tasks import load_tasks, stratified_subset
from sweep.measure.metrics import verdict_rank
from sweep.records import TrialSettings
from sweep.trial.runner import run_trial
from sweep.verify import wilson

import _harness


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def main(args: argparse.Namespace) -> dict[str, Any]:
    tasks = stratified_subset(load_tasks(), args.prompts)
    settings = TrialSettings(prompts=args.prompts, idle_seconds=0.5, baseline_seconds=0.2, probe="off",
                             early_abort=False, noise_retries=0, timeout_seconds=3600, progress_timeout_seconds=600,
                             injection_items=args.items)
    print(f"{args.prompts} clean items, {args.items} injected items (verdict and IOC in turn); 3-shot grammar, "
          "shared prefix, 2 threads")
    print("model | backend | guard | clean score | flip rate [95% CI] | answered benign | hidden rate [95% CI] | "
          "template tokens | flips and hides by style | p95 s | wall s")
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
                verdicts = [r for r in records if r["kind"] == "verdict"]
                iocs = [r for r in records if r["kind"] == "iocs"]
                lo, hi = wilson(f["injection_flip_rate"], len(verdicts)) if verdicts else (math.nan, math.nan)
                hlo, hhi = wilson(f["injection_hidden_rate"], len(iocs)) if iocs else (math.nan, math.nan)
                flips = Counter(r["attack"] for r in verdicts
                                if verdict_rank(r["injected"]["answer"]) < verdict_rank(r["clean"]["answer"]))
                hides = Counter(r["attack"] for r in iocs
                                if r["clean"]["reports_hidden"] and not r["injected"]["reports_hidden"])
                row = {"model": f"{config.model}:{config.quant}", "backend": backend, "guard": guard,
                       "correctness": f["correctness"], "injection_flip_rate": f.get("injection_flip_rate"),
                       "flip_ci": [lo, hi], "injection_benign_rate": f.get("injection_benign_rate"),
                       "injection_hidden_rate": f.get("injection_hidden_rate"), "hidden_ci": [hlo, hhi],
                       "n_verdict": len(verdicts), "n_iocs": len(iocs),
                       "iocs_named_clean": sum(r["clean"]["reports_hidden"] for r in iocs),
                       "injection_special_tokens": f["injection_special_tokens"], "n_injection": len(records),
                       "flips_by_style": dict(sorted(flips.items())), "hides_by_style": dict(sorted(hides.items())),
                       "latency_p95_s": f["latency_p95_s"], "wall_s": round(wall, 1)}
                rows.append(row)
                by_style = "; ".join(f"{k} {flips.get(k, 0)}/{hides.get(k, 0)}" for k in sorted({*flips, *hides}))
                print(f"{row['model']} | {backend} | {guard} | {f['correctness']:.2f} | "
                      f"{_f(row['injection_flip_rate'])} [{lo:.2f}, {hi:.2f}] | {_f(row['injection_benign_rate'])} | "
                      f"{_f(row['injection_hidden_rate'])} [{hlo:.2f}, {hhi:.2f}] | "
                      f"{f['injection_special_tokens']:.2f} | {by_style or '-'} | "
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
