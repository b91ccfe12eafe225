"""What promotion buys, replayed on a recorded grid: the front and the pick with promotion against
without, for the same trial-hours.

    .venv/bin/python bench/promotion.py [--grid bench/data/promotion_grid.json] [--trials 8] [--seeds 300]
        [--plans 10,40:0.34,10,40:0.5,10,40,246:0.34,...] -o bench/data/promotion.json

The grid (bench/promotion_grid.py) holds, for each configuration, every item's score and latency
in the stratified order, so a trial on the first n items is replayed exactly: its correctness and
interval on those n, its latency percentiles over their latencies, and the CPU, idle and memory
figures of the recording (those do not depend on the items). A trial costs the recording's
overhead (loading, idle and baseline windows: its wall time less its answers) plus the latencies
of the items it answers.

A run, per seed: a random sampler proposes configurations (with replacement: a configuration
proposed again is reused and costs nothing, as ``duplicates: reuse`` does) until ``--trials`` of
them are done. With a plan (the rungs, and ``keep``), sweep's own promotion code decides, before
each proposal and again once the trials are done, which configuration to measure on more items
(``sweep.study.promotion.due``), on an in-memory Optuna study that holds the replayed figures as
sweep would record them. Without promotion, the run proposes trials until it has spent as many
trial-seconds as the promoted run of the same seed spent.

Scored on the full-set figures (every recorded item): the hypervolume of the configurations the
study puts on its front, over that of the true front (objectives normalised by their min and max
over the grid, reference point 1.1, Optuna's exact hypervolume); the full-set correctness of
the export policy's pick, beside the best full-set correctness the grid holds; and how far the
correctness the pick is exported with (on its largest sample) is from its full-set correctness.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

import _harness
from sampler_efficiency import hypervolume

from sweep.measure.metrics import constraint_values, percentile, score_interval
from sweep.study.space import DEFAULT_OBJECTIVES, SEED_BUDGETS

HERE = Path(__file__).resolve().parent
DEFAULT_GRID = HERE / "data" / "promotion_grid.json"
DEFAULT_PLANS = "10,40:0.34;10,40:0.5;10,40,246:0.34;10,40,246:0.5;10,80:0.34"


class Grid:
    """The recorded configurations, their figures on any first n items and what a trial on them costs."""

    def __init__(self, path: Path) -> None:
        data = json.loads(path.read_text())
        rows = [r for r in data["results"]["rows"] if r["ok"]]
        self.labels = [r["label"] for r in rows]
        self.rows = rows
        self.n_items = min(len(r["items"]) for r in rows)
        self.objectives = list(DEFAULT_OBJECTIVES)
        self.directions = ["maximize", "minimize", "minimize"]
        full = [self.figures(i, self.n_items) for i in range(len(rows))]
        vals = np.array([[f[m] for m in self.objectives] for f in full])
        lo, hi = vals.min(axis=0), vals.max(axis=0)
        span = np.where(hi > lo, hi - lo, 1.0)
        flip = np.array([d == "maximize" for d in self.directions])
        self.loss = np.where(flip, (hi - vals) / span, (vals - lo) / span)
        self.full_correctness = [f["correctness"] for f in full]
        self.hv_all = hypervolume(list(self.loss))

    def figures(self, i: int, n: int) -> dict[str, float]:
        r = self.rows[i]
        items = r["items"][:n]
        scores = [a["score"] for a in items]
        lat = [a["latency_s"] for a in items]
        low, high = score_interval(scores)
        f = {k: r["figures"][k] for k in ("cpu_active_p99_share_pct", "cpu_active_mean_share_pct", "cpu_idle_share_pct",
                                          "rss_peak_gb") if k in r["figures"]}
        p50 = percentile(lat, 50)
        f.update(correctness=sum(scores) / len(scores), correctness_n=len(scores), correctness_ci_low=low,
                 correctness_ci_high=high, latency_p95_s=percentile(lat, 95), latency_p50_s=p50,
                 latency_p99_p50_ratio=percentile(lat, 99) / p50 if p50 else math.nan)
        return f

    def cost(self, i: int, n: int) -> float:
        r = self.rows[i]
        answers = sum(a["latency_s"] for a in r["items"])
        return (r["wall_s"] - answers) + sum(a["latency_s"] for a in r["items"][:n])


def _study(grid: Grid) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=grid.directions)
    study.set_user_attr("objectives", grid.objectives)
    study.set_user_attr("budgets", SEED_BUDGETS)
    study.set_user_attr("settings", {"prompts": 10})
    study.set_user_attr("task_set", "tasks-v2")
    return study


def _tell(study: Any, grid: Grid, i: int, n: int, **attrs: Any) -> None:
    import optuna

    f = grid.figures(i, n)
    cv = constraint_values(f, SEED_BUDGETS)
    dist = {"config": optuna.distributions.CategoricalDistribution(list(range(len(grid.rows))))}
    study.add_trial(optuna.trial.create_trial(
        values=[f[m] for m in grid.objectives], params={"config": i}, distributions=dist,
        user_attrs={**f, **attrs, "config": {"i": i}, "constraint_values": cv,
                    "violations": [k for k, c in zip(SEED_BUDGETS, cv) if c > 0]}))


def run(grid: Grid, seed: int, trials: int, sizes: list[int], keep: float, budget_s: float | None = None) -> dict[str, Any]:
    """One run; ``sizes`` of one rung: no promotion (then ``budget_s``, when given, is spent, not ``trials``)."""
    from sweep.results.front import choose, pareto_front
    from sweep.study.promotion import due

    rng = np.random.default_rng(seed)
    study = _study(grid)
    spent, done, measured = 0.0, 0, set()
    while True:
        finishing = done >= trials if budget_s is None else spent >= budget_s or len(measured) == len(grid.rows)
        promo = due(study, sizes, keep, finishing) if len(sizes) > 1 else None
        if promo is not None:
            original, rung = promo
            i = study.trials[original].params["config"]
            _tell(study, grid, i, sizes[rung], promotes=original, rung=rung, items=sizes[rung])
            spent += grid.cost(i, sizes[rung])
            continue
        if finishing:
            break
        i = int(rng.integers(len(grid.rows)))
        done += 1
        if i in measured:  # reused: counts as a trial, costs nothing
            continue
        measured.add(i)
        _tell(study, grid, i, sizes[0])
        spent += grid.cost(i, sizes[0])
    front = {r["config"]["i"] for r in pareto_front(study)[0]}
    pick = choose(study, allow_infeasible=True)
    return {"spent_s": spent, "configs": len(measured), "hv": hypervolume([grid.loss[i] for i in front]) / grid.hv_all,
            "pick_correctness": grid.full_correctness[pick["config"]["i"]],
            # what the morning's answer claims against the truth: its correctness on its sample, less the full set's
            "pick_claim_error": abs(pick["figures"]["correctness"] - grid.full_correctness[pick["config"]["i"]]),
            "pick_items": pick["figures"]["correctness_n"]}


def _median_iqr(xs: list[float]) -> list[float]:
    q = np.percentile(xs, [50, 25, 75])
    return [float(q[0]), float(q[1]), float(q[2])]


def main(args: argparse.Namespace) -> dict[str, Any]:
    grid = Grid(args.grid)
    print(f"{len(grid.rows)} configurations on {grid.n_items} items; best full-set correctness "
          f"{max(grid.full_correctness):.3f} ({grid.labels[int(np.argmax(grid.full_correctness))]})")
    plans = []
    for text in args.plans.split(";"):
        rungs, _, keep = text.partition(":")
        sizes = [min(int(x), grid.n_items) for x in rungs.split(",")]
        with_p, without = [], []
        for seed in range(args.seeds):
            a = run(grid, seed, args.trials, sizes, float(keep))
            b = run(grid, seed, args.trials, sizes[:1], 0.0, budget_s=a["spent_s"])
            with_p.append(a)
            without.append(b)
        row = {"rungs": sizes, "keep": float(keep)}
        for name, runs in (("with", with_p), ("without", without)):
            row[name] = {k: _median_iqr([r[k] for r in runs]) for k in ("spent_s", "configs", "hv", "pick_correctness",
                                                                         "pick_claim_error", "pick_items")}
        row["pick_better"] = sum(a["pick_correctness"] > b["pick_correctness"] for a, b in zip(with_p, without))
        row["pick_worse"] = sum(a["pick_correctness"] < b["pick_correctness"] for a, b in zip(with_p, without))
        row["hv_better"] = sum(a["hv"] > b["hv"] + 1e-9 for a, b in zip(with_p, without))
        row["hv_worse"] = sum(a["hv"] < b["hv"] - 1e-9 for a, b in zip(with_p, without))
        plans.append(row)
        w, o = row["with"], row["without"]
        print(f"rungs {sizes} keep {keep}: {w['spent_s'][0] / 60:.1f} trial-min | hypervolume {w['hv'][0]:.3f} with, "
              f"{o['hv'][0]:.3f} without | pick's full-set correctness {w['pick_correctness'][0]:.3f} with, "
              f"{o['pick_correctness'][0]:.3f} without (better in {row['pick_better']}, worse in {row['pick_worse']} "
              f"of {args.seeds} seeds) | its claim off by {w['pick_claim_error'][0]:.3f} with, "
              f"{o['pick_claim_error'][0]:.3f} without", flush=True)
    return {"grid": str(args.grid.name), "configs": grid.labels, "items": grid.n_items, "trials": args.trials,
            "seeds": args.seeds, "best_correctness": max(grid.full_correctness), "plans": plans}


if __name__ == "__main__":
    ap = _harness.options(__doc__)
    ap.add_argument("--grid", type=Path, default=DEFAULT_GRID)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=300)
    ap.add_argument("--plans", default=DEFAULT_PLANS, help=f"rungs:keep, separated by ';' [{DEFAULT_PLANS}]")
    _harness.run(main, ap, lock=False)
