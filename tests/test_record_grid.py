"""bench/record_grid.py: the grid's plan (fast) and a one-configuration recording through the real path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import record_grid  # noqa: E402

GRID = REPO / "bench" / "grid.yaml"


def test_every_point_leads_to_its_effective_configuration() -> None:
    import optuna

    from sweep.results.table import config_key
    from sweep.study.space import load_space

    space = load_space(GRID)
    configs, points = record_grid.plan(space)
    assert len(points) == len({json.dumps(p, sort_keys=True) for p, _ in points})  # the whole product, once
    keys = {k for _, k in points}
    assert len(keys) == len(configs)
    by_key = {config_key(space.sample(optuna.trial.FixedTrial(p)).to_dict()): p for p in configs}
    assert set(by_key) == keys
    for params, key in points:
        mine = space.sample(optuna.trial.FixedTrial(params)).to_dict()
        theirs = space.sample(optuna.trial.FixedTrial(by_key[key])).to_dict()
        if max(mine["n_threads"], mine["n_threads_batch"]) == 1:  # the one rule that is the script's own
            mine["omp_wait_policy"] = theirs["omp_wait_policy"]
        assert mine == theirs


@pytest.mark.slow
def test_a_limited_recording_writes_a_table_with_its_provenance(tmp_path: Path) -> None:
    out = tmp_path / "grid.json"
    env = {**os.environ, "SWEEP_STORAGE": f"sqlite:///{tmp_path / 'studies.db'}"}
    # The shipped grid with shorter trials (2 prompts of 8 tokens): the recording is what is tested.
    text = GRID.read_text()
    for old, new in (("  prompts: 6\n", "  prompts: 2\n"), ("  max_tokens: 32\n", "  max_tokens: 8\n"),
                     ("  idle_seconds: 1\n", "  idle_seconds: 0.5\n")):
        assert old in text
        text = text.replace(old, new)
    grid = tmp_path / "grid.yaml"
    grid.write_text(text)
    cmd = [sys.executable, str(REPO / "bench" / "record_grid.py"), "--limit", "1", "--repeats", "2", "-o", str(out),
           str(grid)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    table = json.loads(out.read_text())
    rows, meta = table["rows"], table["meta"]
    assert [r["repeat"] for r in rows] == [0, 1] and rows[0]["config_key"] == rows[1]["config_key"]
    assert rows[1]["repeat_of"] == rows[0]["number"]  # measured again on purpose, never reused
    assert all(r["ok"] and len(r["latencies_s"]) == meta["settings"]["prompts"] for r in rows)
    assert "record_grid.py --limit 1" in meta["command"] and meta["wall_seconds"] > 0
    assert meta["recording"]["sessions"][0]["host"]["logical_cpus"] >= 1
    grid = meta["grid"]
    assert not grid["complete"] and grid["n_configs"] == 1
    assert {p[-1] for p in grid["points"]} == {rows[0]["config_key"]}
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)  # nothing left to measure
    assert again.returncode == 0 and "0 trials to measure" in again.stdout
    assert len(json.loads(out.read_text())["rows"]) == 2


def test_a_limit_needs_an_output_file() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "record_grid.py"), "--limit", "1"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "needs -o" in proc.stderr
