"""systemd's exposure score of the exported unit: ``python bench/unit_exposure.py new|old [--sweep DIR]``.

Renders the systemd export of one SmolLM2 configuration (affinity, nice 19, SCHED_IDLE, OpenMP
passive) with the built llama-server, and prints ``systemd-analyze security --offline=yes`` on it.
``new`` installs the binary and model into a directory of root's first (``--install``), as the
export now requires. ``old`` renders with the sweep of another checkout (``--sweep DIR``, a worktree of an older
commit; else whatever ``sweep`` is on PYTHONPATH) to score the unit that commit exported. The
results file's own metadata is this checkout's; the older one's commit is in the results.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import _harness

SERVER = str(Path.home() / ".cache/sweep/tools/llama-cpp-python-0.3.36/bin/llama-server")


def main(args: argparse.Namespace) -> dict[str, Any]:
    sweep_commit = None
    if args.sweep is not None:
        sweep_commit = subprocess.run(["git", "-C", str(args.sweep), "rev-parse", "--short", "HEAD"],
                                      capture_output=True, text=True, check=True).stdout.strip()
        sys.path.insert(0, str(args.sweep.resolve()))
        for name in [m for m in sys.modules if m == "sweep" or m.startswith("sweep.")]:
            del sys.modules[name]  # the harness imported this checkout's sweep for the metadata
    try:
        from sweep.models.registry import _bundled_path
        from sweep.results.export import render
    except ImportError:  # ``old``: a sweep from before the sub-packages (0d6c6f4 is one)
        from sweep.export import render  # type: ignore[no-redef]
        from sweep.models import _bundled_path  # type: ignore[no-redef]

    model = str(_bundled_path("smollm2-135m"))
    server_args = shlex.join([SERVER, "-m", model, "--threads", "1", "--threads-batch", "1", "--batch-size", "512",
                              "--ubatch-size", "512", "--ctx-size", "1024", "--n-gpu-layers", "0", "--parallel", "1",
                              "--cache-ram", "0", "--no-webui", "--cpu-mask", "1", "--cpu-strict", "0",
                              "--cpu-mask-batch", "1", "--cpu-strict-batch", "0"])
    rec = {"config": {"model": "smollm2-135m", "quant": "Q4_1", "model_path": model, "cpus": [0], "nice": 19,
                      "sched_policy": "idle", "omp_wait_policy": "passive"},
           "provenance": {"study": "demo", "trial": 3}, "meets_all_budgets": False,
           "budgets": {"rss_peak_gb": {"max": 6.0, "value": 0.2, "met": True, "margin": 5.8}},
           "metrics": {"cpu_active_p99_core_pct": 51.3},
           "llama_server": "env OMP_WAIT_POLICY=PASSIVE taskset -c 0 " + server_args, "llama_server_args": server_args}
    if args.which == "new":
        from sweep.results.export import install

        opt = tempfile.mkdtemp(prefix="sweep-opt-")
        os.chmod(opt, 0o755)
        rec = install(rec, opt)
    unit = Path(tempfile.mkdtemp()) / f"sweep-llm-{args.which}.service"
    unit.write_text(render(rec, "systemd"))
    out = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)], capture_output=True,
                         text=True).stdout
    score = out.strip().splitlines()[-1]
    print(args.which, score)
    return {"unit": args.which, "score": score, "sweep_commit": sweep_commit}


if __name__ == "__main__":
    ap = _harness.options(__doc__)
    ap.add_argument("which", choices=["new", "old"],
                    help="the export as it is now, or as an older sweep makes it")
    ap.add_argument("--sweep", type=Path, metavar="DIR", help="the checkout whose sweep renders the unit [PYTHONPATH's]")
    _harness.run(main, ap, lock=False)  # it measures nothing
