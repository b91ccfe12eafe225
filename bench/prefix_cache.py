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

import sys
import time

import llama_cpp

from sweep.correctness.prompts import request_for
from sweep.correctness.tasks import load_tasks, stratified_subset
from sweep.measure.metrics import percentile
from sweep.models.registry import Registry
from sweep.records import TrialConfig, TrialSettings
from sweep.trial.runner import run_trial


def main() -> None:
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

    items = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    name, _, quant = (sys.argv[2] if len(sys.argv) > 2 else "qwen2.5-coder-1.5b:Q4_K_M").partition(":")
    backend = sys.argv[3] if len(sys.argv) > 3 else "python"
    mf = Registry().resolve(name, quant or Registry().quants(name)[0])
    tasks = stratified_subset(load_tasks(), items)
    settings = TrialSettings(prompts=items, idle_seconds=0.5, baseline_seconds=0.2, probe=False, early_abort=False,
                             noise_retries=0, timeout_seconds=1800, progress_timeout_seconds=600)
    print(f"\n{mf.name}:{mf.quant}, {items} items, 3-shot grammar, max_tokens 32, 2 threads, {backend} backend")
    print("prefix_cache  p95 s   p50 s   load s  prompt tokens (mean)  prefilled tokens (mean)")
    answers = {}
    for mode in ("off", "shared"):
        config = TrialConfig(model=mf.name, quant=mf.quant, model_path=str(mf.path), chat_format=mf.chat_format,
                             n_threads=2, n_threads_batch=2, n_batch=512, n_ubatch=512, n_ctx=2048, max_tokens=32,
                             shots=3, output="grammar", prefix_cache=mode, backend=backend)
        out = run_trial(config, settings, tasks)
        if not out.ok:
            sys.exit(f"{mode}: {out.reason}: {out.detail}")
        lat = [a["latency_s"] for a in out.answers]
        answers[mode] = [a["answer"] for a in out.answers]
        mean = lambda k: sum(a[k] for a in out.answers) / len(out.answers)  # noqa: E731
        print(f"{mode:12s}  {percentile(lat, 95):5.2f}  {percentile(lat, 50):6.2f}  {out.figures['load_s']:6.2f}  "
              f"{mean('prompt_tokens'):20.0f}  {mean('prefill_tokens'):23.0f}")
    same = answers["off"] == answers["shared"]
    print(f"same answers with both: {'yes' if same else 'NO'} ({sum(a == b for a, b in zip(*answers.values()))}/{items})")


if __name__ == "__main__":
    from sweep.hostlock import measurement_lock

    with measurement_lock("bench/prefix_cache.py", on_wait=print):  # never beside another measurement
        main()
