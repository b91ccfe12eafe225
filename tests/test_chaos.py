"""The chaos soak (``bench/chaos.py``) for three minutes: two orchestrators on a real PostgreSQL
server, real SmolLM2 trials, and every kind of fault once at least; nothing is lost. And, without
running it, how it counts what was measured twice, and its command line."""

from __future__ import annotations

import datetime
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "chaos.py"


@pytest.mark.slow
@pytest.mark.soak
def test_a_three_minute_chaos_soak_loses_nothing_and_leaves_nothing(postgres: str) -> None:
    # A 30 s outage is still past the 8 s grace by far; the 20-minute soaks on record hold it for 90 s.
    run = subprocess.run([sys.executable, str(BENCH), "--minutes", "3", "--seed", "3", "--outage", "30", "--json"],
                         capture_output=True, text=True, timeout=1200)  # two long outages in the first deck
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    r = json.loads(run.stdout.strip().splitlines()[-1])
    assert set(r["faults"]) == set(r["kinds"]), r["faults"]  # every kind of fault was injected
    assert r["recorded"] >= 5, r
    assert (r["lost"], r["measured_twice"], r["running_left"], r["stray_processes"], r["left_in_spool"]) == \
        (0, 0, 0, 0, 0), (r, run.stdout)
    assert r["problems"] == []


def _chaos() -> ModuleType:
    spec = importlib.util.spec_from_file_location("chaos", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _trial(number: int, state: str, reaped_at: float | None = None, **attrs: Any) -> Any:
    done = None if reaped_at is None else datetime.datetime.fromtimestamp(reaped_at)
    return SimpleNamespace(number=number, state=SimpleNamespace(name=state), user_attrs=attrs, datetime_complete=done)


def test_the_soak_counts_a_measurement_recorded_late_and_measured_again_as_measured_twice() -> None:
    """A reaped trial's late record and the run its parameters were re-queued for measured one
    configuration twice, though the hosts' CPUs (and so the configurations) differ; unless the soak
    had stopped its owner past the grace period, when it looked lost by design."""
    chaos = _chaos()
    params = {"n_batch": 64}
    on = [{"params": params, "cpus": [0]}, {"params": params, "cpus": [1]}]
    trials = [
        _trial(0, "FAIL", 1000.0, fail_reason="orchestrator_lost", owner={"host": "host1"}, config=on[1]),
        _trial(1, "COMPLETE", config=on[0], requeued_from=0, owner={"host": "host0"}),
        _trial(2, "COMPLETE", config=on[1], recorded_late_for=0, owner={"host": "host1"}),
        _trial(3, "COMPLETE", config=on[0], reused_from=1),  # a reuse measured nothing
        _trial(4, "COMPLETE", config=on[1], owner={"host": "host1"}),  # the same parameters, drawn on their own
    ]
    doubles, by_design = chaos.measured_twice(trials[:4], [])
    assert [[t.number for t in v] for v in doubles] == [[2, 1]] and by_design == []
    doubles, by_design = chaos.measured_twice(trials[:4], [("host1", 990.0, 1005.0)])
    assert doubles == [] and [[t.number for t in v] for v in by_design] == [[2, 1]]
    doubles, _ = chaos.measured_twice(trials, [("host1", 990.0, 1005.0)])
    assert [[t.number for t in v] for v in doubles] == [[2, 4]]  # one configuration measured twice, not reused


def test_the_soak_parses_its_command_line_without_waiting_for_the_lock() -> None:
    chaos = _chaos()
    args = chaos.parse_args(["--minutes", "3", "--seed", "2", "--json"])
    assert (args.minutes, args.seed, args.json) == (3.0, 2, True)
    assert chaos.parse_args([]).minutes == 20.0
    assert "db_outage" in chaos.KINDS and chaos.GRACE_S < chaos.OUTAGE_S < chaos.RETRY_S
    # --help answers at once, even while another measurement holds the host's lock.
    shown = subprocess.run([sys.executable, str(BENCH), "--help"], capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0 and "--minutes" in shown.stdout
