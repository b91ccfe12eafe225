"""Time each fault costs a sweep: ``python bench/fault_cost.py``.

Runs a two-trial sweep per fault (the first trial faults, the second is real) and
prints the wall time of the failed trial beside the real one.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import _harness

SPACE = """\
version: 1
name: faults
models:
  smollm2-135m: [Q4_1]
fixed: {n_threads: 1, n_threads_batch: 1, n_ctx: 512, max_tokens: 16}
trial: {prompts: 3, idle_seconds: 0.5, baseline_seconds: 0.2, timeout_seconds: 120,
        progress_timeout_seconds: 5, memory_limit_gb: 1.0, noise_retries: 0}
sampler: {name: random, seed: 3}
"""


def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    print("fault      reason          failed trial (s)  next real trial (s)")
    rows = []
    for mode in ("segfault", "abort", "hang", "garbage", "memory"):
        with tempfile.TemporaryDirectory() as tmp:
            space = Path(tmp, "s.yaml")
            space.write_text(SPACE)
            db = Path(tmp, "studies.db")
            env = {**os.environ, "SWEEP_STORAGE": f"sqlite:///{db}", "SWEEP_TEST_FAULT": f"{mode}:{tmp}/flag"}
            subprocess.run([sys.executable, "-m", "sweep", "run", str(space), "--trials", "2", "--quiet"],
                           env=env, check=True, capture_output=True)
            with sqlite3.connect(db) as conn:
                attrs = dict(((n, k), json.loads(v)) for n, k, v in conn.execute(
                    "SELECT t.number, a.key, a.value_json FROM trials t JOIN trial_user_attributes a "
                    "ON a.trial_id = t.trial_id WHERE a.key IN ('wall_seconds', 'fail_reason')"))
            print(f"{mode:9s}  {attrs[(0, 'fail_reason')]:14s}  {attrs[(0, 'wall_seconds')]:16.1f}  "
                  f"{attrs[(1, 'wall_seconds')]:19.1f}")
            rows.append({"fault": mode, "reason": attrs[(0, "fail_reason")],
                         "failed_trial_s": attrs[(0, "wall_seconds")], "next_trial_s": attrs[(1, "wall_seconds")]})
    return rows


if __name__ == "__main__":
    _harness.run(main, _harness.options(__doc__), lock=False)  # each ``sweep run`` it starts takes the lock itself
