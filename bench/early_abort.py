"""Sweep time saved by early abort: ``python bench/early_abort.py [TRIALS]``.

The same seeded sweep twice, with early abort on and off, over a space in which
slow decode caps (pace_tps) push many configurations far over the p95 latency
budget, as large models do on a laptop in endpoint-security.yaml. Prints each
run's wall time, how many trials were over the latency budget, and the saving.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPACE = """\
version: 1
name: abort-bench
models:
  smollm2-135m: [Q4_1]
params:
  pace_tps: [null, 8, 4]
  n_threads: {{low: 1, high: all}}
fixed: {{n_threads_batch: 1, n_ctx: 1024, max_tokens: 32}}
trial: {{prompts: 12, idle_seconds: 1, baseline_seconds: 0.5, timeout_seconds: 600, noise_retries: 0,
        early_abort: {early_abort}}}
sampler: {{name: random, seed: 11}}
"""


def run(early_abort: bool, trials: int) -> tuple[float, int, int]:
    with tempfile.TemporaryDirectory() as tmp:
        space = Path(tmp, "s.yaml")
        space.write_text(SPACE.format(early_abort=str(early_abort).lower()))
        db = Path(tmp, "studies.db")
        env = {**os.environ, "SWEEP_STORAGE": f"sqlite:///{db}"}
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-m", "sweep", "run", str(space), "--trials", str(trials), "--quiet"],
                       env=env, check=True, capture_output=True)
        wall = time.monotonic() - t0
        with sqlite3.connect(db) as conn:
            attrs = conn.execute("SELECT a.key, a.value_json FROM trial_user_attributes a").fetchall()
        over = sum(1 for k, v in attrs if k == "violations" and "latency_p95_s" in json.loads(v))
        aborted = sum(1 for k, v in attrs if k == "early_abort" and json.loads(v) == 1)
        return wall, over, aborted


def main() -> None:
    trials = int(sys.argv[1]) if len(sys.argv) > 1 else 6
    off = run(False, trials)
    on = run(True, trials)
    print(f"{trials} trials, 12 prompts each, latency p95 budget 2.5 s")
    print(f"early abort off: {off[0]:.0f} s, {off[1]} trials over the latency budget")
    print(f"early abort on:  {on[0]:.0f} s, {on[1]} trials over the latency budget, {on[2]} stopped early")
    print(f"saved: {off[0] - on[0]:.0f} s ({100 * (off[0] - on[0]) / off[0]:.0f}% of the sweep)")


if __name__ == "__main__":
    main()
