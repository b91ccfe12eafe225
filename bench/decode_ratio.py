"""Does monitoring slow what it measures? ``python bench/decode_ratio.py [--rounds N]``.

In one run, interleaved round by round, all pinned to the same CPU: a bare
llama-cpp-python loop in a fresh process (no monitor, no probe, same model,
threads, batch, prompts and streaming as the worker); a sweep trial with the
monitor only; and a sweep trial with the monitor and the foreground probe (a
deliberate ~4%-of-a-core competing load). Prints decode tokens per second and
the ratio of medians to the bare loop. Target for the monitor: >= 0.97.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from dataclasses import replace
from typing import Any

from sweep.correctness.prompts import request_for
from sweep.correctness.tasks import load_tasks
from sweep.measure.host import allowed_cpus
from sweep.records import TrialSettings
from sweep.trial.runner import run_trial

import _harness

BARE = r"""
import json, sys, time, llama_cpp
cfg, prompts = json.loads(sys.stdin.read())
llm = llama_cpp.Llama(model_path=cfg["model_path"], n_threads=cfg["n_threads"], n_threads_batch=cfg["n_threads_batch"],
                      n_batch=cfg["n_batch"], n_ubatch=cfg["n_ubatch"], n_ctx=cfg["n_ctx"], verbose=False)
tokens = 0; decode_s = 0.0
for messages in prompts:
    llm.reset()
    first = last = None; n = 0
    for chunk in llm.create_chat_completion(messages=messages, max_tokens=cfg["max_tokens"], temperature=0.0, stream=True):
        if chunk["choices"][0]["delta"].get("content"):
            now = time.monotonic(); first = first or now; last = now; n += 1
    if first:
        tokens += n - 1; decode_s += last - first
print(json.dumps(tokens / decode_s))
"""


def main(args: argparse.Namespace) -> dict[str, Any]:
    cpu = allowed_cpus()[-1]
    config = _harness.config("smollm2-135m", "Q4_1", max_tokens=64, cpus=(cpu,))
    tasks = [t for t in load_tasks() if t.kind == "iocs"][:6]  # long answers: mostly decode
    settings = TrialSettings(prompts=len(tasks), idle_seconds=0.5, baseline_seconds=0.5, noise_retries=0)
    job = json.dumps([config.to_dict(), [request_for(t)["messages"] for t in tasks]])
    arms: dict[str, list[float]] = {"bare": [], "monitor": [], "monitor+probe": []}
    for i in range(args.rounds):
        out = subprocess.run(["taskset", "-c", str(cpu), sys.executable, "-c", BARE], input=job, capture_output=True,
                             text=True, check=True)
        arms["bare"].append(float(out.stdout.strip().splitlines()[-1]))
        arms["monitor"].append(run_trial(config, replace(settings, probe=False), tasks).figures["decode_tps"])
        arms["monitor+probe"].append(run_trial(config, settings, tasks).figures["decode_tps"])
        print(f"round {i + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in arms.items()) + " tok/s")
    medians = {k: statistics.median(v) for k, v in arms.items()}
    print(f"medians (tok/s, pinned to CPU {cpu}, n_threads=1, 6 prompts x 64 tokens, SmolLM2-135M Q4_1): "
          + ", ".join(f"{k} {m:.1f} (ratio {m / medians['bare']:.3f})" for k, m in medians.items()))
    return {"cpu": cpu, "decode_tps": arms, "medians": medians,
            "ratios": {k: m / medians["bare"] for k, m in medians.items()}}


if __name__ == "__main__":
    _harness.run(main, _harness.options(__doc__, rounds=5))
