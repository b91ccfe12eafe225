"""How fast does each sampler find the feasible Pareto front? Replayed against a recorded grid.

    .venv/bin/python bench/sampler_efficiency.py [--table bench/data/grid-smollm2.json] [--seeds 20]
        [--samplers random,tpe,...] [--trials N] [--budget NAME=VALUE] [--png FILE | --no-png] [--json]

The table comes from bench/record_grid.py (or ``sweep table`` of any study that measured every
point of its space). A sampler proposes a point of the space; the point's configuration is
looked up and one of its recorded repeats drawn at random, so noise is part of the game. A
failed repeat stays failed. A configuration proposed again returns the same repeat, as sweep
reuses a configuration it has measured (``duplicates: reuse``), and the trial still counts.
Within one seed every sampler meets the same draws. The objectives and the budgets, as
constraints, reach the sampler as sweep hands them over (``sweep._optuna.set_constraints``).

Score: after each trial, the hypervolume of the feasible front among the configurations the
sampler has visited, divided by that of the whole table. Both are judged on each
configuration's *mean* figures over its repeats, so a lucky draw can mislead a sampler but
never its score, and grid order reaches exactly 1 once it has visited every configuration. A
configuration is feasible when its mean figures meet every budget and none of its repeats
failed. Objectives are normalised by their min and max over the table's configurations
(maximised ones flipped) and the reference point is 1.1 in each. The hypervolume is Optuna's
own (``optuna._hypervolume.compute_hypervolume``, exact WFG, the one behind
``optuna.visualization.plot_hypervolume_history``): no new dependency. Grid order's score
depends on no draw, so its IQR is nil.

Samplers: ``grid`` (the table's order: the baseline), ``random``, ``tpe`` (sweep's default,
built by ``sweep.study.writer.make_sampler``), ``tpe-startupN`` (fewer random startup trials:
``--tpe-startup``, default 4), ``tpe-startup10`` (the default before this benchmark),
``tpe-multivariate-startup10`` and ``-startupN``, ``nsga2`` (Optuna's population of 50),
``nsga2-popN`` (sweep's default population) and ``gp`` (``GPSampler``: only where torch and
scipy import; otherwise listed as skipped). Prints, per sampler, the median and IQR over
seeds of the hypervolume ratio after 10%, 25% and 50% of the grid's trials, and of the trials
(and distinct configurations measured) needed to reach 95%; draws the ratio-against-trials
curves (median, IQR band) to ``--png`` (default docs/sampler_efficiency.png). ``--json``
prints one object instead. Runs go to ``--jobs`` processes (default 2).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import itertools
import json
import math
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np

from sweep.results.table import NOT_THE_CONFIG, params_key

HERE = Path(__file__).resolve().parent
DEFAULT_TABLE = HERE / "data" / "grid-smollm2.json"
DEFAULT_PNG = HERE.parent / "docs" / "sampler_efficiency.png"
FRACTIONS = (0.1, 0.25, 0.5)
TARGET = 0.95
REFERENCE = 1.1  # in every normalised objective: just beyond the table's worst, so its edge points count


class BadInput(Exception):
    """One line for the user; exit 2."""


def _distribution(name: str, d: dict[str, Any]) -> Any:
    import optuna

    if d["type"] == "categorical":
        return optuna.distributions.CategoricalDistribution(d["choices"])
    if d["type"] == "int":
        return optuna.distributions.IntDistribution(d["low"], d["high"], step=d["step"], log=d["log"])
    raise BadInput(f"parameter {name} is a float range: a recorded grid has only choices and integer ranges")


def _choices(d: dict[str, Any]) -> list[Any]:
    return d["choices"] if d["type"] == "categorical" else list(range(d["low"], d["high"] + 1, d["step"]))


def parse_budgets(table_budgets: dict[str, dict[str, float]], overrides: list[str]) -> dict[str, dict[str, float]]:
    """The table's budgets with ``NAME=VALUE`` (same bound), ``NAME=max:V``/``min:V`` or ``NAME=none`` applied."""
    from sweep.measure.metrics import METRICS

    budgets = {k: dict(v) for k, v in table_budgets.items()}
    for text in overrides:
        name, _, value = text.partition("=")
        if name not in METRICS or not value:
            raise BadInput(f"--budget {text}: expected METRIC=VALUE with a metric sweep measures")
        if value == "none":
            budgets.pop(name, None)
            continue
        kind, _, number = value.rpartition(":")
        kind = kind or next(iter(budgets.get(name, {})), "")
        try:
            if kind not in ("max", "min"):
                raise ValueError
            budgets[name] = {kind: float(number)}
        except ValueError:
            raise BadInput(f"--budget {text}: give a number (for a new budget, max:NUMBER or min:NUMBER)") from None
    return budgets


