"""systemd's exposure score of the exported unit: ``python bench/unit_exposure.py new|old``.

Renders the systemd export of one SmolLM2 configuration (affinity, nice 19, SCHED_IDLE, OpenMP
passive) with the built llama-server, and prints ``systemd-analyze security --offline=yes`` on it.
``new`` installs the binary and model into a directory of root's first (``--install``), as the
export now requires. ``old`` renders with whatever ``sweep`` is on PYTHONPATH as it is: run it
against a checkout of an older commit to score the unit that commit exported.
"""
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from sweep.models.registry import _bundled_path
from sweep.results.export import render

server = str(Path.home() / ".cache/sweep/tools/llama-cpp-python-0.3.36/bin/llama-server")
model = str(_bundled_path("smollm2-135m"))
args = shlex.join([server, "-m", model, "--threads", "1", "--threads-batch", "1", "--batch-size", "512",
                   "--ubatch-size", "512", "--ctx-size", "1024", "--n-gpu-layers", "0", "--parallel", "1",
                   "--cache-ram", "0", "--no-webui", "--cpu-mask", "1", "--cpu-strict", "0", "--cpu-mask-batch", "1",
                   "--cpu-strict-batch", "0"])
rec = {"config": {"model": "smollm2-135m", "quant": "Q4_1", "model_path": model, "cpus": [0], "nice": 19,
                  "sched_policy": "idle", "omp_wait_policy": "passive"},
       "provenance": {"study": "demo", "trial": 3}, "meets_all_budgets": False,
       "budgets": {"rss_peak_gb": {"max": 6.0, "value": 0.2, "met": True, "margin": 5.8}},
       "metrics": {"cpu_active_p99_core_pct": 51.3},
       "llama_server": "env OMP_WAIT_POLICY=PASSIVE taskset -c 0 " + args, "llama_server_args": args}
if sys.argv[1] == "new":
    from sweep.results.export import install
    opt = tempfile.mkdtemp(prefix="sweep-opt-"); os.chmod(opt, 0o755)
    rec = install(rec, opt)
    text = render(rec, "systemd")
else:
    text = render(rec, "systemd")
unit = Path(tempfile.mkdtemp()) / f"sweep-llm-{sys.argv[1]}.service"
unit.write_text(text)
out = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)], capture_output=True, text=True).stdout
print(sys.argv[1], out.strip().splitlines()[-1])
