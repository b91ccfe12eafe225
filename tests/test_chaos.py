"""The chaos soak (``bench/chaos.py``) for three minutes: two orchestrators on a real PostgreSQL
server, real SmolLM2 trials, and every kind of fault once at least; nothing is lost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "chaos.py"


@pytest.mark.slow
def test_a_three_minute_chaos_soak_loses_nothing_and_leaves_nothing(postgres: str) -> None:
    run = subprocess.run([sys.executable, str(BENCH), "--minutes", "3", "--seed", "3", "--json"],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    r = json.loads(run.stdout.strip().splitlines()[-1])
    assert set(r["faults"]) == set(r["kinds"]), r["faults"]  # every kind of fault was injected
    assert r["recorded"] >= 5, r
    assert (r["lost"], r["measured_twice"], r["running_left"], r["stray_processes"], r["left_in_spool"]) == \
        (0, 0, 0, 0, 0), (r, run.stdout)
    assert r["problems"] == []
