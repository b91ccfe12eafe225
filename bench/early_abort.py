"""Sweep time saved by early abort: ``python bench/early_abort.py [TRIALS] [--table [FILE]]``.

Live (the default): the same seeded sweep twice, with early abort on and off, over a space
in which slow decode caps (pace_tps) push many configurations far over the p95 latency
budget, as large models do on a laptop in endpoint-security.yaml. Prints each run's wall
time, how many trials were over the latency budget, and the saving.

``--table`` (default file: bench/data/grid-smollm2.json, from bench/record_grid.py, which
runs with early abort off): replayed on the recorded grid instead. For each trial, the
runner's own test (``sweep.measure.metrics.provably_over``) is applied to its answers' latencies in
order; where it fires after answer k, the time from then to the worker's last answer is
saved. The time between answers (reset, scoring overhead) is spread evenly over them, and
the worker's few milliseconds after its last answer are not counted, so the saving is a
slight underestimate. ``--latency-budget S`` (repeatable) adds what-if budgets to the table's.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _harness

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


DEFAULT_TABLE = Path(__file__).resolve().parent / "data" / "grid-smollm2.json"


def replay(table: dict, budget_s: float) -> tuple[int, int, float]:
    """(trials early abort would stop, trials it could judge, seconds it would save) at this p95 budget."""
    from sweep.measure.metrics import provably_over

    stopped, judged, saved = 0, 0, 0.0
    for r in table["rows"]:
        lat, ph = r.get("latencies_s") or [], r.get("phases_s") or {}
        if not r["ok"] or r.get("reused_from") is not None or r["figures"].get("early_abort") or not lat \
                or "active" not in ph or "done" not in ph:
            continue
        judged += 1
        answering = ph["done"] - ph["active"]
        gap = max(answering - sum(lat), 0.0) / len(lat)
        for k in range(1, len(lat) + 1):
            if provably_over(lat[:k], len(lat), budget_s):
                stopped += 1
                saved += answering - (sum(lat[:k]) + k * gap)
                break
    return stopped, judged, saved


def print_replay(path: Path, extra_budgets: list[float]) -> list[dict[str, Any]]:
    """Print the replay at the table's budget and ``extra_budgets``; the figures, budget by budget."""
    from sweep.results.table import load_table

    table = load_table(path)
    meta = table["meta"]
    measured = [r for r in table["rows"] if r.get("reused_from") is None]
    total = sum(r.get("wall_seconds") or 0.0 for r in measured)
    recorded = f", the recording took {meta['wall_seconds']:.0f} s" if meta.get("wall_seconds") else ""
    print(f"recorded grid {path}: {len(measured)} trials, {meta['settings']['prompts']} prompts each, "
          f"{total:.0f} s of trial wall time{recorded}")
    own = meta["budgets"].get("latency_p95_s", {}).get("max")
    budgets = ([own] if own is not None else []) + [b for b in extra_budgets if b != own]
    if not budgets:
        print("the table has no latency_p95_s budget; pass --latency-budget S")
    rows = []
    for b in budgets:
        stopped, judged, saved = replay(table, b)
        tag = " (the table's)" if b == own else " (what if)"
        print(f"latency p95 budget {b:g} s{tag}: early abort would stop {stopped} of {judged} trials; "
              f"saved: {saved:.0f} s ({100 * saved / total if total else 0:.0f}% of the grid's trial time)")
        rows.append({"budget_s": b, "from_table": b == own, "stopped": stopped, "judged": judged, "saved_s": saved,
                     "trial_s": total})
    return rows


def main(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    if args.table is not None:
        from sweep.errors import SweepError

        try:
            results["replay"] = {"table": str(args.table), "budgets": print_replay(args.table, args.latency_budget)}
        except SweepError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        if args.trials is None:
            return results
    trials = args.trials or 6
    off = run(False, trials)
    on = run(True, trials)
    print(f"{trials} trials, 12 prompts each, latency p95 budget 2.5 s")
    print(f"early abort off: {off[0]:.0f} s, {off[1]} trials over the latency budget")
    print(f"early abort on:  {on[0]:.0f} s, {on[1]} trials over the latency budget, {on[2]} stopped early")
    print(f"saved: {off[0] - on[0]:.0f} s ({100 * (off[0] - on[0]) / off[0]:.0f}% of the sweep)")
    results["live"] = {"trials": trials, **{arm: {"wall_s": wall, "over_budget": over, "stopped_early": aborted}
                                            for arm, (wall, over, aborted) in (("off", off), ("on", on))}}
    return results


if __name__ == "__main__":
    ap = _harness.options("Sweep time saved by early abort, live or replayed on a recorded grid.")
    ap.add_argument("trials", nargs="?", type=int, default=None, help="live: trials per sweep [default: 6]")
    ap.add_argument("--table", nargs="?", type=Path, const=DEFAULT_TABLE, default=None,
                    help=f"replay on a recorded grid [default file: {DEFAULT_TABLE.name}]")
    ap.add_argument("--latency-budget", type=float, action="append", default=[], metavar="S")
    _harness.run(main, ap, lock=False)  # each ``sweep run`` it starts takes the lock itself