class Grid:
    """A recorded grid: the space, where each point leads, the repeats, and the truth to score against."""

    def __init__(self, table: dict[str, Any], budgets: dict[str, dict[str, float]], where: str) -> None:
        from sweep.results.front import constraint_values

        meta = table["meta"]
        self.objectives = [o["name"] for o in meta["objectives"]]
        self.directions = [o["direction"] for o in meta["objectives"]]
        self.budgets = budgets
        grid = meta.get("grid") or {}
        names = grid.get("params") or list(meta["params"])
        self.distributions = {n: _distribution(n, meta["params"][n]) for n in names}
        rows = [r for r in table["rows"] if r.get("reused_from") is None
                and not (not r["ok"] and r.get("fail_reason") in NOT_THE_CONFIG)]
        self.alias = {params_key(r["params"]): r["config_key"] for r in rows}
        self.alias.update({params_key(dict(zip(names, p[:-1]))): p[-1] for p in grid.get("points", [])})
        product = [params_key(dict(zip(names, vs))) for vs in itertools.product(*(_choices(meta["params"][n]) for n in names))]
        covered = sum(p in self.alias for p in product)
        if grid.get("complete") is False or covered < len(product):
            raise BadInput(f"{where}: not a complete grid ({covered} of the space's {len(product)} points lead to "
                           "a recorded configuration); record one with bench/record_grid.py, without --limit")
        self.repeats: dict[str, list[tuple[list[float], list[float]] | None]] = {}
        figures: dict[str, list[dict[str, float]]] = {}
        for r in rows:
            if r["ok"]:
                f = r["figures"]
                self.repeats.setdefault(r["config_key"], []).append(
                    ([f[m] for m in self.objectives], constraint_values(f, budgets)))
                figures.setdefault(r["config_key"], []).append(f)
            else:
                self.repeats.setdefault(r["config_key"], []).append(None)
        missing = set(self.alias.values()) - set(self.repeats)
        if missing:
            raise BadInput(f"{where}: {len(missing)} configurations of the grid have no recorded trial")
        self.order = list(dict.fromkeys(p[-1] for p in grid.get("points", []))) or list(self.repeats)
        # The truth: each configuration's mean figures; feasible only if no repeat failed.
        means = {k: {m: float(np.mean([f[m] for f in fs if m in f])) for m in set().union(*fs)}
                 for k, fs in figures.items()}
        vals = {k: np.array([m[o] for o in self.objectives]) for k, m in means.items()}
        if not vals:
            raise BadInput(f"{where}: every recorded trial failed; there is no front to find")
        lo, hi = np.min(list(vals.values()), axis=0), np.max(list(vals.values()), axis=0)
        span = np.where(hi > lo, hi - lo, 1.0)
        flip = np.array([d == "maximize" for d in self.directions])
        self.loss = {k: np.where(flip, (hi - v) / span, (v - lo) / span) for k, v in vals.items()}
        self.feasible = {k for k, m in means.items()
                         if None not in self.repeats[k] and all(c <= 0 for c in constraint_values(m, budgets))}
        if not self.feasible:
            raise BadInput(f"{where}: no configuration meets every budget on its mean figures, so the feasible "
                           "front is empty; loosen one with --budget NAME=VALUE")
        self.hv_all = hypervolume([self.loss[k] for k in self.feasible])
        self.n = len(self.repeats)

    def draws(self, seed: int) -> dict[str, int]:
        """Which recorded repeat each configuration returns in this seed's world."""
        rng = np.random.default_rng(seed)
        return {k: int(rng.integers(len(self.repeats[k]))) for k in sorted(self.repeats)}


