"""Does a sweep trial measure what llama.cpp itself measures? ``python bench/parity.py [--rounds N] [--threads T]``.

Same model (SmolLM2-135M Q4_1), thread count and CPU (the last allowed one, pinned with taskset),
interleaved round by round:

- ``llama-bench -p 128 -n 32`` (built by ``sweep tools build`` from the bindings' llama.cpp):
  prefill (pp128) and decode (tg32) tokens per second, the reference;
- ``bare``: a bare llama-cpp-python loop in a fresh process, the same two measurements as
  llama-bench (128 prompt tokens in one ``eval``, then 32 single-token ``eval`` calls);
- ``python``: a sweep trial on the python backend (monitor and probe on);
- ``server``: a sweep trial on the server backend.

Prints the median of each rate as a ratio to llama-bench's, and the median load time of both
backends. A sweep trial's prefill rate is prompt tokens over time to first token of real chat
requests (shorter prompts than 128 tokens, with the template, the first sample and, for the server,
HTTP), so its pp ratio is a lower bound; its decode rate is streamed chunks over decode time.
The results: ``{"python": {"tg_ratio", "pp_ratio", "load_s"}, "server": {...}, "bare": {...},
"llama_bench": {...}, "runs": {...}}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from typing import Any

from sweep.correctness.tasks import load_tasks, stratified_subset
from sweep.measure.host import allowed_cpus
from sweep.models.tools import binary
from sweep.records import TrialConfig, TrialSettings
from sweep.trial.runner import run_trial

import _harness

BARE = r"""
import json, sys, time
cfg = json.loads(sys.stdin.read())
t0 = time.monotonic()
import llama_cpp
llm = llama_cpp.Llama(model_path=cfg["model_path"], n_threads=cfg["n_threads"], n_threads_batch=cfg["n_threads_batch"],
                      n_batch=cfg["n_batch"], n_ubatch=cfg["n_ubatch"], n_ctx=cfg["n_ctx"], verbose=False)
load_s = time.monotonic() - t0
tokens = llm.tokenize(b" the" * 200, add_bos=True)[:128]
llm.eval(tokens[:8]); llm.reset()  # warm-up, as llama-bench does
t = time.monotonic(); llm.eval(tokens); pp = 128 / (time.monotonic() - t)
t = time.monotonic()
for _ in range(32):
    llm.eval([tokens[-1]])
tg = 32 / (time.monotonic() - t)
print(json.dumps({"pp": pp, "tg": tg, "load_s": load_s}))
"""


def llama_bench(model: str, threads: int, cpu: int) -> dict[str, float]:
    out = subprocess.run(["taskset", "-c", str(cpu), str(binary("llama-bench")), "-m", model, "-t", str(threads),
                          "-p", "128", "-n", "32", "-r", "3", "-o", "json"], capture_output=True, text=True, check=True)
    rows = json.loads(out.stdout)
    pp = next(r["avg_ts"] for r in rows if r["n_prompt"] == 128 and r["n_gen"] == 0)
    tg = next(r["avg_ts"] for r in rows if r["n_gen"] == 32 and r["n_prompt"] == 0)
    return {"pp": pp, "tg": tg}


def main(a: argparse.Namespace) -> dict[str, Any]:
    cpus = tuple(allowed_cpus()[-a.threads:])
    base = _harness.config("smollm2-135m", "Q4_1", n_threads=a.threads, cpus=cpus)
    server = TrialConfig.from_dict({**base.to_dict(), "backend": "server"})
    settings = TrialSettings(prompts=6, idle_seconds=0.5, baseline_seconds=0.5, noise_retries=0)
    tasks = stratified_subset(load_tasks(), 6)
    taskset = ["taskset", "-c", ",".join(map(str, cpus))]
    runs: dict[str, list[dict[str, float]]] = {"bench": [], "bare": [], "python": [], "server": []}
    for i in range(a.rounds):
        runs["bench"].append(llama_bench(base.model_path, a.threads, cpus[-1]))
        out = subprocess.run([*taskset, sys.executable, "-c", BARE], input=json.dumps(base.to_dict()),
                             capture_output=True, text=True, check=True)
        runs["bare"].append(json.loads(out.stdout.strip().splitlines()[-1]))
        for arm, config in (("python", base), ("server", server)):
            o = run_trial(config, settings, tasks)
            if not o.ok:
                raise SystemExit(f"the {arm} trial failed: {o.reason}: {o.detail}")
            f = o.figures
            runs[arm].append({"pp": f["prefill_tps"], "tg": f["decode_tps"], "load_s": f["load_s"],
                              **({"server_tg": f["server_decode_tps"], "server_pp": f["server_prefill_tps"]}
                                 if arm == "server" else {})})
        print(f"round {i + 1}: " + "; ".join(f"{k} pp {v[-1]['pp']:.0f} tg {v[-1]['tg']:.0f}" for k, v in runs.items()),
              file=sys.stderr)

    def med(arm: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[arm])

    ref_pp, ref_tg = med("bench", "pp"), med("bench", "tg")
    result = {arm: {"tg_ratio": round(med(arm, "tg") / ref_tg, 3), "pp_ratio": round(med(arm, "pp") / ref_pp, 3),
                    "load_s": round(med(arm, "load_s"), 3)} for arm in ("python", "server", "bare")}
    result["server"]["server_tg_ratio"] = round(med("server", "server_tg") / ref_tg, 3)
    result["server"]["server_pp_ratio"] = round(med("server", "server_pp") / ref_pp, 3)
    result["llama_bench"] = {"pp128_tps": round(ref_pp, 1), "tg32_tps": round(ref_tg, 1)}
    print(f"SmolLM2-135M Q4_1, {a.threads} thread(s) on CPU {','.join(map(str, cpus))}, {a.rounds} round(s), medians; "
          f"llama-bench pp128 {ref_pp:.1f} t/s, tg32 {ref_tg:.1f} t/s")
    print("arm      tg ratio  pp ratio  load s")
    for arm in ("bare", "python", "server"):
        r = result[arm]
        print(f"{arm:8s} {r['tg_ratio']:8.3f}  {r['pp_ratio']:8.3f}  {r['load_s']:6.2f}")
    print(f"server's own timings: tg ratio {result['server']['server_tg_ratio']:.3f}, "
          f"pp ratio {result['server']['server_pp_ratio']:.3f}")
    return {**result, "runs": runs}


if __name__ == "__main__":
    ap = _harness.options(__doc__, rounds=3)
    ap.add_argument("--threads", type=int, default=1)
    _harness.run(main, ap)
