"""Measure every configuration of a space, twice, and write the study as a table.

    .venv/bin/python bench/record_grid.py [SPACE] [--study NAME] [--storage URL] [-o TABLE]
                                          [--repeats 2] [--limit N]

SPACE defaults to bench/grid.yaml and TABLE to bench/data/<study>.json (the table that
bench/sampler_efficiency.py replays). Every point of the space's product is mapped to its
effective configuration by sweep's own ``Space.sample``, so points sweep clamps to the same
configuration (threads above the cores, placement of every core) are one configuration. One
more rule is this script's: with one decode and one prefill thread, ggml computes without
an OpenMP parallel region, so ``omp_wait_policy`` cannot act and is not told apart.

Each configuration is enqueued on the study and measured through sweep's orchestrator
(``run_study``: the measurement lock, the noise guard, the monitored worker), all of them
once, then all again, so the repeats of one configuration are far apart in time. The same
command carries on after an interruption. The table's metadata holds the command, the wall
time of every session, this host and every point of the grid with the configuration it maps to.

``--limit N`` measures only the first N configurations (a smoke test); it needs ``-o``, so a
partial grid never takes the shipped table's place.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

# A failure that says nothing of the configuration (NOT_THE_CONFIG) is measured again.
from sweep.results.table import NOT_THE_CONFIG, config_key, params_key

HERE = Path(__file__).resolve().parent


def product_points(space: Any) -> list[dict[str, Any]]:
    """Every point of the space's product, named as ``Space.sample`` suggests them, in its order."""
    from sweep.study.space import IntRange

    axes: list[tuple[str, list[Any]]] = []
    for name, dist in space.spec.params.items():
        if isinstance(dist, IntRange):
            high = len(space.cpus) if dist.high == "all" else dist.high
            axes.append((name, list(range(dist.low, high + 1, dist.step))))
        else:
            axes.append((name, list(dist)))
    points = []
    for model in sorted(space.spec.models):
        quants = sorted(space.spec.models[model])
        model_axes = [("model", [model])] + ([(f"quant[{model}]", quants)] if len(quants) > 1 else [])
        names = [n for n, _ in model_axes + axes]
        for values in itertools.product(*(v for _, v in model_axes + axes)):
            points.append(dict(zip(names, values)))
    return points


def _collapsed(config: dict[str, Any]) -> str:
    c = dict(config)
    if max(c["n_threads"], c["n_threads_batch"]) == 1:
        # ggml runs a single thread without an OpenMP parallel region: no team, nothing to spin.
        c["omp_wait_policy"] = c["gomp_spincount"] = None
    return json.dumps(c, sort_keys=True)


def plan(space: Any) -> tuple[list[dict[str, Any]], list[tuple[dict[str, Any], str]]]:
    """The configurations to measure (one point each, the first of its group) and every point
    of the product with the configuration key it maps to."""
    import optuna

    first: dict[str, tuple[dict[str, Any], str]] = {}
    points = []
    for params in product_points(space):
        config = space.sample(optuna.trial.FixedTrial(params)).to_dict()
        group = _collapsed(config)
        if group not in first:
            first[group] = (params, config_key(config))
        points.append((params, first[group][1]))
    return [p for p, _ in first.values()], points


def enqueue_missing(study: Any, configs: list[dict[str, Any]], repeats: int) -> int:
    """Enqueue what the study lacks, repeat by repeat; returns how many trials were enqueued."""
    have: Counter[str] = Counter()
    for t in study.get_trials(deepcopy=False):
        if t.state.name == "FAIL" and t.user_attrs.get("fail_reason") in NOT_THE_CONFIG:
            continue
        have[params_key(t.params or t.system_attrs.get("fixed_params", {}))] += 1
    n = 0
    for r in range(repeats):
        for params in configs:
            if have[params_key(params)] <= r:
                study.enqueue_trial(params)
                have[params_key(params)] += 1
                n += 1
    return n


