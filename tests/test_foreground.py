"""The CPU-bound foreground workload (``probe: cpu``): calibrated against known loads, and a real
trial that answers twice, uncontended and under the workload."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from sweep.correctness.tasks import load_tasks, stratified_subset
from sweep.hostlock import measurement_lock
from sweep.measure.foreground import calibrate
from sweep.records import TrialConfig, TrialSettings
from sweep.trial.runner import run_trial

from conftest import TINY_SPACE, stray_processes, sweep_cli, write_space

SPIN_ON_CPU0 = [sys.executable, "-c", f"import os\nos.sched_setaffinity(0, {{{sorted(os.sched_getaffinity(0))[0]}}})\n"
                "while True: pass\n"]


@pytest.mark.slow
def test_an_idle_machine_reads_no_slowdown() -> None:
    # Nothing competes: before and after are the same machine. Others' load on a shared host can
    # change between the two windows, hence the tolerance.
    with measurement_lock("test_foreground"):
        r = calibrate(None)
    assert 0.8 <= r["slowdown"] <= 1.25, r
    assert r["n_before"] >= 10 and r["n_after"] >= 10, r


@pytest.mark.slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_a_pinned_busy_loop_slows_the_workload_as_arithmetic_says() -> None:
    # n workload processes and one loop pinned to a CPU, each in a session of its own: with
    # autogroup the loop's session takes one CPU, n / (n - 1) (2.0 on 2 CPUs); without it every
    # thread gets an equal share, (n + 1) / n (1.5). Others' steady load lowers either; 1.15 holds
    # with a busy CPU's worth of it on 2 CPUs.
    with measurement_lock("test_foreground"):
        r = calibrate(SPIN_ON_CPU0)
    assert r["slowdown"] >= 1.15, r


@pytest.mark.slow
def test_a_real_trial_under_the_cpu_workload_stores_both_latencies_and_the_slowdown(smollm2_path: Path) -> None:
    tasks = stratified_subset(load_tasks(), 3)
    config = TrialConfig(model="smollm2-135m", quant="Q4_1", model_path=str(smollm2_path), chat_format=None,
                         n_threads=2, n_threads_batch=2, n_batch=512, n_ubatch=512, n_ctx=512, max_tokens=16)
    settings = TrialSettings(prompts=3, idle_seconds=0.5, baseline_seconds=1.0, timeout_seconds=300, noise_retries=0,
                             probe="cpu")
    outcome = run_trial(config, settings, tasks)
    assert outcome.ok, (outcome.reason, outcome.detail, outcome.stderr_tail)
    f = outcome.figures
    for name in ("latency_p95_s", "latency_p95_contended_s", "fg_cpu_slowdown", "fg_cpu_slowdown_p95",
                 "fg_cpu_share_pct", "n_fg_cpu_baseline", "n_fg_cpu_contended"):
        assert name in f, (name, sorted(f))
    assert f["n_fg_cpu_baseline"] >= 5 and f["n_fg_cpu_contended"] >= 1
    # Two threads of the model against a workload on every CPU, at equal priority: the workload
    # must lose some of its CPU.
    assert f["fg_cpu_slowdown"] > 1.0
    # The interactive probe did not run, and its figures are not made up.
    assert not any(k.startswith("fg_p9") for k in f)
    # Each item was answered twice; temperature 0, same threads: the same answers.
    assert f["contended_answers_same"] == 1.0
    assert all("latency_contended_s" in a for a in outcome.answers)
    assert "contended" in outcome.series["marks"]
    assert outcome.series["fg_kind"] == "cpu"
    units = outcome.series["fg_unit_ms"]
    assert len(units) == len(outcome.series["t"])
    phases = {p for p, u in zip(outcome.series["phase"], units) if u is not None}
    assert "baseline" in phases and "contended" in phases, phases
    from sweep.results.display import figures_summary

    assert "under a build: build x" in figures_summary(f)  # progress lines and `sweep show` say it
    assert stray_processes() == []


def test_a_budget_on_the_cpu_workload_needs_probe_cpu(isolated: Path) -> None:
    body = TINY_SPACE.replace("sampler:", "constraints:\n  fg_cpu_slowdown: {max: 1.05}\nsampler:")
    proc = sweep_cli("run", str(write_space(isolated / "s.yaml", body)), "--trials", "1")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "fg_cpu_slowdown" in lines[0] and "trial.probe" in lines[0], proc.stderr
    assert not (isolated / "studies.db").exists()
