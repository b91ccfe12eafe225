"""Correctness by kind for the bundled models under each prompt strategy, and a constant-answer baseline.

Usage: .venv/bin/python bench/correctness_table.py [MAX_TOKENS] [--models NAME:QUANT,...]
       [--strategies 0-grammar,3-free,3-grammar+regex+catalog5,...] [--prefix-cache off|shared]
       [--tasks SET] [--kinds iocs,...]

A strategy is SHOTS-OUTPUT, then optionally ``+regex`` (``ioc_hints: regex``) and ``+catalogK``
(``context: attack-catalog``, ``context_k: K``).

Defaults: SmolLM2 and Gemma, six strategies (0 and 3 shots x free, grammar, json), no prefix
cache, the default task set. A shared prefix gives the same answers (bench/prefix_cache.py) and
makes 3-shot runs of a large model several times faster.

Every model answers every item of the bundled task set once per strategy
(temperature 0, so a second run would answer alike), through the real worker.
Each cell is the mean score with its 95% Wilson interval over the items. Two rows need no
model: the best constant answer per kind (chosen knowing the answers), and for IOCs a plain
regex over the log line, which is what a model must beat to be worth running there.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from sweep.correctness.tasks import best_constants, ioc_candidates, load_tasks, score
from sweep.records import TrialSettings
from sweep.trial.runner import run_trial
from sweep.verify import correctness_summary, item_scores, mean_interval

import _harness

MODELS = [("smollm2-135m", "Q4_1"), ("gemma3-270m", "Q4_K_M")]
STRATEGIES = [(0, "free"), (3, "free"), (0, "grammar"), (3, "grammar"), (0, "json"), (3, "json")]


def cell(m: dict) -> str:
    """A mean_interval / correctness_summary entry as "mean [low, high]"."""
    return f"{m['mean']:.2f} [{m['ci'][0]:.2f}, {m['ci'][1]:.2f}]"


def _strategy(text: str) -> tuple[str, dict]:
    """``3-grammar+regex+catalog5`` as a label and the knobs it sets."""
    base, *extras = text.split("+")
    shots, output = base.split("-")
    knobs: dict = {"shots": int(shots), "output": output}
    label = f"{shots}-shot {output}"
    for extra in extras:
        if extra == "regex":
            knobs["ioc_hints"], label = "regex", label + ", ioc_hints regex"
        elif extra.startswith("catalog"):
            knobs.update(context="attack-catalog", context_k=int(extra.removeprefix("catalog") or 5))
            label += f", attack-catalog k={knobs['context_k']}"
        else:
            raise SystemExit(f"unknown strategy part {extra!r} in {text!r}")
    return label, knobs


def main(args: argparse.Namespace) -> dict[str, Any]:
    max_tokens = args.max_tokens
    models = [tuple(m.split(":")) for m in args.models.split(",")]
    strategies = [_strategy(x) for x in args.strategies.split(",")]
    tasks = load_tasks(args.tasks)
    if args.kinds:
        tasks = [t for t in tasks if t.kind in args.kinds.split(",")]
    kinds = sorted({t.kind for t in tasks})
    counts = {k: sum(t.kind == k for t in tasks) for k in kinds}
    settings = TrialSettings(prompts=len(tasks), idle_seconds=0, baseline_seconds=0.2, probe=False, early_abort=False,
                             noise_retries=0, timeout_seconds=3600, progress_timeout_seconds=300)
    print(f"{len(tasks)} items (" + ", ".join(f"{k} {n}" for k, n in counts.items()) + f"), max_tokens={max_tokens}, "
          f"n_threads=2, temperature 0, prefix_cache {args.prefix_cache}, one run each; cells: mean [95% Wilson CI]")
    header = ["model", "strategy", *kinds, "all", "parse failures", "latency p95 s"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    rows: list[dict[str, Any]] = []
    for name, quant in models:
        for strategy, knobs in strategies:
            config = _harness.config(name, quant, n_threads=2, n_ctx=2048, max_tokens=max_tokens,
                                     prefix_cache=args.prefix_cache, **knobs)
            t0 = time.monotonic()
            outcome = run_trial(config, settings, tasks)
            if not outcome.ok:
                print(f"| {name}:{quant} | {strategy} | FAILED: {outcome.reason}: {outcome.detail[:80]} |")
                rows.append({"model": f"{name}:{quant}", "strategy": strategy, "ok": False, "reason": outcome.reason})
                continue
            s = correctness_summary(item_scores([outcome]))
            rows.append({"model": f"{name}:{quant}", "strategy": strategy, "ok": True, **s,
                         "parse_failures": outcome.figures["parse_failures"],
                         "latency_p95_s": outcome.figures["latency_p95_s"], "wall_s": round(time.monotonic() - t0, 1)})
            row = [cell(s["by_kind"][k]) for k in kinds]
            print(f"| {name}:{quant} | {strategy} | " + " | ".join(row) + f" | {cell(s['all'])} | "
                  f"{outcome.figures['parse_failures']:.0f} | {outcome.figures['latency_p95_s']:.2f} |", flush=True)
            print(f"  ({time.monotonic() - t0:.0f} s)", file=sys.stderr)
    constants = best_constants(tasks)
    best = {k: {"answer": constants[k][0], **mean_interval(constants[k][1])} for k in kinds}
    baselines: dict[str, Any] = {"best_constant": best,
                                 "best_constant_all": mean_interval([s for k in kinds for s in constants[k][1]])}
    row = [cell(b) + f" ({b['answer']!r})" for b in best.values()]
    print("| best constant answer | - | " + " | ".join(row) + f" | {cell(baselines['best_constant_all'])} | - | - |")
    # No model at all for IOCs: every IP, domain, hash and path the regex finds in the log line.
    if "iocs" in kinds:
        iocs = mean_interval([score(t, "\n".join(ioc_candidates(t.input))).value for t in tasks if t.kind == "iocs"])
        print("| regex over the log line (no model) | - | " + " | ".join(
            cell(iocs) if k == "iocs" else "-" for k in kinds) + " | - | - | - |")
        baselines["iocs_regex"] = iocs
    # No model at all for ATT&CK: the catalog's best match (BM25), as the retrieval alone would answer.
    if "attack" in kinds:
        from sweep.correctness.catalog import retrieve

        top = mean_interval([score(t, (retrieve(t.input, 1) or [{"id": ""}])[0]["id"]).value
                             for t in tasks if t.kind == "attack"])
        print("| the catalog's first match (no model) | - | " + " | ".join(
            cell(top) if k == "attack" else "-" for k in kinds) + " | - | - | - |")
        baselines["attack_catalog_first"] = top
    return {"items": counts, "max_tokens": max_tokens, "prefix_cache": args.prefix_cache, "rows": rows,
            "baselines": baselines}


if __name__ == "__main__":
    ap = _harness.options(__doc__)
    ap.add_argument("max_tokens", nargs="?", type=int, default=64)
    ap.add_argument("--models", default=",".join(f"{n}:{q}" for n, q in MODELS))
    ap.add_argument("--strategies", default=",".join(f"{k}-{o}" for k, o in STRATEGIES))
    ap.add_argument("--prefix-cache", default="off", choices=["off", "shared"])
    ap.add_argument("--tasks", default=None)
    ap.add_argument("--kinds", default=None, help="only the items of these kinds")
    _harness.run(main, ap)
