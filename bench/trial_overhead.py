"""A trial's fixed cost, split: ``python bench/trial_overhead.py [TRIALS]``.

SmolLM2 Q4_1 with the demo's trial settings (search_spaces/demo.yaml: window, idle window,
baseline, noise check, probe), one fixed configuration (1 thread, 0-shot grammar, 32 tokens),
TRIALS trials (default 5) through the orchestrator into a temporary SQLite study, as a sweep
runs them. ``duplicates: repeat`` so every trial is measured. Medians over the trials of:
- ``spawn_import_s``: spawning the worker until it has imported llama_cpp;
- ``load_s``: from then until the model is loaded and ready;
- ``pre_trial_s``: from the trial's start until the worker is spawned (noise check, baseline);
- ``idle_s``: the idle window, from the trial's phase marks (idle to active);
- ``record_s``: recording the trial in the database (``sweep.study.writer.record``, timed around it).
Those medians are the results.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import yaml

from sweep.correctness.tasks import load_tasks
from sweep.results.front import trial_series
from sweep.study import orchestrator
from sweep.study.space import load_space

import _harness

ROOT = Path(__file__).resolve().parent.parent
FIXED = {"n_threads": 1, "n_threads_batch": 1, "n_batch": 512, "n_ubatch": 512, "cores": 1, "placement": "first",
         "nice": 0, "sched_policy": "normal", "omp_wait_policy": "passive", "pace_duty": None, "shots": 0,
         "output": "grammar", "prefix_cache": "off", "max_tokens": 32}


def main(args: argparse.Namespace) -> dict[str, float]:
    demo = yaml.safe_load((ROOT / "search_spaces" / "demo.yaml").read_text())
    # One model and one configuration, measured every time: the demo's trial settings, nothing swept.
    spec = {**demo, "name": "overhead", "models": {"smollm2-135m": ["Q4_1"]}, "params": {},
            "fixed": {**demo["fixed"], **FIXED}, "trial": {**demo["trial"], "duplicates": "repeat"}}
    recording: list[float] = []
    real_record = orchestrator.record

    def timed_record(*a, **kw):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        try:
            return real_record(*a, **kw)
        finally:
            recording.append(time.perf_counter() - t0)

    orchestrator.record = timed_record
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "overhead.yaml"
        path.write_text(yaml.safe_dump(spec))
        space = load_space(path)
        url = f"sqlite:///{tmp}/studies.db"
        study = orchestrator.run_study(space, orchestrator.RunOptions(url, "overhead", args.trials,
                                                                      load_tasks())).study
        figs = [t.user_attrs for t in study.trials if "spawn_import_s" in t.user_attrs]
        marks = [trial_series(study, t.number, url)["series"]["marks"] for t in study.trials
                 if "spawn_import_s" in t.user_attrs]
    out = {"spawn_import_s": statistics.median(f["spawn_import_s"] for f in figs),
           "load_s": statistics.median(f["model_load_s"] for f in figs),
           "pre_trial_s": statistics.median(f["pre_trial_s"] for f in figs),
           "idle_s": statistics.median(m["active"] - m["idle"] for m in marks),
           "record_s": statistics.median(recording)}
    print(f"SmolLM2 Q4_1, demo settings, {len(figs)} trials; medians:")
    for k, v in out.items():
        print(f"  {k:15s} {v:6.3f} s")
    fixed = out["spawn_import_s"] + out["load_s"] + out["record_s"]
    print(f"  spawn + import + load + record = {fixed:.3f} s; with the pre-trial and idle windows = "
          f"{fixed + out['pre_trial_s'] + out['idle_s']:.3f} s")
    return out


if __name__ == "__main__":
    ap = _harness.options(__doc__)
    ap.add_argument("trials", nargs="?", type=int, default=5, help="trials [5]")
    _harness.run(main, ap)