def _count(study: Any, *states: str) -> int:
    return sum(t.state.name in states for t in study.get_trials(deepcopy=False))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("space", nargs="?", default=str(HERE / "grid.yaml"))
    ap.add_argument("--study", default=None, help="study name [default: the space's name]")
    ap.add_argument("--storage", default=None, help="storage URL [default: SWEEP_STORAGE or sqlite:///studies.db]")
    ap.add_argument("-o", "--output", type=Path, default=None, help="table file [default: bench/data/STUDY.json]")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="measure only the first N configurations")
    args = ap.parse_args(argv)

    from sweep import _optuna
    from sweep.correctness.tasks import load_tasks, task_set_name
    from sweep.errors import SweepError
    from sweep.measure.host import host_info
    from sweep.records import StudyMeta
    from sweep.results.progress import make_progress
    from sweep.results.table import TABLE_META_ATTR, make_table, save_table
    from sweep.study.orchestrator import RunOptions, run_study
    from sweep.study.space import load_space
    from sweep.study.storage import redact_argv, safe_url, storage_url
    from sweep.study.writer import open_or_create

    command = shlex.join(redact_argv([Path(sys.executable).name, *sys.argv] if argv is None else argv))
    started, t0 = time.time(), time.monotonic()
    try:
        if args.limit is not None and (args.limit < 1 or args.output is None):
            raise SweepError("--limit takes a number of configurations >= 1 and needs -o: a partial grid must "
                             "not take the shipped table's place")
        if args.repeats < 1:
            raise SweepError("--repeats must be at least 1")
        space = load_space(args.space)
        configs, points = plan(space)
        if args.limit is not None:
            configs = configs[: args.limit]
            keep = {params_key(p) for p in configs}
            kept_keys = {k for p, k in points if params_key(p) in keep}
            points = [(p, k) for p, k in points if k in kept_keys]
        name = args.study or space.name
        output = args.output or HERE / "data" / f"{name}.json"
        url = storage_url(args.storage)
        _optuna.quiet()
        study, _, _ = open_or_create(space, url, name, task_set_name(None))
        queued = enqueue_missing(study, configs, args.repeats)
        print(f"{len(points)} points of the product, {len(configs)} configurations x {args.repeats} repeats; "
              f"{queued} trials to measure into study {name!r} in {safe_url(url)}", flush=True)
        tasks = load_tasks(None)
        stopped = False
        try:
            while _count(study, "WAITING") and not stopped:
                target = _count(study, "COMPLETE", "FAIL", "PRUNED", "WAITING", "RUNNING")
                display = make_progress(False)
                try:
                    result = run_study(space, RunOptions(url, name, target, tasks, task_set_name(None)),
                                       on_progress=display)
                finally:
                    if display:
                        display.close()
                study, stopped = result.study, result.stopped_by_user
        except KeyboardInterrupt:  # a second Ctrl-C: the trial in flight was recorded as failed (interrupted)
            stopped = True
    except SweepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    wall = time.monotonic() - t0
    recorded = study.user_attrs.get(TABLE_META_ATTR) or {}
    sessions = [*recorded.get("recording", {}).get("sessions", []),
                {"command": command, "started": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
                 "wall_seconds": round(wall, 1), "host": host_info(), "stopped_by_user": stopped}]
    study.set_user_attr(TABLE_META_ATTR, {
        "command": command,
        "wall_seconds": round(sum(s["wall_seconds"] for s in sessions), 1),
        "recording": {"script": "bench/record_grid.py", "repeats": args.repeats, "limit": args.limit,
                      "hardware_class": StudyMeta.of(study).hardware_class, "sessions": sessions},
        "grid": {"params": list(points[0][0]), "n_points": len(points), "n_configs": len(configs),
                 "complete": args.limit is None,
                 "rule": "points with equal effective configurations (Space.sample) are one configuration; so are "
                         "points that differ only in omp_wait_policy/gomp_spincount at one decode and one prefill thread",
                 "points": [[*p.values(), k] for p, k in points]},
    })
    if stopped:
        print("stopped at your request; run the same command again to carry on", file=sys.stderr)
        return 130
    output.parent.mkdir(parents=True, exist_ok=True)
    table = make_table(study, url, command=["sweep", "table", "--study", name, "--storage", safe_url(url),
                                              "-o", str(output)])
    save_table(table, output)
    print(f"{len(table['rows'])} trials in {wall:.0f} s; table written to {output} "
          f"(again: sweep table --study {name} --storage {safe_url(url)} -o {output})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
