"""Why the worker calls reset() before each prompt: ``python bench/prefix_cache.py``.

The same prompt to SmolLM2 three ways, 2 threads: the first call, a repeat
without reset() (a KV-cache prefix hit) and a repeat after reset() (a real
request). Prints each latency.
"""

from __future__ import annotations

import time

import llama_cpp

from sweep.models import Registry
from sweep.prompts import request_for
from sweep.tasks import load_tasks


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


if __name__ == "__main__":
    from sweep.hostlock import measurement_lock

    with measurement_lock("bench/prefix_cache.py", on_wait=print):  # never beside another measurement
        main()