def hypervolume(points: list[np.ndarray]) -> float:
    from optuna._hypervolume import compute_hypervolume  # private, but maintained: Optuna's own plots use it

    if not points:
        return 0.0
    return float(compute_hypervolume(np.array(points), np.full(len(points[0]), REFERENCE)))


@functools.lru_cache(maxsize=None)  # once per process: replay() asks for it on every run
def sampler_factories(tpe_startup: int) -> tuple[dict[str, Callable[[int], Any] | None], dict[str, str], str]:
    """The samplers by name (``grid`` is None: no sampler), those skipped with the reason, and sweep's default."""
    import optuna

    from sweep.study.space import SamplerBlock
    from sweep.study.writer import make_sampler

    default = SamplerBlock()

    def sweeps(**kw: Any) -> Callable[[int], Any]:  # exactly what `sweep run` builds from a space's sampler block
        return lambda seed: make_sampler(SimpleNamespace(spec=SimpleNamespace(sampler=SamplerBlock(seed=seed, **kw))), 0)

    # TPE's variants name their settings in full, so a change of sweep's default never renames them;
    # constant_liar as sweep sets it (serially it changes nothing: no trial is ever in flight). A
    # variant that is sweep's default is not replayed twice.
    variants = {"tpe-startup10": dict(multivariate=False, n_startup_trials=10),
                f"tpe-startup{tpe_startup}": dict(multivariate=False, n_startup_trials=tpe_startup),
                "tpe-multivariate-startup10": dict(multivariate=True, n_startup_trials=10),
                f"tpe-multivariate-startup{tpe_startup}": dict(multivariate=True, n_startup_trials=tpe_startup)}
    out: dict[str, Callable[[int], Any] | None] = {
        "grid": None,
        "random": sweeps(name="random"),
        default.name: sweeps(),
        **{name: sweeps(**kw) for name, kw in variants.items() if SamplerBlock(**kw) != default},
        "nsga2": lambda s: optuna.samplers.NSGAIISampler(seed=s),
        f"nsga2-pop{default.population_size}": sweeps(name="nsga2"),
    }
    skipped = {}
    lacking = [m for m in ("torch", "scipy") if importlib.util.find_spec(m) is None]
    if lacking:
        skipped["gp"] = f"GPSampler needs torch and scipy; {' and '.join(lacking)} cannot be imported here"
    else:
        out["gp"] = lambda s: optuna.samplers.GPSampler(seed=s)
    return out, skipped, default.name


_GRID: Grid | None = None  # set before the worker processes fork
_TPE_STARTUP = 4


def replay(name: str, seed: int, n_trials: int) -> tuple[list[float], list[int]]:
    """One sampler, one seed: after each trial, the hypervolume ratio and the configurations measured
    so far (a configuration proposed again is reused, as sweep does: a trial, but no measurement)."""
    import optuna

    from sweep._optuna import set_constraints

    grid = _GRID
    assert grid is not None
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore")
    draws = grid.draws(seed)
    make = sampler_factories(_TPE_STARTUP)[0][name]
    study = None if make is None else optuna.create_study(directions=grid.directions, sampler=make(seed))
    visited: set[str] = set()
    front: list[np.ndarray] = []
    hv, curve, measured = 0.0, [], []
    for i in range(n_trials):
        if study is None:
            key = grid.order[i % grid.n]
        else:
            trial = study.ask(grid.distributions)
            key = grid.alias[params_key(trial.params)]
            outcome = grid.repeats[key][draws[key]]
            if outcome is None:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                set_constraints(study, trial, outcome[1])
                study.tell(trial, outcome[0])
        if key not in visited:
            visited.add(key)
            if key in grid.feasible:
                front.append(grid.loss[key])
                hv = hypervolume(front)
        curve.append(hv / grid.hv_all)
        measured.append(len(visited))
    return curve, measured


