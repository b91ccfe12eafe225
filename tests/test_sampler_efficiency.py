"""bench/sampler_efficiency.py, the harness: on a small made-up grid (never a recorded figure), it
replays every sampler and reports what it promises. Which sampler wins is not a fact to test."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

SCRIPT = REPO / "bench" / "sampler_efficiency.py"
OBJECTIVES = [{"name": "correctness", "direction": "maximize"},
              {"name": "cpu_active_p99_share_pct", "direction": "minimize"},
              {"name": "latency_p95_s", "direction": "minimize"}]
BUDGETS = {"cpu_active_p99_share_pct": {"max": 60.0}, "latency_p95_s": {"max": 3.0}}


def made_up_table() -> dict:
    """12 points, 10 configurations (b=z ignores a, as sweep's clamping makes points alike), two
    repeats each; one configuration fails once."""
    params = {"model": {"type": "categorical", "choices": ["m"]},
              "a": {"type": "int", "low": 1, "high": 2, "step": 1, "log": False},
              "b": {"type": "categorical", "choices": ["x", "y", "z"]},
              "c": {"type": "categorical", "choices": [None, 0.5]}}
    names = list(params)
    points, rows = [], []
    for model, a, b, c in itertools.product(["m"], [1, 2], ["x", "y", "z"], [None, 0.5]):
        key = f"{1 if b == 'z' else a}-{b}-{c}"
        points.append([model, a, b, c, key])
    configs = list(dict.fromkeys(p[-1] for p in points))
    for repeat in (0, 1):
        for i, key in enumerate(configs):
            a, b, c = key.split("-")
            ok = not (key == "2-y-None" and repeat == 1)
            figures = {"correctness": {"x": 0.3, "y": 0.5, "z": 0.4}[b] + 0.05 * repeat,
                       "cpu_active_p99_share_pct": 50.0 * int(a) * (0.6 if c == "0.5" else 1.0) + repeat,
                       "latency_p95_s": (3.5 - int(a)) * (1.5 if c == "0.5" else 1.0) * (1 + 0.1 * repeat)}
            params_of = dict(zip(names, next(p[:-1] for p in points if p[-1] == key)))
            rows.append({"number": len(rows), "ok": ok, "state": "COMPLETE" if ok else "FAIL",
                         "fail_reason": None if ok else "crashed", "params": params_of, "config_key": key,
                         "repeat": repeat, "figures": figures if ok else {}, "reused_from": None})
    meta = {"study": "made-up", "objectives": OBJECTIVES, "budgets": BUDGETS, "params": params,
            "grid": {"params": names, "points": points, "complete": True}}
    return {"format": "sweep-table", "version": 1, "meta": meta, "rows": rows}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ})


@pytest.fixture
def table(tmp_path: Path) -> Path:
    path = tmp_path / "grid.json"
    path.write_text(json.dumps(made_up_table()))
    return path


def test_json_reports_every_sampler_within_bounds(table: Path, tmp_path: Path) -> None:
    from sweep.study.space import SamplerBlock

    png = tmp_path / "curves.png"
    proc = run("--table", str(table), "--seeds", "2", "--json", "--png", str(png))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)  # exactly one object
    assert out["grid_trials"] == 10 and out["trials_per_run"] == 10
    assert out["default_sampler"] == SamplerBlock().name
    gp_importable = all(importlib.util.find_spec(m) for m in ("torch", "scipy"))
    assert ("gp" in out["samplers"]) == gp_importable and ("gp" in out["skipped"]) != gp_importable
    assert {"grid", "random", out["default_sampler"], "tpe-multivariate-startup10", "nsga2"} <= set(out["samplers"])
    for name, s in out["samplers"].items():
        ratios = [s["hv_ratio_at"][f] for f in ("0.1", "0.25", "0.5")] + [s["hv_ratio_end"]]
        assert all(0.0 <= r <= 1.0 for r in ratios), name
        assert ratios == sorted(ratios), name  # the visited set only grows
        assert s["seeds"] == 2 and 0 <= s["reached_95"] <= 2
        assert s["trials_to_95"] is None or 1 <= s["measurements_to_95"] <= s["trials_to_95"] <= 10
    grid = out["samplers"]["grid"]
    assert grid["hv_ratio_end"] == 1.0 and grid["reached_95"] == 2 and grid["trials_to_95"] <= 10
    assert grid["measurements_to_95"] == grid["trials_to_95"]  # grid order never proposes a configuration twice
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_text_output_has_a_line_per_sampler(table: Path) -> None:
    proc = run("--table", str(table), "--seeds", "2", "--samplers", "grid,random,tpe", "--no-png")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "10 configurations (12 points)" in lines[0]
    for name in ("grid", "random", "tpe"):
        assert any(line.startswith(f"{name} ") for line in lines), name


@pytest.mark.parametrize("change, args, words", [
    (None, ["--samplers", "grid,annealing"], "unknown annealing"),
    (None, ["--budget", "latency_p95_s=0.01"], "feasible front is empty"),
    (None, ["--budget", "no_such_metric=1"], "--budget no_such_metric=1"),
    (lambda t: t["meta"]["grid"].update(complete=False), [], "not a complete grid"),
    (lambda t: t["meta"]["grid"]["points"].pop(), [], "not a complete grid"),
    (lambda t: t.update(version=2), [], "version 2"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, change, args: list[str], words: str) -> None:
    t = made_up_table()
    if change:
        change(t)
    path = tmp_path / "t.json"
    path.write_text(json.dumps(t))
    proc = run("--table", str(path), "--seeds", "1", "--no-png", *args)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and words in proc.stderr and not proc.stdout


def test_missing_table_is_exit_2(tmp_path: Path) -> None:
    proc = run("--table", str(tmp_path / "none.json"), "--no-png")
    assert proc.returncode == 2 and "no such table file" in proc.stderr


def test_the_shipped_grid_replays() -> None:
    proc = run("--seeds", "2", "--samplers", "grid,random,tpe", "--json", "--no-png")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["grid_trials"] > 0 and out["samplers"]["grid"]["hv_ratio_end"] == 1.0
