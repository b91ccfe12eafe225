"""Prefix caching, honestly: ``python bench/prefix_cache.py [ITEMS] [MODEL] [BACKEND]``.

1. Why the worker calls reset() before each prompt: the same prompt to SmolLM2 three ways,
   2 threads: the first call, a repeat without reset() (a KV-cache prefix hit on the whole prompt)
   and a repeat after reset() (a real request).
2. ``prefix_cache: off`` against ``shared`` on MODEL (``name[:quant]``, default the 1.5B model at
   Q4_K_M), 3-shot grammar prompts, ITEMS items (default 10, the kinds in turn), 2 threads, through
   the normal trial path: p95 latency, load time (which includes preparing the shared prefixes), the prompt and
   prefilled tokens llama.cpp reports, and whether both gave the same answers. BACKEND is
   ``python`` (default) or ``server`` (llama-server's slots; ``sweep tools build`` first).
   A split prefill (the prefix, then the rest) can round differently from a whole one, so an item
   whose top answers are nearly tied can flip; the line says how many answers agree.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from typing import Any

import llama_cpp

from sweep.correctness.prompts import request_for
from sweep.correctness.tasks import load_tasks, stratified_subset
from sweep.measure.metrics import percentile
from sweep.models.registry import Registry
from sweep.records import TrialSettings
from sweep.trial.runner import run_trial

import _harness


def main(args: argparse.Namespace) -> dict[str, Any]:
    model = Registry().resolve("smollm2-135m", "Q4_1")
    llm = llama_cpp.Llama(model_path=str(model.path), n_threads=2, n_threads_batch=2, n_ctx=1024, verbose=False)
    messages = request_for(load_tasks()[0])["messages"]

    def ask() -> float:
        t0 = time.perf_counter()
        llm.create_chat_completion(messages=messages, max_tokens=8, temperature=0.0)
        return time.perf_counter() - t0

    first = ask()
    repeat = ask()
    llm.reset()
    after_reset = ask()
    print(f"first call {first:.3f} s | repeat without reset() {repeat:.3f} s | repeat after reset() {after_reset:.3f} s")
    del llm
    results: dict[str, Any] = {"reset": {"first_s": first, "repeat_s": repeat, "after_reset_s": after_reset}}

    items, backend = args.items, args.backend
    name, _, quant = args.model.partition(":")
    base = _harness.config(name, quant, n_threads=2, n_ctx=2048, shots=3, output="grammar", backend=backend)
    tasks = stratified_subset(load_tasks(), items)
    settings = TrialSettings(prompts=items, idle_seconds=0.5, baseline_seconds=0.2, probe=False, early_abort=False,
                             noise_retries=0, timeout_seconds=1800, progress_timeout_seconds=600)
    print(f"\n{base.model}:{base.quant}, {items} items, 3-shot grammar, max_tokens 32, 2 threads, {backend} backend")
    print("prefix_cache  p95 s   p50 s   load s  prompt tokens (mean)  prefilled tokens (mean)")
    answers = {}
    results.update(model=f"{base.model}:{base.quant}", items=items, backend=backend, modes={})
    for mode in ("off", "shared"):
        out = run_trial(replace(base, prefix_cache=mode), settings, tasks)
        if not out.ok:
            sys.exit(f"{mode}: {out.reason}: {out.detail}")
        lat = [a["latency_s"] for a in out.answers]
        answers[mode] = [a["answer"] for a in out.answers]
        mean = lambda k: sum(a[k] for a in out.answers) / len(out.answers)  # noqa: E731
        m = results["modes"][mode] = {"p95_s": percentile(lat, 95), "p50_s": percentile(lat, 50),
                                      "load_s": out.figures["load_s"], "prompt_tokens_mean": mean("prompt_tokens"),
                                      "prefill_tokens_mean": mean("prefill_tokens")}
        print(f"{mode:12s}  {m['p95_s']:5.2f}  {m['p50_s']:6.2f}  {m['load_s']:6.2f}  "
              f"{m['prompt_tokens_mean']:20.0f}  {m['prefill_tokens_mean']:23.0f}")
    same = answers["off"] == answers["shared"]
    results["same_answers"] = sum(a == b for a, b in zip(*answers.values()))
    print(f"same answers with both: {'yes' if same else 'NO'} ({results['same_answers']}/{items})")
    return results


if __name__ == "__main__":
    ap = _harness.options(__doc__)
    ap.add_argument("items", nargs="?", type=int, default=10, help="items [10]")
    ap.add_argument("model", nargs="?", default="qwen2.5-coder-1.5b:Q4_K_M", help="name[:quant] [%(default)s]")
    ap.add_argument("backend", nargs="?", default="python", choices=["python", "server"], metavar="BACKEND",
                    help="python or server [python]")
    _harness.run(main, ap)