def _run(task: tuple[str, int, int]) -> tuple[str, int, tuple[list[float], list[int]], float]:
    t0 = time.process_time()
    run = replay(*task)
    return task[0], task[1], run, time.process_time() - t0


_NEVER = 1e18  # stands for "not reached": a quantile that touches it is not reached either


def _median_iqr(xs: list[float]) -> tuple[float | None, list[float | None]]:
    a = np.array(xs, dtype=float)
    q = np.percentile(np.where(np.isinf(a), _NEVER, a), [50, 25, 75])
    fin = [None if v >= _NEVER / 10 else round(float(v), 4) for v in q]
    return fin[0], fin[1:]


def summarise(runs: list[tuple[list[float], list[int]]], n: int) -> dict[str, Any]:
    """Medians and IQRs over seeds: the ratio after each fraction of the grid's trials and after the run's
    last trial, and the trials (and measurements) needed to reach 95% (None: the median seed did not
    within the run)."""
    curves = [c for c, _ in runs]
    at, iqr = {}, {}
    for f in FRACTIONS:
        k = math.ceil(f * n)
        xs = [c[k - 1] for c in curves if len(c) >= k]
        at[str(f)], iqr[str(f)] = _median_iqr(xs) if xs else (None, [None, None])
    end, end_iqr = _median_iqr([c[-1] for c in curves])
    to95 = [next((i + 1 for i, r in enumerate(c) if r >= TARGET - 1e-12), math.inf) for c in curves]
    med, q = _median_iqr(to95)
    m_med, m_q = _median_iqr([math.inf if math.isinf(t) else m[int(t) - 1] for t, (_, m) in zip(to95, runs)])

    def up(x: float | None) -> int | None:
        return None if x is None else int(math.ceil(x))
    return {"hv_ratio_at": at, "hv_ratio_iqr": iqr, "hv_ratio_end": end, "hv_ratio_end_iqr": end_iqr,
            "trials_to_95": up(med), "trials_to_95_iqr": [up(x) for x in q],
            "measurements_to_95": up(m_med), "measurements_to_95_iqr": [up(x) for x in m_q],
            "reached_95": sum(not math.isinf(x) for x in to95), "seeds": len(curves)}


