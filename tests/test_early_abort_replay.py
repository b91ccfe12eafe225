"""bench/early_abort.py --table: the saving early abort would have made, replayed on a table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def test_the_saving_is_the_time_after_the_deciding_answer(tmp_path: Path) -> None:
    # Six answers, a 2.5 s budget: the second 3 s answer proves the p95 over budget (6 - floor(0.95 * 5)
    # = 2 answers needed). Answering took 10.6 s for 10 s of answers: 0.1 s between each. Stopping
    # after the second answer saves 10.6 - (3 + 3 + 2 x 0.1) = 4.4 s of the trial's 20 s.
    slow = {"number": 0, "ok": True, "reused_from": None, "figures": {}, "wall_seconds": 20.0,
            "latencies_s": [3, 3, 1, 1, 1, 1], "phases_s": {"active": 2.0, "done": 12.6}}
    quick = {**slow, "number": 1, "latencies_s": [1, 1, 1, 1, 1, 1], "phases_s": {"active": 2.0, "done": 8.0}}
    table = {"format": "sweep-table", "version": 1, "rows": [slow, quick],
             "meta": {"settings": {"prompts": 6}, "budgets": {"latency_p95_s": {"max": 2.5}}, "wall_seconds": 50}}
    path = tmp_path / "t.json"
    path.write_text(json.dumps(table))
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "early_abort.py"), "--table", str(path),
                           "--latency-budget", "0.5"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "2 trials" in lines[0] and "40 s of trial wall time" in lines[0]
    assert "budget 2.5 s (the table's): early abort would stop 1 of 2 trials; saved: 4 s (11%" in lines[1]
    # At 0.5 s every answer is over: both stop after their second answer, the quick one saving 6 - 2 = 4 s.
    assert "budget 0.5 s (what if): early abort would stop 2 of 2 trials; saved: 8 s (21%" in lines[2]  # 8.4 / 40