def draw(curves: dict[str, list[list[float]]], n: int, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, cs in curves.items():
        a = np.array(cs)
        x = np.arange(1, a.shape[1] + 1)
        q25, med, q75 = np.percentile(a, [25, 50, 75], axis=0)
        (line,) = ax.plot(x, med, label=name, lw=2 if name == "grid" else 1.5, ls="--" if name == "grid" else "-")
        ax.fill_between(x, q25, q75, color=line.get_color(), alpha=0.15)
    for f in FRACTIONS:
        ax.axvline(math.ceil(f * n), color="grey", lw=0.5, ls=":")
    ax.axhline(TARGET, color="grey", lw=0.5)
    ax.set(xlabel="trials", ylabel="feasible hypervolume / the whole grid's", ylim=(0, 1.02), title=title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(x: float | None, iqr: list[float | None], digits: int = 2) -> str:
    def f(v: float | None) -> str:
        return "-" if v is None else (f"{v:.{digits}f}" if digits else f"{int(math.ceil(v))}")
    return f"{f(x)} [{f(iqr[0])}, {f(iqr[1])}]"


def main(argv: list[str] | None = None) -> int:
    global _GRID, _TPE_STARTUP
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--table", type=Path, default=DEFAULT_TABLE)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--samplers", default=None, help="comma-separated names [default: all that import]")
    ap.add_argument("--trials", type=int, default=None, help="trials per run [default: the grid's configurations]")
    ap.add_argument("--budget", action="append", default=[], metavar="NAME=VALUE",
                    help="replace a budget (NAME=4, NAME=max:4, NAME=none); repeatable")
    ap.add_argument("--tpe-startup", type=int, default=4, help="n_startup_trials of the tuned TPE [default: 4]")
    ap.add_argument("--png", type=Path, default=DEFAULT_PNG)
    ap.add_argument("--no-png", action="store_true")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes [default: 2]")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    started = time.monotonic()
    try:
        from sweep.errors import SweepError
        from sweep.results.table import load_table

        try:
            table = load_table(args.table)
        except SweepError as exc:
            raise BadInput(str(exc)) from None
        if args.seeds < 1 or args.jobs < 1 or args.tpe_startup < 1 or (args.trials is not None and args.trials < 1):
            raise BadInput("--seeds, --jobs, --tpe-startup and --trials must be at least 1")
        _TPE_STARTUP = args.tpe_startup
        _GRID = grid = Grid(table, parse_budgets(table["meta"]["budgets"], args.budget), str(args.table))
        factories, skipped, default = sampler_factories(args.tpe_startup)
        names = list(factories)
        if args.samplers:
            names = [s.strip() for s in args.samplers.split(",") if s.strip()]
            unknown = [s for s in names if s not in factories and s not in skipped]
            if unknown:
                raise BadInput(f"--samplers: unknown {', '.join(unknown)} (known: {', '.join([*factories, *skipped])})")
            skipped = {s: r for s, r in skipped.items() if s in names}
            names = [s for s in names if s in factories]
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    n_trials = args.trials or grid.n
    tasks = [(name, seed, n_trials) for name in names for seed in range(args.seeds)]
    runs: dict[str, list[tuple[list[float], list[int]]]] = {name: [] for name in names}
    cpu: dict[str, float] = {name: 0.0 for name in names}
    import multiprocessing

    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("fork")) as pool:
        for name, seed, run, seconds in pool.map(_run, tasks):
            runs[name].append(run)
            cpu[name] += seconds
    wall = time.monotonic() - started
    result = {
        "grid_trials": grid.n, "default_sampler": default,
        "samplers": {name: {**summarise(runs[name], grid.n), "cpu_seconds": round(cpu[name], 1)} for name in names},
        "skipped": skipped, "seeds": args.seeds, "trials_per_run": n_trials, "table": str(args.table),
        "feasible_configs": len(grid.feasible), "budgets": grid.budgets, "objectives": grid.objectives,
        "reference_point": REFERENCE, "wall_seconds": round(wall, 1),
    }
    if not args.no_png:
        draw({name: [c for c, _ in rs] for name, rs in runs.items()}, grid.n, args.png, f"{table['meta'].get('study')}: {grid.n} configurations, "
                                       f"{len(grid.feasible)} feasible, {args.seeds} seeds")
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{args.table}: {grid.n} configurations ({len(grid.alias)} points), {len(grid.feasible)} meet every budget; "
          f"{args.seeds} seeds x {n_trials} trials; sweep's default sampler: {default}")
    cols = [f"hv@{int(f * 100)}% ({math.ceil(f * grid.n)} trials)" for f in FRACTIONS]
    width = max(len(n) for n in names) + 2
    print(f"{'sampler':<{width}}" + "".join(f"{c:<26}" for c in cols) + "trials to 95%      measured then   reached")
    for name in names:
        s = result["samplers"][name]
        line = f"{name:<{width}}" + "".join(f"{_fmt(s['hv_ratio_at'][str(f)], s['hv_ratio_iqr'][str(f)]):<26}" for f in FRACTIONS)
        print(line + f"{_fmt(s['trials_to_95'], s['trials_to_95_iqr'], 0):<19}"
                     f"{_fmt(s['measurements_to_95'], s['measurements_to_95_iqr'], 0):<16}{s['reached_95']}/{s['seeds']}")
    print("median [IQR] over seeds; '-': not reached within the run; 'measured then': distinct configurations "
          "measured by then (a configuration proposed again is reused, not measured)")
    for name, reason in skipped.items():
        print(f"{name}: skipped: {reason}")
    if not args.no_png:
        print(f"curves drawn to {args.png}")
    print(f"{wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
